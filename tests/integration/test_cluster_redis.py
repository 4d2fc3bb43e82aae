"""Many nodes, one gateway (issue 3): three real wsgate nodes and one real
redis-server, started on free loopback ports and stopped after.

Direct messages on every ordered pair of nodes, broadcast to every client
on every node exactly once, one user on two nodes, presence in Redis after
connects, disconnects and a kill -9, the events channel, --redis-prefix
isolation, and AUTH.

"Exactly once" is checked after a marker: the last message of each sender
on the same topic. A transport delivers one publisher's messages on one
topic in order, so a duplicate of an earlier message would arrive before
the marker.

Before sending to a user on another node, the tests wait until Redis shows
that user's channel subscribed (PUBSUB NUMSUB): the node subscribes after
the WebSocket upgrade completes, and a publish that beats the subscription
reaches nobody.
"""
import json
import time

import pytest

from cluster import (T, Cluster, async_wait, cluster, run, uid,  # noqa: F401 (fixture)
                     wait_health, wait_subscribed)
from wsgate_fixture import wait_for

PRESENCE_TTL_MS = 1500
PREFIX = "wsgate:"
EVENT_KEYS = {"event", "user_id", "node_id", "connections"}


@pytest.fixture(scope="module")
def three():
    """redis-server and nodes A, B, C (C configured through NODE_ID,
    REDIS_HOST and REDIS_PORT, as the reference Kubernetes manifest does)."""
    c = Cluster()
    try:
        redis = c.redis()
        a = c.redis_node(redis, "A", ttl_ms=PRESENCE_TTL_MS)
        b = c.redis_node(redis, "B", ttl_ms=PRESENCE_TTL_MS)
        node_c = c.node("C", "--transport", "redis", "--presence-ttl-ms", str(PRESENCE_TTL_MS),
                        env={"NODE_ID": "C", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port)})
        for n in (a, b, node_c):
            wait_health(n, lambda h: h.get("transport_connected") is True and h.get("transport") == "redis",
                        what="transport connected")
        assert node_c.health()["node_id"] == "C"
        c.redis_server = redis
        c.abc = (a, b, node_c)
        yield c
    finally:
        crashed = c.close()
    assert not crashed, f"node(s) exited on their own: {crashed}"


def presence(redis, node_id, prefix=PREFIX):
    return redis.hgetall(f"{prefix}node:{node_id}:users")


def no_errors(*clients):
    for c in clients:
        errs = c.of_type("error")
        assert not errs, f"{c.user} got error replies: {errs}"


# --- routing ------------------------------------------------------------------

def test_direct_messages_on_every_ordered_pair_of_nodes(three):
    redis = three.redis_server
    nodes = three.abc
    K = 3

    async def body(clients):
        users = []  # (user, node, client): two users per node
        for n in nodes:
            for _ in range(2):
                u = uid(f"dm{n.node_id}")
                users.append((u, n, await clients.connect(n.url(u), u)))
        await wait_subscribed(redis, [u for u, _, _ in users])
        pairs = [(s, t) for s in users for t in users if s is not t]
        covered = {(s[1].node_id, t[1].node_id) for s, t in pairs}
        assert len(covered) == 9, covered  # A->A ... C->C
        for k in range(K):
            for (su, sn, sc), (tu, tn, tc) in pairs:
                await sc.send_to(tu, {"from_node": sn.node_id, "to_node": tn.node_id, "k": k, "s": su})
        for (su, _, sc), (tu, _, _) in pairs:
            await sc.send_to(tu, "end")
        for tu, _, tc in users:
            senders = [su for su, _, _ in users if su != tu]
            await tc.wait_for(lambda c: all("end" in c.contents(sender=s) for s in senders),
                              what="the end marker of every sender")
        for (su, sn, sc), (tu, tn, tc) in pairs:
            got = tc.contents(sender=su)
            want = [{"from_node": sn.node_id, "to_node": tn.node_id, "k": k, "s": su} for k in range(K)] + ["end"]
            assert got == want, f"{sn.node_id}->{tn.node_id} ({su}->{tu}): got {got}"
        for _, _, c in users:
            await c.barrier()
            assert all(m["type"] in ("message", "pong") for m in c.received), c.received
        no_errors(*(c for _, _, c in users))

    run(body)
    for n in nodes:
        m = n.metrics()
        assert m.get("wsgate_transport_connected") == 1
        assert m.get("wsgate_transport_published_total") > 0
        assert m.get("wsgate_transport_received_total") > 0


