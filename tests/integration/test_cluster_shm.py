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
        # The other's end markers can overtake our own broadcasts (our node
        # may not have read them yet): wait for both.
        await me.wait_for(lambda c, o=other: "end" in c.contents(sender=o.user)
                          and "endb" in c.contents("broadcast", sender=o.user)
                          and "endb" in c.contents("broadcast", sender=c.user), what=f"{other.user}'s end markers")
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


def test_segment_is_0600_and_sized_from_the_limits(cluster):  # noqa: F811
    """The real binary creates its segment readable by its own user only
    (it carries every message and user id of the host), whatever the umask,
    and sizes its presence table from --shm-presence-max-entries (or from
    --max-connections); a full table is counted in /metrics."""
    import stat
    name = cluster.shm_name()
    old = os.umask(0)  # the child inherits it: 0644 would stay 0644
    try:
        a = cluster.shm_node(name, "S1", "--shm-presence-max-entries", "3", "--max-connections", "100")
    finally:
        os.umask(old)
    wait_health(a, lambda h: h.get("transport_connected") is True, what="shm transport up")
    st = os.stat(f"/dev/shm/{name}")
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.geteuid()
    assert a.metrics().get("wsgate_shm_presence_max_entries") == 3

    async def body(clients):
        users = [uid(f"p{i}") for i in range(4)]
        for u in users:
            await clients.connect(a.url(u), u)
        await async_wait(lambda: a.metrics().get("wsgate_shm_presence_refused_total") == 1,
                         what="the fourth user's presence counted as refused")

    run(body)


def test_a_segment_others_may_read_is_refused(cluster):  # noqa: F811
    """A segment left 0644 (by an older node, or chmod) is refused at start
    with a reason and exit status 1, not used and not silently narrowed."""
    import subprocess
    from wsgate_fixture import wsgate_bin
    name = cluster.shm_name()
    a = cluster.shm_node(name, "S1")
    wait_health(a, lambda h: h.get("transport_connected") is True, what="shm transport up")
    os.chmod(f"/dev/shm/{name}", 0o644)
    p = subprocess.run([wsgate_bin(), "--port", "0", "--transport", "shm", "--shm-name", name, "--node-id", "S2"],
                       capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    assert p.returncode == 1, (p.returncode, p.stderr[-500:])
    assert b"mode 0644" in p.stderr, p.stderr[-500:]
