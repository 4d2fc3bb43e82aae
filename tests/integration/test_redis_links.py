"""Redis links that fail without closing, and the Redis flags (issue 7).

- A frozen Redis (a TCP proxy that stops forwarding but keeps both sockets
  open, as a stalled VM or a blackholed route does) is noticed within a
  bound derived from --redis-timeout-ms on both links; senders get an error
  reply, not silence; after the freeze the nodes reconnect by themselves.
- The Redis host is looked up off the event loop (a DNS server that does
  not answer does not stop /health) and every address is tried in turn.
- After a Redis restart every user is written once, in batches.
- A wrong password is logged (once); the password can come from a file or
  the environment, and on the command line it draws a warning.
- Every bad flag or variable exits with status 2 and names itself.

getaddrinfo is replaced by tests/support/fake_resolver.cpp (LD_PRELOAD)
where a name with several addresses, or a slow DNS server, is needed.
"""
import asyncio
import os
import subprocess
import time

import pytest

from cluster import T, cluster, run, uid, wait_health, wait_subscribed  # noqa: F401 (fixture)
from freeze_proxy import FreezeProxy
from wsgate_fixture import wait_for, wsgate_bin

TIMEOUT_MS = 1000
# Detection needs timeout_ms of silence after the last reply; the rest is
# slack for a loaded machine, so this is a bound, not a measurement.
DETECT_BOUND_S = 3 * TIMEOUT_MS / 1000 + 2

REFUSED = ("Not delivered to other nodes: transport unavailable",
           "Not delivered to other nodes: transport busy, retry")
LOST = ("Not delivered to other nodes: transport connection lost",
        "Maybe not delivered to other nodes: the cluster is reconnecting, retry")


def connected(node):
    return node.health().get("transport_connected") is True