def test_content_passes_through_byte_for_byte_across_nodes(three):
    redis = three.redis_server
    a, b, _ = three.abc

    async def body(clients):
        su, tu = uid("bs"), uid("bt")
        s = await clients.connect(a.url(su), su)
        t = await clients.connect(b.url(tu), tu)
        await wait_subscribed(redis, [tu])
        content = '{ "z" : [1, 2.50, "\\u00e9\\n"] ,"a":null }'
        await s.send('{"type":"send_message","target_user":"%s","content":%s}' % (tu, content))
        await t.wait_for(lambda c: c.raw, what="the message")
        assert t.raw[0] == '{"type":"message","from":"%s","content":%s}' % (su, content)

    run(body)


def test_broadcast_reaches_every_client_on_every_node_exactly_once(three):
    nodes = three.abc
    PER_NODE, K = 3, 2

    async def body(clients):
        everyone = []
        for n in nodes:
            for _ in range(PER_NODE):
                u = uid(f"bc{n.node_id}")
                everyone.append(await clients.connect(n.url(u), u))
        # Each node must count its clients before a broadcast is sent, or a
        # client might not be "connected" yet when the broadcast passes.
        for n in nodes:
            await async_wait(lambda n=n: n.connections() >= PER_NODE, what=f"{n.node_id} connections")
        senders = [everyone[i * PER_NODE] for i in range(len(nodes))]  # one per node
        for k in range(K):
            for s in senders:
                await s.broadcast({"k": k, "s": s.user})
        for s in senders:
            await s.broadcast({"end": s.user})
        for c in everyone:
            await c.wait_for(lambda c: all({"end": s.user} in c.contents("broadcast") for s in senders),
                             what="every sender's end marker")
        for c in everyone:
            for s in senders:
                got = c.contents("broadcast", sender=s.user)
                want = [{"k": k, "s": s.user} for k in range(K)] + [{"end": s.user}]
                assert got == want, f"{c.user} from {s.user}: {got}"
        for c in everyone:
            await c.barrier()
            # Nothing but this test's broadcasts (and the pong).
            for m in c.received:
                assert m["type"] == "pong" or (m["type"] == "broadcast" and m["from"] in {s.user for s in senders}), m

    run(body)


def test_one_user_on_two_nodes_gets_every_message_on_both(three):
    redis = three.redis_server
    a, b, node_c = three.abc

    async def body(clients):
        x = uid("two")
        xa = await clients.connect(a.url(x), x)
        xb = await clients.connect(b.url(x), x)
        xb2 = await clients.connect(b.url(x), x)
        await wait_subscribed(redis, [x], at_least=2)
        senders = []
        for n in (a, b, node_c):
            u = uid(f"to2{n.node_id}")
            senders.append(await clients.connect(n.url(u), u))
        for k in range(3):
            for s in senders:
                await s.send_to(x, {"k": k})
        for s in senders:
            await s.send_to(x, "end")
        for conn in (xa, xb, xb2):
            await conn.wait_for(lambda c: all("end" in c.contents(sender=s.user) for s in senders),
                                what="every sender's end marker")
            for s in senders:
                assert conn.contents(sender=s.user) == [{"k": 0}, {"k": 1}, {"k": 2}, "end"], \
                    (conn.url, s.user, conn.received)
            await conn.barrier()
            assert len(conn.of_type("message")) == 12, conn.received
        no_errors(xa, xb, xb2, *senders)

    run(body)


# --- presence ----------------------------------------------------------------

def event_for(events, user, event, node_id):
    return [e for e in events if e.get("user_id") == user and e.get("event") == event and e.get("node_id") == node_id]


