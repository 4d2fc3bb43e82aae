"""Three wsgate nodes and one redis-server behind a real nginx (the Debian
package) running the shipped deploy/nginx.conf, with only its listen port,
upstream addresses and pid/log/temp paths substituted (issue 3).

Clients connect through nginx only. nginx's ip_hash hashes the first three
octets of an IPv4 address, so clients bind to source addresses 127.0.K.2
with different K to spread over the backends. Which backend each landed on
is read from the nodes' /health. Then the node holding the most clients is
killed with SIGKILL: its clients see their connections end, reconnect
through nginx (which finds the dead server refusing and moves them to a
live one) and exchange messages again, within a deadline.
"""
import os
import re

from cluster import (NGINX_CONF, T, async_wait, cluster, render_nginx_conf, run, uid,  # noqa: F401 (fixture)
                     wait_health, wait_subscribed)

SOURCES = [f"127.0.{k}.2" for k in range(1, 13)]


def start_cluster(cluster):  # noqa: F811
    redis = cluster.redis()
    nodes = [cluster.redis_node(redis, n, "--trusted-proxies", "127.0.0.1", ttl_ms=3000) for n in ("A", "B", "C")]
    for n in nodes:
        wait_health(n, lambda h: h.get("transport_connected") is True, what="transport connected")
    return redis, nodes, cluster.nginx(nodes)


def test_shipped_config_has_the_reference_settings():
    with open(NGINX_CONF) as f:
        text = f.read()
    for needle in ("ip_hash;", "proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                   'proxy_set_header Connection "upgrade";', "proxy_set_header X-Real-IP $remote_addr;",
                   "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;", "proxy_read_timeout 7d;",
                   "proxy_send_timeout 7d;", "proxy_buffering off;", "listen 80;", "events {", "http {"):
        assert needle in text, f"deploy/nginx.conf lacks {needle!r}"
    assert re.findall(r"^\s*server\s+(127\.0\.0\.1:\d+)", text, flags=re.M) == \
        ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]
    out = render_nginx_conf(text, 12345, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], "/tmp/x")
    assert "listen 127.0.0.1:12345;" in out and "server 127.0.0.1:2 " in out and "/tmp/x/nginx.pid" in out


