"""Rebalancing in the real server (issue 4: "the policy lives in the core, so
the real server uses it too"): two nodes joined by the shared-memory bus;
every client lands on the first. The overloaded node asks clients to
reconnect (close 4002), at most --rebalance-max-moves-per-s a second; the
test plays the load balancer and reconnects them to the other node, until
the load is within the tolerance. An evenly loaded pair moves nobody.
"""
import asyncio

from cluster import async_wait, cluster, run, uid, wait_health  # noqa: F401 (fixture)

CLIENTS = 30
FLAGS = ("--load-report-interval-ms", "200", "--rebalance-tolerance-pct", "20",
         "--rebalance-max-moves-per-s", "10", "--max-connections-per-ip", "1000")


def shm_pair(cluster, name):  # noqa: F811
    a = cluster.shm_node(name, "R1", *FLAGS)
    b = cluster.shm_node(name, "R2", *FLAGS)
    for n in (a, b):
        wait_health(n, lambda h: h.get("transport_connected") is True, what="shm transport up")
    return a, b


def test_overloaded_node_moves_clients_with_4002_until_balanced(cluster):  # noqa: F811
    a, b = shm_pair(cluster, cluster.shm_name())

    async def body(clients):
        on_a = [await clients.connect(a.url(u), u) for u in (uid("rb") for _ in range(CLIENTS))]
        moved = []

        def balanced():
            return a.connections() <= 1.2 * CLIENTS / 2 and a.connections() + b.connections() == CLIENTS

        # The load balancer: whoever is told to reconnect goes to the other node.
        async def follow_moves():
            while not balanced():
                for c in on_a:
                    if c.closed is not None and c not in moved:
                        moved.append(c)
                        await clients.connect(b.url(c.user), c.user)
                await asyncio.sleep(0.02)
        await asyncio.wait_for(follow_moves(), 30)

        codes = {getattr(getattr(c.closed, "rcvd", None), "code", None) for c in moved}
        assert codes == {4002}, f"moved clients were closed with {codes}, expected 4002 only"
        # Moves stop inside the band: the 15/15 split needs 15 moves at most.
        assert len(moved) <= CLIENTS // 2, len(moved)
        assert a.metric("wsgate_rebalance_closes_total") == len(moved)
        assert b.metric("wsgate_rebalance_closes_total") == 0

    run(body)


def test_evenly_loaded_nodes_move_nobody(cluster):  # noqa: F811
    a, b = shm_pair(cluster, cluster.shm_name())

    async def body(clients):
        conns = []
        for i in range(20):
            node = a if i % 2 else b
            u = uid("ev")
            conns.append(await clients.connect(node.url(u), u))
        await async_wait(lambda: a.connections() == 10 and b.connections() == 10, what="10 and 10")
        # Each node has heard several of the other's load reports (enough to
        # act, had it wanted to); then a barrier on every client proves each
        # is still connected and served.
        marks = [n.metric("wsgate_transport_received_total") for n in (a, b)]
        await async_wait(lambda: all(n.metric("wsgate_transport_received_total") >= m + 5
                                     for n, m in zip((a, b), marks)), what="5 more load reports each")
        for c in conns:
            await c.barrier()
        assert all(c.closed is None for c in conns)
        assert a.metric("wsgate_rebalance_closes_total") == 0
        assert b.metric("wsgate_rebalance_closes_total") == 0

    run(body)