def hset_calls(redis):
    with redis.client() as r:
        info = r.command("INFO", "commandstats")
    for line in info.splitlines():
        if line.startswith("cmdstat_hset:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def fake_resolver_env(hosts, gate=None):
    tools = os.environ.get("WSGATE_TOOLS") or os.path.join(os.path.dirname(wsgate_bin()))
    lib = os.path.join(tools, "libwsgate_fake_resolver.so")
    if not os.path.exists(lib):
        pytest.fail(f"{lib} not built (target wsgate_fake_resolver)")
    env = {"LD_PRELOAD": lib, "WSGATE_FAKE_HOSTS": hosts}
    if gate:
        env["WSGATE_FAKE_RESOLVER_GATE"] = gate
    # An ASan build wants its runtime first; the shim is not instrumented.
    asan = os.environ.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "verify_asan_link_order=0"
    return env


# --- a frozen Redis -------------------------------------------------------------

def test_frozen_redis_is_detected_senders_told_and_nodes_recover(cluster):
    redis = cluster.redis()
    proxy = FreezeProxy(redis.port)
    try:
        flags = ["--transport", "redis", "--redis", proxy.addr, "--redis-timeout-ms", str(TIMEOUT_MS)]
        a = cluster.node("A", *flags)
        b = cluster.node("B", *flags)
        for n in (a, b):
            wait_health(n, lambda h: h.get("transport_connected") is True, what="transport connected")
        su, tu = uid("frz-s"), uid("frz-t")

        async def body(clients):
            s = await clients.connect(a.url(su), su)
            t = await clients.connect(b.url(tu), tu)
            await wait_subscribed(redis, [tu, su])
            await s.send_to(tu, "before")
            await t.wait_for(lambda c: "before" in c.contents(), what="the message before the freeze")

            proxy.freeze()
            frozen_at = time.monotonic()
            sent = 0
            detected = {}
            while len(detected) < 2:
                await s.send_to(tu, f"frozen-{sent}")
                sent += 1
                for n in (a, b):
                    if n.node_id not in detected and not connected(n):
                        detected[n.node_id] = time.monotonic() - frozen_at
                assert time.monotonic() - frozen_at < DETECT_BOUND_S, (
                    f"not detected within {DETECT_BOUND_S}s; detected so far: {detected}\n"
                    f"A:\n{a.stderr_text()}\nB:\n{b.stderr_text()}")
                await asyncio.sleep(0.05)
            print(f"\nfrozen Redis detected (--redis-timeout-ms {TIMEOUT_MS}): "
                  + ", ".join(f"node {k} after {v * 1000:.0f} ms" for k, v in sorted(detected.items())))
            # Every message sent into the freeze is answered with an error:
            # refused at once, or accepted and reported lost at detection.
            await s.barrier()
            await s.wait_for(lambda c: len(c.of_type("error")) >= sent, DETECT_BOUND_S,
                             f"{sent} error replies")
            errors = [m["message"] for m in s.of_type("error")]
            assert len(errors) == sent, errors
            assert all(e in REFUSED + LOST for e in errors), errors
            assert any(e in LOST for e in errors), "nothing was in flight when the freeze was noticed?"
            assert "nothing heard" in a.stderr_text()
            assert a.metric("wsgate_transport_connected") == 0
            assert a.metric("wsgate_redis_link_timeouts_total") >= 1

            proxy.unfreeze()
            for n in (a, b):
                proxy.check()
                wait_health(n, lambda h: h.get("transport_connected") is True, timeout=DETECT_BOUND_S + T,
                            what="reconnected after the freeze")
            await wait_subscribed(redis, [tu, su], at_least=1)
            await s.send_to(tu, "after")
            await t.wait_for(lambda c: "after" in c.contents(), what="a message after the freeze")
            await t.send_to(su, "back")
            await s.wait_for(lambda c: "back" in c.contents(), what="a reply after the freeze")

        run(body)
        proxy.check()
    finally:
        proxy.close()


# --- the Redis host name ----------------------------------------------------------

def test_every_resolved_address_is_tried(cluster):
    """redis.test resolves to ::1, 127.0.0.2, then 127.0.0.1; Redis listens
    on 127.0.0.1 only, so the first two refuse."""
    redis = cluster.redis()
    env = fake_resolver_env("redis.test=::1,127.0.0.2,127.0.0.1")
    n = cluster.node("A", "--transport", "redis", "--redis", f"redis.test:{redis.port}",
                     "--redis-timeout-ms", str(TIMEOUT_MS), env=env)
    wait_health(n, lambda h: h.get("transport_connected") is True, what="connected through the third address")


def test_slow_dns_does_not_block_the_event_loop(cluster, tmp_path):
    redis = cluster.redis()
    gate = str(tmp_path / "dns-answers")
    env = fake_resolver_env("slow.test=127.0.0.1", gate=gate)
    n = cluster.node("A", "--transport", "redis", "--redis", f"slow.test:{redis.port}", env=env)
    # The lookup is stuck; HTTP is answered meanwhile.
    for _ in range(3):
        h = wait_for(lambda: n.health(), timeout=5, what="/health while DNS hangs", server=n)
        assert h["transport_connected"] is False
    with open(gate, "w"):
        pass
    wait_health(n, lambda h: h.get("transport_connected") is True, what="connected once DNS answered")


# --- presence after a reconnect ---------------------------------------------------

def test_presence_is_written_once_after_a_redis_restart(cluster):
    redis = cluster.redis()
    a = cluster.redis_node(redis, "A")
    wait_health(a, lambda h: h.get("transport_connected") is True, what="connected")
    users = [uid("pres") for _ in range(30)]

    async def body(clients):
        for u in users:
            await clients.connect(a.url(u), u)
        wait_for(lambda: len(redis.hgetall("wsgate:node:A:users")) == len(users), what="presence written")
        redis.kill()
        wait_health(a, lambda h: h.get("transport_connected") is False, what="Redis lost")
        redis.start()  # same port, empty, its command counters at zero
        wait_health(a, lambda h: h.get("transport_connected") is True, what="Redis back")
        wait_for(lambda: len(redis.hgetall("wsgate:node:A:users")) == len(users), what="presence rewritten")
        await clients.all[0].barrier()
        # One batched HSET for 30 users; not one per user, and not twice.
        assert hset_calls(redis) == 1

    run(body)


# --- the password -------------------------------------------------------------------

def test_wrong_redis_password_is_logged_once(cluster):
    redis = cluster.redis(password="right-one")
    n = cluster.node("A", "--transport", "redis", "--redis", redis.addr, env={"REDIS_PASSWORD": "wrong-one"})
    wait_for(lambda: n.metric("wsgate_redis_auth_failures_total") >= 4, what="several refused AUTHs", server=n)
    err = n.stderr_text()
    assert err.count("refused the password (AUTH)") == 1, err
    assert "WRONGPASS" in err
    assert "wrong-one" not in err
    assert n.health()["transport_connected"] is False


def test_redis_password_from_file_or_environment_and_warning_on_the_command_line(cluster, tmp_path):
    pw = "s3cret-" + uid("pw")
    redis = cluster.redis(password=pw)
    path = tmp_path / "redis-password"
    path.write_text(pw + "\n")
    base = ["--transport", "redis", "--redis", redis.addr]
    nodes = [
        cluster.node("F", *base, "--redis-password-file", str(path)),
        cluster.node("G", *base, env={"WSGATE_REDIS_PASSWORD_FILE": str(path)}),
        cluster.node("E", *base, env={"REDIS_PASSWORD": pw}),
    ]
    visible = cluster.node("V", *base, "--redis-password", pw)
    for n in nodes + [visible]:
        wait_health(n, lambda h: h.get("transport_connected") is True, what="authenticated")
    for n in nodes:
        with open(f"/proc/{n.pid}/cmdline", "rb") as f:
            assert pw.encode() not in f.read()
        assert "visible" not in n.stderr_text()
    assert "--redis-password on the command line is visible" in visible.stderr_text()


# --- flags ----------------------------------------------------------------------------

BAD = [
    (["--redis", "127.0.0.1:notaport"], {}, "--redis"),
    (["--redis", "127.0.0.1:"], {}, "--redis"),
    (["--redis", ":6379"], {}, "--redis"),
    (["--redis", "::1:6379"], {}, "--redis"),
    (["--redis", "[::1"], {}, "--redis"),
    (["--redis", "[not-v6]:6379"], {}, "--redis"),
    (["--redis", "127.0.0.1:70000"], {}, "--redis"),
    (["--redis", "127.0.0.1:0"], {}, "--redis"),
    ([], {"REDIS_HOST": "127.0.0.1:notaport"}, "REDIS_HOST"),
    ([], {"REDIS_PORT": "abc"}, "REDIS_PORT"),
    ([], {"REDIS_PORT": "0"}, "REDIS_PORT"),
    ([], {"REDIS_PORT": ""}, "REDIS_PORT"),
    ([], {"PORT": "http"}, "PORT"),
    (["--redis-timeout-ms", "0"], {}, "--redis-timeout-ms"),
    ([], {"WSGATE_REDIS_TIMEOUT_MS": "soon"}, "WSGATE_REDIS_TIMEOUT_MS"),
    (["--redis-password-file", "/nonexistent/pw"], {}, "--redis-password-file"),
    ([], {"WSGATE_REDIS_PASSWORD_FILE": "/nonexistent/pw"}, "WSGATE_REDIS_PASSWORD_FILE"),
    (["--redis-password", "a", "--redis-password-file", "/etc/hostname"], {}, "--redis-password"),
    (["--host", "not a host"], {}, "--host"),
    ([], {"WSGATE_HOST": ""}, "WSGATE_HOST"),
    (["--presence-ttl-ms", "5"], {}, "--presence-ttl-ms"),
    ([], {"WSGATE_MAX_CONNECTIONS": "-1"}, "WSGATE_MAX_CONNECTIONS"),
    (["--max-message-bytes", "1e6"], {}, "--max-message-bytes"),
    ([], {"WSGATE_TRANSPORT": "carrier-pigeon"}, "carrier-pigeon"),
    (["--shm-name", "a/b"], {}, "--shm-name"),
    (["--trusted-proxies", "10.0.0.300"], {}, "--trusted-proxies"),
    (["--node-id", "has space"], {}, "node id"),
    (["--redis-prefix", "a\nb"], {}, "--redis-prefix"),
]


@pytest.mark.parametrize("flags,env,named", BAD, ids=[" ".join(f) + " ".join(f"{k}={v}" for k, v in e.items())
                                                      for f, e, _ in BAD])
def test_bad_flag_or_variable_exits_2_naming_it(flags, env, named):
    clean = {k: v for k, v in os.environ.items()
             if not (k.startswith("WSGATE_") or k in ("PORT", "NODE_ID", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD"))}
    clean.update(env)
    # Only what the case sets: a flag would override the variable under test.
    args = [wsgate_bin()] + ([] if "PORT" in env else ["--port", "0"])
    args += [] if "WSGATE_TRANSPORT" in env else ["--transport", "redis"]
    p = subprocess.run(args + flags, capture_output=True, timeout=10, stdin=subprocess.DEVNULL, env=clean)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2, f"exit {p.returncode} (negative: killed by a signal); stderr: {err[-500:]}"
    assert named in err, err