def test_clients_through_nginx_spread_route_and_survive_a_node_kill(cluster):  # noqa: F811
    redis, nodes, nginx = start_cluster(cluster)
    by_id = {n.node_id: n for n in nodes}

    async def body(clients):
        conns = {}  # user -> Client
        source = {}
        for src in SOURCES:
            u = uid("ng" + src.split(".")[2])
            source[u] = src
            conns[u] = await clients.connect(nginx.url(u), u, source=src)
        n_clients = len(conns)
        await async_wait(lambda: sum(n.connections() for n in nodes) == n_clients,
                         what="every client counted by some node")
        # Where did each land? Ask the nodes which users they hold (Redis presence).
        def placement():
            where = {}
            for n in nodes:
                for u in redis.hgetall(f"wsgate:node:{n.node_id}:users"):
                    where[u] = n.node_id
            return where if len(where) == n_clients else None
        where = await async_wait(placement, what="presence of every client")
        per_node = {n.node_id: n.connections() for n in nodes}
        assert sum(1 for v in per_node.values() if v > 0) >= 2, \
            f"ip_hash put every client on one node: {per_node}; nginx.conf:\n{nginx.conf}"

        # Messages between clients on different nodes, through nginx.
        users = sorted(conns)
        await wait_subscribed(redis, users)
        for i, u in enumerate(users):
            v = users[(i + 1) % len(users)]
            await conns[u].send_to(v, {"hop": 1, "from": u})
        for i, v in enumerate(users):
            u = users[i - 1]
            await conns[v].wait_for(lambda c, u=u: {"hop": 1, "from": u} in c.contents(sender=u),
                                    what=f"message from {u}")
        cross = [(users[i], users[(i + 1) % len(users)]) for i in range(len(users))
                 if where[users[i]] != where[users[(i + 1) % len(users)]]]
        assert cross, f"no pair crossed nodes: {where}"
        await conns[users[0]].broadcast("hello all")
        for c in conns.values():
            await c.wait_for(lambda c: "hello all" in c.contents("broadcast"), what="the broadcast")

        # Kill the node holding the most clients.
        victim_id = max(per_node, key=lambda k: per_node[k])
        victim = by_id[victim_id]
        moved = [u for u in users if where[u] == victim_id]
        stayed = [u for u in users if where[u] != victim_id]
        assert moved and stayed
        print(f"placement {per_node}; killing {victim_id}, moving {len(moved)} clients")
        assert victim.kill9() is not None
        for u in moved:
            await conns[u].wait_closed()
        for u in stayed:
            assert conns[u].closed is None, f"{u} on {where[u]} lost its connection"

        # Reconnect through nginx from the same source address, with a
        # deadline: nginx tries the dead server, fails, marks it and moves on.
        for u in moved:
            async def reconnect(u=u):
                try:
                    conns[u] = await clients.connect(nginx.url(u), u, source=source[u], timeout=5)
                    return True
                except Exception:  # noqa: BLE001 - refused or 502 while nginx notices
                    return False
            await async_reconnect(reconnect, T * 2, f"{u} to reconnect through nginx")
        live = [n for n in nodes if n is not victim]
        await async_wait(lambda: sum(n.connections() for n in live) == n_clients,
                         what="every client connected to a live node")
        def placement_live():
            where = {}
            for n in live:
                for u in redis.hgetall(f"wsgate:node:{n.node_id}:users"):
                    where[u] = n.node_id
            return where if set(where) == set(users) else None
        where2 = await async_wait(placement_live, what="presence of every client on live nodes")
        assert all(where2[u] == where[u] for u in stayed), (where, where2)
        print("after the kill:", {n.node_id: n.connections() for n in live})
        await wait_subscribed(redis, users)

        # Moved clients and clients that stayed exchange messages again.
        for u in moved:
            for v in stayed:
                await conns[u].send_to(v, {"after": u})
                await conns[v].send_to(u, {"after": v})
        for u in moved:
            for v in stayed:
                await conns[v].wait_for(lambda c, u=u: {"after": u} in c.contents(sender=u), what=f"from {u}")
                await conns[u].wait_for(lambda c, v=v: {"after": v} in c.contents(sender=v), what=f"from {v}")
        for u in moved + stayed:
            await conns[u].barrier()
            assert not conns[u].of_type("error"), conns[u].received
        for u in moved:
            got = [c for c in conns[u].contents() if isinstance(c, dict) and "after" in c]
            assert sorted(x["after"] for x in got) == sorted(stayed), got  # each exactly once

    run(body, timeout=50)
    ng = cluster.nginxes[0]
    assert os.path.exists(os.path.join(ng.workdir, "nginx.pid"))
    # nginx tried the dead node for the moved clients, was refused, moved on.
    with open(os.path.join(ng.workdir, "error.log"), errors="replace") as f:
        log = f.read()
    assert "Connection refused) while connecting to upstream" in log, ng.log_text()


async def async_reconnect(attempt, timeout, what):
    import asyncio
    import time
    deadline = time.monotonic() + timeout
    while True:
        if await attempt():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


def test_per_ip_limit_sees_the_client_address_nginx_forwards(cluster):  # noqa: F811
    """deploy/nginx.conf sets X-Real-IP; with --trusted-proxies 127.0.0.1 the
    nodes count connections per client, not per nginx."""
    import websockets
    redis = cluster.redis()
    nodes = [cluster.redis_node(redis, n, "--trusted-proxies", "127.0.0.1", "--max-connections-per-ip", "2")
             for n in ("A", "B", "C")]
    nginx = cluster.nginx(nodes)

    async def body(clients):
        for _ in range(2):
            u = uid("lim")
            await clients.connect(nginx.url(u), u, source="127.0.20.2")
        u = uid("lim")
        try:
            await clients.connect(nginx.url(u), u, source="127.0.20.2")
        except websockets.InvalidStatusCode as e:
            assert e.status_code == 429, e
        else:
            raise AssertionError("a third connection from one client address was accepted (limit 2 per IP)")
        # Other client addresses are not limited by the first one's
        # connections: 2 + 9 connections on 3 nodes, so some node holds
        # more than 2, all arriving from nginx's own address.
        for k in range(21, 30):
            u = uid("lim")
            await clients.connect(nginx.url(u), u, source=f"127.0.{k}.2")
        counts = [n.connections() for n in nodes]
        assert sum(counts) == 11 and max(counts) > 2, counts

    run(body)
