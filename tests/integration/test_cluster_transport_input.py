"""Hostile transport input (issue 7): whoever can PUBLISH on a node's Redis
channels reaches its clients, unless the node checks what arrives as
strictly as what a client sends. Two real nodes on a real redis-server,
clients on both; the test publishes with its own Redis connection:

- a message whose body is not UTF-8 (browsers drop the connection, 1007),
  on a user's channel and on broadcast;
- a 2 MiB broadcast (more than a send queue holds: every client would be
  closed as a slow consumer, 1008);
- forged load reports of an empty node, every 50 ms for several report
  intervals (the nodes would believe the cluster under-loaded and shed
  clients with 4002).

Every client stays connected and receives nothing but its own pongs; no
client is moved; each drop is counted by reason; and the nodes still carry
a real message between them afterwards.
"""
import asyncio
import json

from cluster import async_wait, cluster, run, uid, wait_health, wait_subscribed  # noqa: F401 (fixture)

PREFIX = "wsgate:"
PER_NODE = 6
FLAGS = ("--load-report-interval-ms", "200", "--rebalance-tolerance-pct", "20",
         "--rebalance-max-moves-per-s", "100")
ORIGIN = b"B/00000000000000b1"  # well-formed, but no node's


def invalid(node, reason):
    return node.metric("wsgate_transport_invalid_total", reason=reason)


def test_hostile_publishes_reach_no_client_and_move_nobody(cluster):  # noqa: F811
    redis = cluster.redis()
    a = cluster.redis_node(redis, "A", *FLAGS)
    b = cluster.redis_node(redis, "B", *FLAGS)
    for n in (a, b):
        wait_health(n, lambda h: h.get("transport_connected") is True, what="transport connected")

    async def body(clients):
        conns = []
        for node in (a, b):
            for _ in range(PER_NODE):
                u = uid("hx")
                conns.append(await clients.connect(node.url(u), u))
        users = [c.user for c in conns]
        await wait_subscribed(redis, users)
        victim = users[0]

        with redis.client() as r:
            def publish(channel, payload):
                r.command("PUBLISH", PREFIX + channel, payload)

            # 1. Not UTF-8, in an otherwise perfect message.
            publish(f"user:{victim}", ORIGIN + b"\n1\n" + b'{"type":"message","from":"x","content":"\xff\xfe"}')
            publish("broadcast", ORIGIN + b"\n2\n" + b'{"type":"broadcast","from":"x","content":"\xc3\x28"}')
            # 2. 2 MiB of valid JSON.
            big = b'{"type":"broadcast","from":"x","content":"' + b"y" * (2 << 20) + b'"}'
            publish("broadcast", ORIGIN + b"\n3\n" + big)
            # 3. A node "ghost" holding nobody, reporting for a second
            #    (five report intervals): without the checks it joins each
            #    node's mean, 2/3 of the truth, and both shed clients.
            for seq in range(1, 21):
                publish("load", b"ghost\n%d\n0" % seq)
                publish("load", b"B/zz\n%d\n0" % seq)
                publish("load", ORIGIN.replace(b"B/", b"C/") + b"\n%d\n0 nodes" % seq)
                await asyncio.sleep(0.05)

        def all_counted():
            return all(invalid(n, "utf8") >= 1 and invalid(n, "too_large") >= 1 and invalid(n, "origin") >= 40 and
                       invalid(n, "load_report") >= 20 for n in (a, b))
        await async_wait(all_counted, what="every hostile message counted on both nodes")
        assert invalid(a, "utf8") + invalid(b, "utf8") == 3  # the broadcast on both, the direct one on its node

        # Each node hears a few more genuine reports from the other (enough
        # to act on, had it believed the ghost); then a barrier per client.
        marks = [n.metric("wsgate_transport_received_total") for n in (a, b)]
        await async_wait(lambda: all(n.metric("wsgate_transport_received_total") >= m + 5
                                     for n, m in zip((a, b), marks)), what="5 more load reports each")
        for c in conns:
            await c.barrier()
        for c in conns:
            assert c.closed is None, (c.user, c.closed)
            assert [m for m in c.received if m.get("type") != "pong"] == [], (c.user, c.received)
        for n in (a, b):
            assert n.metric("wsgate_rebalance_closes_total") == 0
            assert n.metric("wsgate_slow_consumer_closes_total") == 0
            assert n.connections() == PER_NODE

        # The nodes still carry what a node really sends.
        sender, target = conns[-1], conns[0]
        await sender.send_to(target.user, {"after": "hostile"})
        await target.wait_for(lambda c: c.contents(), what="the genuine message")
        assert target.contents() == [{"after": "hostile"}]
        assert json.loads(target.raw[-1])["from"] == sender.user

    run(body)