def test_presence_and_events_after_connects_and_disconnects(three):
    redis = three.redis_server
    a, b, _ = three.abc
    sub = three.subscribe(redis, f"{PREFIX}events")

    async def body(clients):
        p = uid("pres")
        pa1 = await clients.connect(a.url(p), p)
        pa2 = await clients.connect(a.url(p), p)
        pb = await clients.connect(b.url(p), p)
        await async_wait(lambda: presence(redis, "A").get(p) == "2" and presence(redis, "B").get(p) == "1",
                         what="presence A=2, B=1")
        await async_wait(lambda: sub.poll(0.01) >= 0 and len(event_for(sub.json_messages(), p, "online", "B")) == 1
                         and len(event_for(sub.json_messages(), p, "online", "A")) == 1,
                         what="online events on A and B")
        assert {"A", "B", "C"} <= redis.smembers(f"{PREFIX}nodes")

        # One of two connections on A leaves: still 1 there, no event.
        await pa1.close()
        await async_wait(lambda: presence(redis, "A").get(p) == "1", what="presence A=1")
        # The last one on A leaves: gone from A's hash, still online on B.
        await pa2.close()
        await async_wait(lambda: p not in presence(redis, "A"), what=f"{p} gone from A")
        assert presence(redis, "B").get(p) == "1"
        await async_wait(lambda: sub.poll(0.01) >= 0 and event_for(sub.json_messages(), p, "offline", "A"),
                         what="offline event from A")
        await pb.close()
        await async_wait(lambda: p not in presence(redis, "B"), what=f"{p} gone from B")
        await async_wait(lambda: sub.poll(0.01) >= 0 and event_for(sub.json_messages(), p, "offline", "B"),
                         what="offline event from B")

        mine = [e for e in sub.json_messages() if e.get("user_id") == p]
        for e in mine:
            assert set(e) == EVENT_KEYS, e
        # Exactly these four; per node, online before offline.
        for node_id in ("A", "B"):
            assert [e for e in mine if e["node_id"] == node_id] == [
                {"event": "online", "user_id": p, "node_id": node_id, "connections": 1},
                {"event": "offline", "user_id": p, "node_id": node_id, "connections": 0},
            ], mine
        assert len(mine) == 4, mine

    run(body)


def test_node_up_event_and_online_event_shape(three):
    redis = three.redis_server
    sub = three.subscribe(redis, f"{PREFIX}events")
    e_node = three.redis_node(redis, "E", ttl_ms=PRESENCE_TTL_MS)
    sub.wait_for(lambda ms: any(json.loads(d) == {"event": "node_up", "node_id": "E"} for _, d in ms),
                 what="node_up from E")

    async def body(clients):
        u = uid("ev")
        c = await clients.connect(e_node.url(u), u)
        sub.wait_for(lambda ms: any(json.loads(d).get("user_id") == u for _, d in ms), what="online event")
        raw = [d for _, d in sub.messages if json.loads(d).get("user_id") == u]
        assert json.loads(raw[0]) == {"event": "online", "user_id": u, "node_id": "E", "connections": 1}
        await c.close()
        sub.wait_for(lambda ms: sum(1 for _, d in ms if json.loads(d).get("user_id") == u) >= 2,
                     what="offline event")
        raw = [json.loads(d) for _, d in sub.messages if json.loads(d).get("user_id") == u]
        assert raw[1] == {"event": "offline", "user_id": u, "node_id": "E", "connections": 0}

    run(body)
    e_node.stop()


def test_kill9_node_presence_disappears_within_ttl(three):
    redis = three.redis_server
    a = three.abc[0]
    d = three.redis_node(redis, "D", ttl_ms=PRESENCE_TTL_MS)
    wait_health(d, lambda h: h.get("transport_connected") is True, what="transport connected")

    async def body(clients):
        only_d, both = uid("onlyD"), uid("bothAD")
        await clients.connect(d.url(only_d), only_d)
        await clients.connect(d.url(both), both)
        await clients.connect(d.url(both), both)
        await clients.connect(a.url(both), both)
        await async_wait(lambda: presence(redis, "D") == {only_d: "1", both: "2"} and presence(redis, "A").get(both) == "1",
                         what="presence on D and A")
        ttl = redis.cmd("PTTL", f"{PREFIX}node:D:users")
        assert 0 < ttl <= PRESENCE_TTL_MS, ttl

        assert d.kill9() is not None, "D did not die"
        t0 = time.monotonic()
        # Nobody deletes it: it expires. The deadline is generous (a loaded
        # machine); the TTL itself was checked above.
        await async_wait(lambda: not redis.exists(f"{PREFIX}node:D:users"), timeout=PRESENCE_TTL_MS / 1000 + 10,
                         what="D's presence hash to expire")
        elapsed = time.monotonic() - t0
        # A is alive and refreshes its hash: it must outlive D's by a TTL.
        await async_wait(lambda: time.monotonic() - t0 > max(elapsed, PRESENCE_TTL_MS / 1000) + 0.2, timeout=15,
                         what="one TTL to pass")
        assert presence(redis, "A").get(both) == "1", "A's presence expired although A is alive"

    run(body)


