"""The buffer and queue limits of a node (BufferLimits in limits.hpp), hit
on the real binary: a receive pool too small for what arrives stops and
re-arms receives (counted, nothing lost), and io_uring queues far smaller
than the load are submitted early and overflow into the kernel's backlog
(nothing lost, nothing aborted). Every wait has a deadline."""
import asyncio
import json

import websockets

from wsgate_fixture import run

T = 10.0


def connect(server, user):
    return websockets.connect(server.url(user), open_timeout=T, close_timeout=T, ping_interval=None,
                              compression=None, max_size=None)


async def broadcasts(ws, n):
    got = []
    while len(got) < n:
        m = json.loads(await asyncio.wait_for(ws.recv(), T))
        if m.get("type") == "broadcast":
            got.append(m)
    return got


def test_receive_pool_exhaustion_is_counted_and_loses_nothing(start_server):
    """--recv-pool-buffers 1 --recv-buffer-bytes 64: a 16 KiB message needs
    hundreds of buffers. The receive stops when the one buffer is taken
    (wsgate_recv_buffers_exhausted_total), is re-armed, and the message
    arrives whole."""
    s = start_server("--recv-pool-buffers", "1", "--recv-buffer-bytes", "64")
    content = "x" * 16384

    async def go():
        async with connect(s, "big") as ws:
            await ws.send(json.dumps({"type": "broadcast", "content": content}))
            [m] = await broadcasts(ws, 1)
            assert m["content"] == content

    run(go())
    assert s.metrics().get("wsgate_recv_buffers_exhausted_total") > 0


def test_tiny_io_uring_queues_lose_nothing(start_server):
    """--uring-sq-entries 8 --uring-cq-entries 8 with 40 clients who each
    broadcast once: every iteration prepares far more than 8 submissions
    and gets far more than 8 completions. Every client gets all 40."""
    s = start_server("--uring-sq-entries", "8", "--uring-cq-entries", "8", "--max-connections-per-ip", "1000")
    n = 40

    async def go():
        conns = [await connect(s, f"q{i}") for i in range(n)]
        try:
            await asyncio.gather(*(ws.send(json.dumps({"type": "broadcast", "content": i}))
                                   for i, ws in enumerate(conns)))
            results = await asyncio.gather(*(broadcasts(ws, n) for ws in conns))
            for got in results:
                assert sorted(m["content"] for m in got) == list(range(n))
        finally:
            await asyncio.gather(*(ws.close() for ws in conns))

    run(go(), timeout=60)
    assert s.alive()
