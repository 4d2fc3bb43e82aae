"""Two wsgate processes on one host connected only by the shared-memory ring
bus (`--transport shm --shm-name NAME`, issue 4), no Redis: a client on
each exchanges direct messages and broadcasts; one node is killed with
SIGKILL and restarted under the same node id, and messaging works again.

The segment name is unique per test and /dev/shm/NAME is removed at
teardown.

The shm bus knows its subscribers when a message is published, so there
is no subscription race to wait out as with Redis; still, each test waits
until both nodes count their client before sending across.
"""
import os

from cluster import async_wait, cluster, run, uid, wait_health  # noqa: F401 (fixture)


def shm_pair(cluster, name):  # noqa: F811
    a = cluster.shm_node(name, "S1")
    b = cluster.shm_node(name, "S2")
    for n in (a, b):
        wait_health(n, lambda h: h.get("transport") == "shm" and h.get("transport_connected") is True,
                    what="shm transport up")
    assert os.path.exists(f"/dev/shm/{name}"), "the segment is not in /dev/shm"
    return a, b


async def exchange(clients, a, b, tag):
    """A user on each node: direct messages both ways and a broadcast from
    each; every message arrives exactly once (checked after end markers)."""
    ua, ub = uid(f"shmA{tag}"), uid(f"shmB{tag}")
    ca = await clients.connect(a.url(ua), ua)
    cb = await clients.connect(b.url(ub), ub)
    await async_wait(lambda: a.connections() >= 1 and b.connections() >= 1, what="both clients counted")
    for k in range(5):
        await ca.send_to(ub, {"k": k, "tag": tag})
        await cb.send_to(ua, {"k": k, "tag": tag})
    await ca.broadcast({"b": ua})
    await cb.broadcast({"b": ub})
    await ca.send_to(ub, "end")
    await cb.send_to(ua, "end")
    await ca.broadcast("endb")
    await cb.broadcast("endb")
    for me, other in ((ca, cb), (cb, ca)):
        await me.wait_for(lambda c, o=other: "end" in c.contents(sender=o.user)
                          and "endb" in c.contents("broadcast", sender=o.user), what=f"{other.user}'s end markers")
        assert me.contents(sender=other.user) == [{"k": k, "tag": tag} for k in range(5)] + ["end"], me.received
        for c in (me, other):  # a broadcast reaches its sender too
            assert me.contents("broadcast", sender=c.user) == [{"b": c.user}, "endb"], me.received
        await me.barrier()
        assert not me.of_type("error"), me.received
    return ca, cb


def test_two_processes_exchange_messages_over_shm(cluster):  # noqa: F811
    name = cluster.shm_name()
    a, b = shm_pair(cluster, name)
    run(lambda clients: exchange(clients, a, b, "x"))
    for n in (a, b):
        m = n.metrics()
        assert m.get("wsgate_transport_published_total") > 0
        assert m.get("wsgate_transport_received_total") > 0


def test_kill9_and_restart_with_the_same_node_id(cluster):  # noqa: F811
    name = cluster.shm_name()
    a, b = shm_pair(cluster, name)

    async def body(clients):
        ca, cb = await exchange(clients, a, b, "before")
        assert b.kill9() is not None
        await cb.wait_closed()
        assert ca.closed is None
        b2 = cluster.restart(b)
        assert b2.node_id == "S2" and b2.health()["node_id"] == "S2"
        wait_health(b2, lambda h: h.get("transport_connected") is True, what="shm transport up")
        # The restarted node's sequence numbers start again from 1: the
        # survivor must not drop them as stale (they carry a new incarnation).
        await exchange(clients, a, b2, "after")
        await ca.barrier()
        assert not ca.of_type("error"), ca.received

    run(body)
    assert os.path.exists(f"/dev/shm/{name}")