def test_node_restarted_under_the_same_id_replaces_its_presence(three):
    """kill -9 and an immediate restart under the same id, with a TTL far
    longer than the test: the new process rewrites the node's hash, so the
    dead process's users vanish at once, and messages from the new
    incarnation (whose sequence numbers start again) are not dropped as
    stale by the other nodes."""
    redis = three.redis_server
    a = three.abc[0]
    f = three.redis_node(redis, "F", ttl_ms=60000)
    wait_health(f, lambda h: h.get("transport_connected") is True, what="transport connected")

    async def body(clients):
        old, new, peer = uid("oldF"), uid("newF"), uid("peerA")
        cp = await clients.connect(a.url(peer), peer)
        co = await clients.connect(f.url(old), old)
        await wait_subscribed(redis, [peer, old])
        await co.send_to(peer, "from the first F")
        await cp.wait_for(lambda c: "from the first F" in c.contents(), what="a message from F")
        await async_wait(lambda: presence(redis, "F") == {old: "1"}, what="F's presence")
        assert f.kill9() is not None
        await co.wait_closed()
        f2 = three.restart(f)
        wait_health(f2, lambda h: h.get("transport_connected") is True, what="transport connected")
        cn = await clients.connect(f2.url(new), new)
        await async_wait(lambda: presence(redis, "F") == {new: "1"}, what="F's presence rewritten: only the new user")
        await wait_subscribed(redis, [new])
        await cn.send_to(peer, "from the second F")
        await cp.send_to(new, "to the second F")
        await cp.wait_for(lambda c: "from the second F" in c.contents(), what="a message from the restarted F")
        await cn.wait_for(lambda c: "to the second F" in c.contents(), what="a message to the restarted F")
        f2.stop()

    run(body)


# --- deployments sharing one Redis ------------------------------------------

def test_redis_prefix_isolates_two_deployments(three):
    redis = three.redis_server
    d1 = [three.redis_node(redis, n, prefix="d1:") for n in ("n1", "n2")]
    d2 = [three.redis_node(redis, n, prefix="d2:") for n in ("n1", "n2")]
    for n in d1 + d2:
        wait_health(n, lambda h: h.get("transport_connected") is True, what="transport connected")

    async def body(clients):
        u, s = uid("pfx"), uid("pfxs")
        u1 = await clients.connect(d1[1].url(u), u)   # the same user id in both deployments
        u2 = await clients.connect(d2[1].url(u), u)
        s1 = await clients.connect(d1[0].url(s), s)
        s2 = await clients.connect(d2[0].url(s), s)
        await wait_subscribed(redis, [u], prefix="d1:")
        await wait_subscribed(redis, [u], prefix="d2:")
        await s1.send_to(u, "only d1")
        await s1.broadcast("bcast d1")
        await s2.send_to(u, "only d2")
        await u1.wait_for(lambda c: "only d1" in c.contents() and "bcast d1" in c.contents("broadcast"),
                          what="d1's messages")
        await u2.wait_for(lambda c: "only d2" in c.contents(), what="d2's message")
        # Barriers: one more message from each sender on the same topic.
        await s1.send_to(u, "end1")
        await s2.send_to(u, "end2")
        await s2.broadcast("end2b")
        await u1.wait_for(lambda c: "end1" in c.contents(), what="end1")
        await u2.wait_for(lambda c: "end2" in c.contents() and "end2b" in c.contents("broadcast"), what="end2")
        assert u1.contents() == ["only d1", "end1"], u1.received
        assert u2.contents() == ["only d2", "end2"], u2.received
        assert u1.contents("broadcast") == ["bcast d1"], u1.received
        assert u2.contents("broadcast") == ["end2b"], u2.received
        await async_wait(lambda: presence(redis, "n2", "d1:") == {u: "1"} and presence(redis, "n2", "d2:") == {u: "1"}
                         and presence(redis, "n1", "d1:") == {s: "1"} and presence(redis, "n1", "d2:") == {s: "1"},
                         what="presence under both prefixes")
        assert redis.smembers("d1:nodes") == {"n1", "n2"}
        assert redis.smembers("d2:nodes") == {"n1", "n2"}
        assert not ({"n1", "n2"} & redis.smembers(f"{PREFIX}nodes"))
        chans = set(redis.cmd("PUBSUB", "CHANNELS", "*"))
        assert {f"d1:user:{u}", f"d2:user:{u}", "d1:broadcast", "d2:broadcast"} <= chans
        assert f"{PREFIX}user:{u}" not in chans

    run(body)
    for n in d1 + d2:
        n.stop()


