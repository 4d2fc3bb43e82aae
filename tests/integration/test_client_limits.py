"""What one client or one address can cost the node (issue 7), hit and
observed on the real binary:

- a ping flood from a client that never reads stays within the send-queue
  limit (only the latest unanswered ping is answered; queued frames are
  charged their memory, not their wire bytes);
- per-connection token buckets on messages and bytes per second: an error
  reply per refused message, then close 1008 for a client that keeps going;
- a per-IP cap on concurrent connections (429);
- a node-wide budget of queued bytes: upgrades refused (503) near it, the
  largest queues shed (1008) past it.

Every wait is for a condition with a deadline, never a timed assertion.
"""
import json
import socket
import time

import rawws
from rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from wsgate_fixture import M, wait_for

T = 5.0


def bytes_in(s):
    return s.metric(M.bytes_in)


def test_ping_flood_memory_stays_within_the_send_queue_limit(start_server):
    """A client sends 80k 125-byte pings then 400k empty pings and never reads. Every pong it is owed
    collapses into one queued pong (RFC 6455 5.5.3), so the server's RSS
    grows by less than the send-queue limit, where it grew by one heap frame
    per ping before (~48 bytes each)."""
    queue = 1024 * 1024
    s = start_server("--send-queue-max-bytes", str(queue))
    c = rawws.connect(s, "flooder", rcvbuf=4096)
    c.sock.settimeout(30)
    empty = rawws.encode_frame(OP_PING, b"", mask_key=b"\x01\x02\x03\x04")  # 6 bytes
    full = rawws.encode_frame(OP_PING, b"p" * 125, mask_key=b"\x01\x02\x03\x04")  # 131 bytes

    def flood(frame, count):
        base_in = bytes_in(s)
        chunk = frame * 1000
        for _ in range(count // 1000):
            c.sendall(chunk)
        total = count * len(frame)
        s.wait_for(lambda: bytes_in(s) - base_in >= total, timeout=60, what="every ping read by the server")

    # A first wave warms what any busy connection touches: the server's
    # receive buffers (a ring of 8 MiB, touched in turn) and the wslay
    # context. The growth measured next is then the queue's.
    flood(full, 80_000)  # 10 MiB
    rss0 = s.rss_bytes()
    pings = 400_000
    flood(empty, pings)
    growth = s.rss_bytes() - rss0
    print(f"ping flood: {pings} pings unread, RSS growth {growth >> 10} KiB (limit {queue >> 10} KiB)")
    assert s.health()["connections"] == 1
    # The connection still works once the client reads: its latest ping is
    # answered, then a JSON ping gets its pong.
    c.send_text(json.dumps({"type": "ping"}))
    deadline = time.monotonic() + 30
    pongs = 0
    while True:
        assert time.monotonic() < deadline, "no JSON pong after the flood"
        f = c.recv_frame(T)
        if f.opcode == OP_PONG:
            pongs += 1
        elif f.opcode == OP_TEXT:
            assert json.loads(f.text) == {"type": "pong"}
            break
    print(f"ping flood: {pongs} pongs received for {pings} pings")
    assert pongs < pings
    assert growth < queue, f"RSS grew by {growth >> 10} KiB under a ping flood"
    c.close()
