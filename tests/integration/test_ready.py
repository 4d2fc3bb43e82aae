"""GET /ready against the real binary: 200 when a load balancer may send new
clients to this node, 503 (with the reason) while its transport is down,
while it is full, or while it drains after SIGTERM, when /health (the
liveness answer) keeps saying 200."""
import json
import signal

import rawws
from cluster import free_port
from wsgate_fixture import http_request, wait_for


def ready(s):
    status, _, body = s.http_get("/ready")
    return status, json.loads(body)


def test_ready_when_serving_and_only_get(start_server):
    s = start_server("--node-id", "R1")
    assert ready(s) == (200, {"ready": True, "node_id": "R1"})
    status, _, _ = http_request(s.host, s.port, "POST", "/ready")
    assert status == 405


def test_not_ready_while_the_transport_is_down(start_server):
    """A node whose Redis is not there (at start-up, or lost) must not get
    clients: they could not reach anyone on other nodes."""
    s = start_server("--transport", "redis", "--redis", f"127.0.0.1:{free_port()}", "--redis-timeout-ms", "200")
    status, body = ready(s)
    assert status == 503 and body["reason"] == "transport disconnected", body
    assert s.health()["status"] == "ok"  # alive all the same


def test_not_ready_at_max_connections(start_server):
    s = start_server("--max-connections", "1")
    c = rawws.connect(s, "only")
    wait_for(lambda: s.health()["connections"] == 1, what="the connection counted")
    status, body = ready(s)
    assert status == 503 and body["reason"] == "at max connections", body
    c.close()
    wait_for(lambda: ready(s)[0] == 200, what="/ready back to 200 once room is made")


def test_not_ready_while_draining_but_alive(start_server):
    """SIGTERM: /ready turns 503 at once (the balancer stops sending clients)
    while /health stays 200 through the paced drain."""
    s = start_server("--drain-max-closes-per-s", "1", "--shutdown-timeout-ms", "20000")
    clients = [rawws.connect(s, f"d{i}") for i in range(5)]
    wait_for(lambda: s.health()["connections"] == 5, what="5 connections")
    assert ready(s)[0] == 200
    s.signal(signal.SIGTERM)
    wait_for(lambda: ready(s)[0] == 503, what="/ready 503 after SIGTERM")
    status, body = ready(s)
    assert body["reason"] == "draining", body
    health = s.health()
    assert health["status"] == "ok" and health.get("draining") is True
    assert health["connections"] > 0  # still draining: the closes are paced
    for c in clients:
        c.close()


# --- wsgate --health-check: a container HEALTHCHECK without shell tools -----

def health_check(*flags):
    import subprocess
    from wsgate_fixture import wsgate_bin
    return subprocess.run([wsgate_bin(), "--health-check", *flags], capture_output=True, text=True, timeout=20)


def test_health_check_exits_0_for_a_live_node(start_server):
    s = start_server("--host", "0.0.0.0")
    r = health_check("--host", "0.0.0.0", "--port", str(s.port))  # a wildcard is asked on loopback
    assert r.returncode == 0, r.stderr


def test_health_check_exits_1_naming_why(start_server):
    r = health_check("--port", str(free_port()))
    assert r.returncode == 1 and "refused" in r.stderr, r.stderr
    # A listener that never answers (a hung node) fails too, within its bound.
    import socket
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(1)
        r = health_check("--port", str(hung.getsockname()[1]))
    assert r.returncode == 1 and "no answer" in r.stderr, r.stderr