# --- AUTH ---------------------------------------------------------------------

def test_auth_with_password_and_wrong_password(cluster):  # noqa: F811 (fixture)
    redis = cluster.redis(password="s3cret-pw")
    good1 = cluster.redis_node(redis, "G1")
    good2 = cluster.redis_node(redis, "G2")
    bad = cluster.redis_node(redis, "BAD", password="wrong-pw")
    for n in (good1, good2):
        wait_health(n, lambda h: h.get("transport_connected") is True, what="transport connected with AUTH")

    def wrongpass_count():
        info = redis.cmd("INFO", "errorstats")
        for line in info.splitlines():
            if line.startswith("errorstat_WRONGPASS:"):
                return int(line.split("count=")[1].split(",")[0])
        return 0

    # Redis refused BAD's password (both of its links tried)...
    wait_for(lambda: wrongpass_count() >= 2, timeout=T, what="Redis to refuse the wrong password")
    # ...so BAD reports the transport down.
    h = bad.health()
    assert h["transport"] == "redis" and h["transport_connected"] is False, h

    async def body(clients):
        x, y = uid("g1"), uid("g2")
        cx = await clients.connect(good1.url(x), x)
        cy = await clients.connect(good2.url(y), y)
        await wait_subscribed(redis, [y])
        await cx.send_to(y, "across with auth")
        await cy.wait_for(lambda c: "across with auth" in c.contents(), what="the message")

        # Local delivery on the node without Redis still works; the sender
        # is told the message did not reach other nodes.
        p, q = uid("bp"), uid("bq")
        cp = await clients.connect(bad.url(p), p)
        cq = await clients.connect(bad.url(q), q)
        await async_wait(lambda: bad.connections() == 2, what="2 connections on BAD")
        await cp.send_to(q, "local only")
        await cq.wait_for(lambda c: "local only" in c.contents(), what="the local message")
        await cp.wait_for(lambda c: c.of_type("error"), what="the sender's error")
        err = cp.of_type("error")[0]["message"]
        assert err.startswith("Not delivered to other nodes"), err
        await cp.broadcast("local broadcast")
        await cq.wait_for(lambda c: "local broadcast" in c.contents("broadcast"), what="the local broadcast")
        await cp.barrier()
        assert len(cp.of_type("error")) == 2, cp.received  # one per refused publish
        assert bad.metric("wsgate_transport_publish_failed_total") >= 2
        no_errors(cx, cy)

    run(body)
    assert bad.health()["transport_connected"] is False


def test_metrics_transport_connected_is_0_for_a_node_that_never_connected(cluster):  # noqa: F811
    redis = cluster.redis(password="s3cret-pw")
    bad = cluster.redis_node(redis, "BAD", password="wrong-pw")
    wait_for(lambda: "errorstat_WRONGPASS" in redis.cmd("INFO", "errorstats"), timeout=T,
             what="Redis to refuse the wrong password")
    assert bad.health()["transport_connected"] is False
    assert bad.metric("wsgate_transport_connected") == 0
