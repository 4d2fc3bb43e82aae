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


def sanitized(s):
    """True if the server runs under AddressSanitizer (the sanitizer build)."""
    with open(f"/proc/{s.pid}/maps") as f:
        return "libasan" in f.read()


def test_ping_flood_memory_stays_within_the_send_queue_limit(start_server):
    """A client sends 400k empty pings and never reads. Every pong it is owed
    collapses into one queued pong (RFC 6455 5.5.3), so the server's RSS
    grows by less than the send-queue limit, where it grew by one heap frame
    per ping before (~48 bytes each)."""
    queue = 1024 * 1024
    s = start_server("--send-queue-max-bytes", str(queue))
    c = rawws.connect(s, "flooder", rcvbuf=4096)
    c.sock.settimeout(30)
    empty = rawws.encode_frame(OP_PING, b"", mask_key=b"\x01\x02\x03\x04")  # 6 bytes
    # An unsolicited pong (RFC 6455 5.5.3) is read and not answered.
    unsolicited = rawws.encode_frame(OP_PONG, b"p" * 125, mask_key=b"\x01\x02\x03\x04")  # 131 bytes

    def flood(frame, count):
        base_in = bytes_in(s)
        chunk = frame * 1000
        for _ in range(count // 1000):
            c.sendall(chunk)
        total = count * len(frame)
        s.wait_for(lambda: bytes_in(s) - base_in >= total, timeout=60, what="every ping read by the server")

    # A first wave that asks for no answer warms what any busy connection
    # touches: the server's receive buffers (a ring of 8 MiB, touched in
    # turn) and the wslay context. The growth measured next is the queue's.
    flood(unsolicited, 80_000)  # 10 MiB
    rss0 = s.rss_bytes()
    pings = 400_000
    flood(empty, pings)
    growth = s.rss_bytes() - rss0
    queued = s.metric("wsgate_queued_memory_bytes")  # the client has read nothing yet
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
    if sanitized(s):
        # AddressSanitizer quarantines freed memory (up to 256 MiB), so RSS
        # says nothing here; the node's own ledger of queued memory does.
        assert queued < queue, f"{queued} bytes queued under a ping flood"
    else:
        assert growth < queue, f"RSS grew by {growth >> 10} KiB under a ping flood"
    c.close()


def refused(s, user, source=None):
    """(status, body) of an upgrade the server refuses; fails if it succeeds."""
    try:
        c = rawws.connect(s, user, source=source)
    except rawws.HandshakeError as e:
        return e.status, e.body.decode()
    c.close()
    raise AssertionError("upgrade unexpectedly succeeded")


def ping_pong(c):
    """A JSON ping answered: everything the client sent before is processed."""
    c.send_text('{"type":"ping"}')
    deadline = time.monotonic() + T
    while True:
        assert time.monotonic() < deadline, "no pong"
        f = c.recv_frame(T)
        if f.opcode == OP_TEXT and json.loads(f.text) == {"type": "pong"}:
            return


def read_to_close(c, timeout=30):
    """Reads frames until the server's close frame or EOF; returns (texts,
    close code or None)."""
    texts = []
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "server did not close the connection"
        try:
            f = c.recv_frame(T)
        except (rawws.Closed, OSError):
            return texts, None
        if f.opcode == OP_CLOSE:
            return texts, f.close_code
        if f.opcode == OP_TEXT:
            texts.append(json.loads(f.text))


# --- per-connection rate ------------------------------------------------------
def test_rate_limit_error_replies_then_close_1008(start_server):
    """--client-max-messages-per-s / --client-burst-messages: a client that
    broadcasts 8 messages at once with a burst of 5 gets 5 through, an
    error reply per refused message, and with --client-max-rate-refusals 3
    is closed with 1008 at the third refusal. Other clients see 5
    broadcasts and stay connected."""
    s = start_server("--client-max-messages-per-s", "1", "--client-burst-messages", "5",
                     "--client-max-rate-refusals", "3")
    reader = rawws.connect(s, "reader")
    flooder = rawws.connect(s, "flooder")
    flooder.sendall(b"".join(rawws.encode_frame(OP_TEXT, json.dumps({"type": "broadcast", "content": i}))
                             for i in range(8)))
    texts, code = read_to_close(flooder)
    assert code == 1008
    errors = [t["message"] for t in texts if t["type"] == "error"]
    assert errors == ["Rate limit exceeded: at most 1 messages/s (burst 5); message dropped"] * 2, texts
    assert [t["content"] for t in texts if t["type"] == "broadcast"] == [0, 1, 2, 3, 4]
    got = []
    deadline = time.monotonic() + T
    while len(got) < 5:
        assert time.monotonic() < deadline, got
        f = reader.recv_frame(T)
        if f.opcode == OP_TEXT:
            got.append(json.loads(f.text)["content"])
    assert got == [0, 1, 2, 3, 4]
    ping_pong(reader)  # nothing more arrived before the pong, and it still works
    s.wait_for(lambda: s.health()["connections"] == 1, what="flooder gone")
    assert s.metric("wsgate_rate_limited_messages_total") == 3
    assert s.metric("wsgate_rate_limit_closes_total") == 1
    reader.close()


def test_rate_limit_on_bytes(start_server):
    """--client-max-bytes-per-s: messages past the byte bucket are refused
    with an error naming the byte rate; the connection stays open below
    --client-max-rate-refusals."""
    s = start_server("--client-max-bytes-per-s", "1000", "--client-burst-bytes", "70000")
    c = rawws.connect(s, "big")
    msg = json.dumps({"type": "send_message", "target_user": "nobody", "content": "x" * 30000})
    for _ in range(3):
        c.send_text(msg)
    ping_pong_seen = False
    c.send_text('{"type":"ping"}')
    errors = []
    deadline = time.monotonic() + T
    while not ping_pong_seen:
        assert time.monotonic() < deadline
        f = c.recv_frame(T)
        if f.opcode == OP_TEXT:
            m = json.loads(f.text)
            if m["type"] == "error":
                errors.append(m["message"])
            ping_pong_seen = m == {"type": "pong"}
    assert errors == ["Rate limit exceeded: at most 1000 bytes/s (burst 70000); message dropped"]
    c.close()


# --- per-IP open connections ----------------------------------------------------
def test_open_connections_per_ip_cap_429(start_server):
    """--max-open-connections-per-ip 5: five connections from 127.0.0.1 are
    open, the sixth upgrade gets 429 (counted as too_many_open_per_ip), an
    other address still gets in, and closing one lets the next in."""
    s = start_server("--max-open-connections-per-ip", "5")
    conns = [rawws.connect(s, f"u{i}", source="127.0.0.1") for i in range(5)]
    status, body = refused(s, "u5", source="127.0.0.1")
    assert (status, body) == (429, "too many open connections from this address")
    other = rawws.connect(s, "elsewhere", source="127.0.0.2")
    conns[0].send_close(1000)
    read_to_close(conns[0])
    conns[0].close()
    s.wait_for(lambda: s.health()["connections"] == 5, what="one closed")
    conns[0] = rawws.connect(s, "u5", source="127.0.0.1")
    assert refused(s, "u6", source="127.0.0.1")[0] == 429
    assert s.metric(M.rejected, reason="too_many_open_per_ip") == 2
    for c in conns + [other]:
        c.close()


# --- node-wide queue budget -----------------------------------------------------
def test_node_queue_budget_refuses_upgrades_then_sheds_the_largest(start_server):
    """--node-send-queue-max-bytes 3 MiB: seven clients that never read get
    direct messages, one ("big") more than the others. Once the node's
    queued memory passes 3/4 of the budget, upgrades get 503; once it passes
    the budget, "big" (the largest queue) is closed 1008 and counted in
    wsgate_queue_budget_closes_total, the others stay."""
    budget = 3 * 1024 * 1024
    s = start_server("--node-send-queue-max-bytes", str(budget), "--send-queue-max-bytes", str(1024 * 1024),
                     "--client-max-messages-per-s", "0", "--client-max-bytes-per-s", "0")
    big = rawws.connect(s, "big", rcvbuf=4096)
    others = [rawws.connect(s, f"o{i}", rcvbuf=4096) for i in range(6)]
    sender = rawws.connect(s, "sender")
    sender.sock.settimeout(30)

    def send_to(user, n):
        m = json.dumps({"type": "send_message", "target_user": user, "content": "x" * 60000})
        sender.sendall(rawws.encode_frame(OP_TEXT, m) * n)
        ping_pong(sender)

    def queued():
        return s.metric("wsgate_queued_memory_bytes")

    def fill_kernel_buffer(user):
        # The kernel takes a few MiB per socket (send buffer autotuning)
        # before anything stays queued in the server: send until it does.
        for _ in range(400):
            before = queued()
            send_to(user, 1)
            if queued() - before > 30000:
                return
        raise AssertionError(f"{user}: nothing stays queued in the server")

    fill_kernel_buffer("big")
    send_to("big", 12)  # ~780 KB queued, under its own 1 MiB limit
    for i in range(6):
        fill_kernel_buffer(f"o{i}")
    refused_503 = None
    for round_ in range(40):
        if s.metric("wsgate_queue_budget_closes_total") >= 1:
            break
        for i in range(6):
            send_to(f"o{i}", 1)
            if refused_503 is None and budget * 3 // 4 < queued() and s.metric("wsgate_queue_budget_closes_total") == 0:
                refused_503 = refused(s, "newcomer")
    assert s.metric("wsgate_queue_budget_closes_total") == 1, (
        f"queued {queued()}, slow consumers {s.metric(M.slow_consumer)}, health {s.health()}")
    assert refused_503 == (503, "node send queues near their memory budget")
    assert s.metric(M.rejected, reason="queue_budget") >= 1
    assert s.metric(M.slow_consumer) == 0
    _, code = read_to_close(big)
    assert code in (None, 1008)
    s.wait_for(lambda: s.health()["connections"] == 7, what="big shed, the others kept")
    assert queued() <= budget
    print(f"queue budget: shed after {round_} rounds; queued {queued() / 2**20:.2f} MiB of {budget >> 20} MiB")
    for c in others + [big, sender]:
        c.close()
