"""Every limit of issue 2 ("Command line and limits") hit and observed on the
real binary: max connections (503), per-IP rate (429), message size (1009),
slow consumer (1008, counted, memory bounded), heartbeat and idle timeout,
header size (431), handshake timeout, pending handshakes (the oldest
evicted, /health still answers), SIGTERM/SIGINT (a paced drain with 1001
while HTTP answers, exit 0; the shutdown timeout cuts the rest; a second
signal cuts at once), a tiny io_uring submission queue, and flag/environment
precedence.

Each server is started with small limits so the tests run fast; every wait
is for a condition with a deadline, never a timed assertion.
"""
import asyncio
import json
import signal
import socket
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatusCode

import rawws
from rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from wsgate_fixture import M, http_request, run, wait_for

T = 5.0


def connect(server, user, source=None, **kw):
    kw.setdefault("open_timeout", T)
    kw.setdefault("close_timeout", T)
    kw.setdefault("ping_interval", None)
    kw.setdefault("compression", None)
    kw.setdefault("max_size", None)
    if source:
        kw["local_addr"] = (source, 0)
    return websockets.connect(server.url(user), **kw)


async def refused_status(server, user, source=None):
    """The HTTP status of a refused upgrade (fails if the upgrade succeeds)."""
    try:
        ws = await connect(server, user, source)
    except InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    raise AssertionError("upgrade unexpectedly succeeded")


async def pong(ws):
    await ws.send('{"type":"ping"}')
    assert json.loads(await asyncio.wait_for(ws.recv(), T)) == {"type": "pong"}


# --- max connections ---------------------------------------------------------------
def test_max_connections_503_then_next_succeeds_after_one_closes(start_server):
    """--max-connections N: the (N+1)th upgrade is refused with 503 (counted
    as too_many_connections); after one closes, a new one succeeds."""
    s = start_server("--max-connections", "3", "--max-connections-per-ip", "1000")

    async def go():
        conns = [await connect(s, f"u{i}") for i in range(3)]
        for c in conns:
            await pong(c)
        assert await refused_status(s, "extra") == 503
        assert await refused_status(s, "extra") == 503
        # plain HTTP still works at the cap
        assert s.health()["connections"] == 3
        assert s.metrics().get(M.rejected, reason=M.R_TOO_MANY) >= 2
        await conns[0].close()
        s.wait_for(lambda: s.health()["connections"] == 2, what="one connection gone")
        again = await connect(s, "again")
        await pong(again)
        assert await refused_status(s, "extra") == 503
        await asyncio.gather(again.close(), *(c.close() for c in conns[1:]))
    run(go())


def test_max_connections_counts_established_not_refused(start_server):
    """Refused upgrades do not leak slots: many 503s in a row, then the cap
    is still exactly N once the others close."""
    s = start_server("--max-connections", "2", "--max-connections-per-ip", "1000")

    async def go():
        conns = [await connect(s, f"u{i}") for i in range(2)]
        for _ in range(20):
            assert await refused_status(s, "x") == 503
        await asyncio.gather(*(c.close() for c in conns))
        s.wait_for(lambda: s.health()["connections"] == 0, what="all closed")
        conns = [await connect(s, f"v{i}") for i in range(2)]
        assert await refused_status(s, "x") == 503
        await asyncio.gather(*(c.close() for c in conns))
    run(go())


# --- per-IP rate ------------------------------------------------------------------------
def test_per_ip_rate_429_other_ips_unaffected(start_server):
    """--max-connections-per-ip N per --ip-window-ms: the (N+1)th new
    connection from one IP in a window gets 429; other source IPs are not
    affected."""
    s = start_server("--max-connections-per-ip", "3", "--ip-window-ms", "600000")

    async def go():
        conns = [await connect(s, f"a{i}", source="127.0.0.1") for i in range(3)]
        assert await refused_status(s, "a-extra", source="127.0.0.1") == 429
        # closing does not give the budget back inside the window
        await conns[0].close()
        s.wait_for(lambda: s.health()["connections"] == 2, what="closed")
        assert await refused_status(s, "a-extra", source="127.0.0.1") == 429
        # other IPs, each with its own budget
        others = []
        for ip in ("127.0.0.2", "127.0.0.3", "127.0.1.2"):
            for i in range(3):
                others.append(await connect(s, f"{ip}-{i}", source=ip))
            assert await refused_status(s, "b-extra", source=ip) == 429
        for c in others:
            await pong(c)
        assert s.metrics().get(M.rejected, reason=M.R_RATE_LIMITED) >= 5
        await asyncio.gather(*(c.close() for c in conns[1:] + others))
    run(go())


def test_per_ip_rate_window_expires(start_server):
    """After the window ends the IP may connect again (fixed window)."""
    s = start_server("--max-connections-per-ip", "2", "--ip-window-ms", "300",
                     "--heartbeat-interval-ms", "100", "--idle-timeout-ms", "60000")

    async def go():
        conns = [await connect(s, f"a{i}", source="127.0.0.5") for i in range(2)]
        assert await refused_status(s, "x", source="127.0.0.5") == 429

        async def try_once():
            try:
                ws = await connect(s, "later", source="127.0.0.5")
            except InvalidStatusCode as e:
                assert e.status_code == 429
                return None
            return ws
        deadline = time.monotonic() + 10
        later = None
        while later is None:
            assert time.monotonic() < deadline, "still 429 long after the window"
            later = await try_once()
            if later is None:
                await asyncio.sleep(0.05)
        await pong(later)
        await asyncio.gather(later.close(), *(c.close() for c in conns))
    run(go())


def test_plain_http_not_rate_limited(start_server):
    """/health and /metrics are not upgrades: they do not use the per-IP
    connection budget."""
    s = start_server("--max-connections-per-ip", "2", "--ip-window-ms", "600000")
    for _ in range(10):
        s.health()

    async def go():
        a = await connect(s, "a")
        b = await connect(s, "b")
        await asyncio.gather(a.close(), b.close())
    run(go())


def test_max_tracked_ips(start_server):
    """--max-tracked-ips: when the rate limiter tracks that many live
    windows, a new IP is refused with 429 rather than let through untracked;
    known IPs keep their budget."""
    s = start_server("--max-tracked-ips", "2", "--max-connections-per-ip", "10", "--ip-window-ms", "600000")

    async def go():
        a = await connect(s, "a", source="127.0.3.1")
        b = await connect(s, "b", source="127.0.3.2")
        assert await refused_status(s, "c", source="127.0.3.3") == 429
        a2 = await connect(s, "a2", source="127.0.3.1")
        await asyncio.gather(a.close(), b.close(), a2.close())
    run(go())


# --- message size --------------------------------------------------------------------------
def test_max_message_bytes_1009(start_server):
    """--max-message-bytes: a message of exactly the limit is delivered, one
    byte more closes the connection with 1009."""
    s = start_server("--max-message-bytes", "1024")

    def msg(n):
        base = '{"type":"send_message","target_user":"me","content":""}'
        return '{"type":"send_message","target_user":"me","content":"%s"}' % ("x" * (n - len(base)))

    async def go():
        async with connect(s, "me") as ws:
            await ws.send(msg(1024))
            assert json.loads(await asyncio.wait_for(ws.recv(), T))["type"] == "message"
            await ws.send(msg(1025))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), T)
            assert ws.close_code == 1009, (ws.close_code, ws.close_reason)
    run(go())


def test_limit_from_environment_and_flag_precedence(start_server):
    """Each limit has an environment variable; a flag beats it."""
    big = '{"type":"ping","pad":"%s"}' % ("x" * 1500)

    async def closes_1009(s):
        async with connect(s, "e") as ws:
            await ws.send(big)
            try:
                reply = await asyncio.wait_for(ws.recv(), T)
            except ConnectionClosed:
                return ws.close_code == 1009
            assert json.loads(reply) == {"type": "pong"}
            return False

    s = start_server(env={"WSGATE_MAX_MESSAGE_BYTES": "1024"})
    assert run(closes_1009(s)) is True
    s2 = start_server("--max-message-bytes", "4096", env={"WSGATE_MAX_MESSAGE_BYTES": "1024"})
    assert run(closes_1009(s2)) is False


@pytest.mark.parametrize("flags", [["--max-connections", "abc"], ["--port", "99999"],
                                   ["--no-such-flag"], ["--max-message-bytes", "-5"],
                                   ["--transport", "carrier-pigeon"]])
def test_bad_command_line_exits_nonzero(flags):
    """A bad flag or value is refused at start with a non-zero exit and a
    message on stderr (not a crash, not a silent default)."""
    import subprocess
    from wsgate_fixture import wsgate_bin
    p = subprocess.run([wsgate_bin(), "--port", "0"] + flags, capture_output=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    assert p.returncode not in (0, None) and p.returncode > 0, (p.returncode, p.stderr[-500:])
    assert p.stderr.strip(), "no error message"


def test_help_lists_limits_with_defaults_and_units():
    """`wsgate --help` lists every limit with its default and unit."""
    import subprocess
    from wsgate_fixture import wsgate_bin
    p = subprocess.run([wsgate_bin(), "--help"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    assert p.returncode == 0
    out = (p.stdout + p.stderr).decode()
    for flag, default in [("--max-connections", "100000"), ("--max-connections-per-ip", "100"),
                          ("--ip-window-ms", "60000"), ("--max-message-bytes", "65536"),
                          ("--send-queue-max-bytes", "1048576"), ("--heartbeat-interval-ms", "30000"),
                          ("--idle-timeout-ms", "60000"), ("--max-header-bytes", "8192"),
                          ("--handshake-timeout-ms", "5000"), ("--close-timeout-ms", None),
                          ("--shutdown-timeout-ms", None), ("--max-user-id-bytes", None),
                          ("--max-tracked-ips", None), ("--host", "127.0.0.1"), ("--port", "8080"),
                          ("--node-id", None), ("--transport", "local")]:
        assert flag in out, f"{flag} missing from --help"
        if default:
            line = out[out.index(flag + " "):][:400]
            assert default in line, f"{flag}: default {default} not shown near it:\n{line}"


# --- slow consumer ----------------------------------------------------------------------------
def test_slow_consumer_closed_and_memory_bounded(start_server):
    """--send-queue-max-bytes: a client that never reads while another user
    floods it is closed (1008 when the close frame can be seen), counted in
    wsgate_slow_consumer_closes_total, and the server's RSS stays bounded;
    the flooder is unaffected."""
    queue = 256 * 1024
    s = start_server("--send-queue-max-bytes", str(queue), "--max-message-bytes", "8192",
                     "--max-user-id-bytes", "64", "--max-connections-per-ip", "1000",
                     "--client-max-messages-per-s", "0", "--client-max-bytes-per-s", "0")
    victim = rawws.connect(s, "victim", rcvbuf=4096)
    rss0 = s.rss_bytes()
    payload = json.dumps({"type": "send_message", "target_user": "victim", "content": "y" * 8000})
    max_rss = rss0
    sent = 0

    async def go():
        nonlocal max_rss, sent
        async with connect(s, "flooder") as fl:
            deadline = time.monotonic() + 60
            while s.metric(M.slow_consumer) < 1:
                assert time.monotonic() < deadline, (
                    f"victim not closed after {sent} messages ({sent * 8000 >> 20} MiB); "
                    f"rss {max_rss >> 20} MiB")
                for _ in range(50):
                    await asyncio.wait_for(fl.send(payload), T)
                sent += 50
                max_rss = max(max_rss, s.rss_bytes())
                assert sent < 200000, "flooded 1.6 GB without a slow-consumer close"
            # the flooder keeps working
            await pong(fl)
    run(go(), timeout=120)
    # The victim's socket is closed by the server; reading it now finds
    # queued messages, perhaps a close frame (1008 or 1013), then EOF.
    code = None
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "victim socket not closed"
        try:
            f = victim.recv_frame(T)
        except (rawws.Closed, OSError):
            break
        if f.opcode == OP_CLOSE:
            code = f.close_code
    victim.close()
    print(f"slow consumer: closed after {sent} messages, close code seen {code}, rss growth {(max_rss - rss0) >> 10} KiB")
    assert code in (None, 1008, 1013), code
    s.wait_for(lambda: s.health()["connections"] == 0, what="victim gone")
    # Bound: the queue limit plus slack for allocator and buffers; far below
    # what was sent.
    growth = max_rss - rss0
    assert growth < 64 * 1024 * 1024, f"RSS grew by {growth >> 20} MiB while flooding"
    assert sent * 8000 > queue


def drain_to_eof(c, timeout=30):
    """Reads everything until the server ends the connection; returns the
    close code seen, if any."""
    code = None
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "socket not closed by the server"
        try:
            f = c.recv_frame(T)
        except (rawws.Closed, OSError):
            return code
        if f.opcode == OP_CLOSE:
            code = f.close_code


def test_slow_consumer_close_with_send_in_flight_repeatedly(start_server):
    """The slow-consumer close happens while a write to that socket may be in
    flight (io_uring send of queued frames): repeated many times, with
    several victims at once, the node must survive every one and count each."""
    s = start_server("--send-queue-max-bytes", str(64 * 1024), "--max-message-bytes", "8192",
                     "--max-user-id-bytes", "64", "--max-connections-per-ip", "100000",
                     "--client-max-messages-per-s", "0", "--client-max-bytes-per-s", "0")

    async def go():
        async with connect(s, "flooder") as fl:
            closed = 0
            for rnd in range(10):
                victims = [rawws.connect(s, f"v{rnd}-{i}", rcvbuf=4096) for i in range(4)]
                target = closed + len(victims)
                deadline = time.monotonic() + 60
                k = 0
                while s.metric(M.slow_consumer) < target:
                    assert s.alive(), f"wsgate died in round {rnd}:\n{s.stderr_text()}"
                    assert time.monotonic() < deadline, f"round {rnd}: victims not all closed"
                    for _ in range(10):
                        for i in range(len(victims)):
                            await fl.send(json.dumps({"type": "send_message", "target_user": f"v{rnd}-{i}",
                                                      "content": "q" * (1000 + 997 * (k % 7))}))
                            k += 1
                closed = target
                # Now the victims read: the server's pending writes complete
                # (partly) after their queues were cut; then EOF.
                for v in victims:
                    await asyncio.get_running_loop().run_in_executor(None, drain_to_eof, v)
                    v.close()
                assert s.alive(), f"wsgate died in round {rnd}:\n{s.stderr_text()}"
                await pong(fl)
            assert s.alive()
    run(go(), timeout=240)
    s.wait_for(lambda: s.health()["connections"] == 0, what="victims gone")


def test_slow_consumer_does_not_affect_other_receivers(start_server):
    """A slow consumer is closed; a fast receiver of the same flood gets every
    message."""
    s = start_server("--send-queue-max-bytes", str(128 * 1024), "--max-message-bytes", "8192",
                     "--max-user-id-bytes", "64", "--max-connections-per-ip", "1000",
                     "--client-max-messages-per-s", "0", "--client-max-bytes-per-s", "0")
    victim = rawws.connect(s, "slow", rcvbuf=4096)
    n = 0

    async def go():
        nonlocal n
        async with connect(s, "fast", max_queue=None) as fast, \
                connect(s, "flooder", max_queue=None) as fl:
            body = "z" * 4000
            got = 0

            async def reader():
                nonlocal got
                while True:
                    msg = json.loads(await fast.recv())
                    assert msg["type"] == "broadcast" and msg["from"] == "flooder"
                    got += 1
            rt = asyncio.ensure_future(reader())
            try:
                deadline = time.monotonic() + 60
                while s.metric(M.slow_consumer) < 1:
                    assert time.monotonic() < deadline
                    for _ in range(20):
                        await fl.send(json.dumps({"type": "broadcast", "content": body}))
                    n += 20
                    assert n < 100000
                # Flooder receives its own broadcasts too; drain them.
                while got < n:
                    await asyncio.sleep(0.01)
                    assert time.monotonic() < deadline + 30, f"fast receiver got {got}/{n}"
            finally:
                rt.cancel()

            async def drain_flooder():
                c = 0
                while c < n:
                    json.loads(await fl.recv())
                    c += 1
            await asyncio.wait_for(drain_flooder(), 60)
    run(go(), timeout=180)
    victim.close()


# --- heartbeat ----------------------------------------------------------------------------------
def test_heartbeat_server_sends_pings(start_server):
    """--heartbeat-interval-ms: the server sends WebSocket pings."""
    s = start_server("--heartbeat-interval-ms", "100", "--idle-timeout-ms", "60000")
    c = rawws.connect(s, "hb")
    try:
        pings = 0
        deadline = time.monotonic() + 10
        while pings < 3:
            assert time.monotonic() < deadline, f"only {pings} pings"
            f = c.recv_frame(deadline - time.monotonic())
            if f.opcode == OP_PING:
                pings += 1
                c.send_frame(OP_PONG, f.payload)
    finally:
        c.close()


def test_idle_client_closed_while_ponging_clients_stay(start_server):
    """--idle-timeout-ms: a raw client that sends nothing (no pong, no
    message) is closed and counted as a heartbeat timeout; a websockets client
    (answers pings by itself) and a raw client that only answers pings stay
    connected past several idle timeouts."""
    s = start_server("--heartbeat-interval-ms", "100", "--idle-timeout-ms", "300",
                     "--max-connections-per-ip", "1000")

    async def go():
        async with connect(s, "lib") as lib:
            ponger = rawws.connect(s, "ponger")
            loop = asyncio.get_running_loop()
            stop = False

            def pong_loop():
                # answers every ping until told to stop; returns frames that were not pings
                other = []
                while not stop:
                    try:
                        f = ponger.recv_frame(0.2)
                    except socket.timeout:
                        continue
                    except rawws.Closed:
                        other.append("EOF")
                        return other
                    if f.opcode == OP_PING:
                        ponger.send_frame(OP_PONG, f.payload)
                    else:
                        other.append(f)
                return other
            pong_task = loop.run_in_executor(None, pong_loop)
            try:
                t0 = s.metric(M.heartbeat_timeouts)
                # Three idle clients in a row, each closed after the idle timeout:
                # the older clients above live through all three.
                for i in range(3):
                    idle = await loop.run_in_executor(None, lambda: rawws.connect(s, f"idle{i}"))
                    try:
                        def wait_closed():
                            deadline = time.monotonic() + 10
                            code = None
                            while True:
                                assert time.monotonic() < deadline, "idle client not closed"
                                try:
                                    f = idle.recv_frame(deadline - time.monotonic())
                                except (rawws.Closed, OSError):
                                    return code
                                assert f.opcode in (OP_PING, OP_CLOSE), f  # never answered
                                if f.opcode == OP_CLOSE:
                                    code = f.close_code
                        code = await loop.run_in_executor(None, wait_closed)
                        assert code in (None, 1000, 1001, 1006, 1008, 1011), code
                    finally:
                        idle.close()
                s.wait_for(lambda: s.metric(M.heartbeat_timeouts) >= t0 + 3, what="3 heartbeat timeouts")
                await pong(lib)
                assert lib.open
            finally:
                stop = True
                other = await asyncio.wait_for(pong_task, T)
                ponger.close()
            assert other == [], f"the ponging raw client got {other}"
    run(go(), timeout=60)


def test_client_sending_messages_is_not_idle(start_server):
    """Sending messages is activity too: a raw client that never answers
    pings but sends a message more often than the idle timeout stays."""
    s = start_server("--heartbeat-interval-ms", "100", "--idle-timeout-ms", "400",
                     "--max-connections-per-ip", "1000")
    talker = rawws.connect(s, "talker")
    idle = rawws.connect(s, "idle")
    try:
        closed = False
        deadline = time.monotonic() + 15
        while not closed:
            assert time.monotonic() < deadline, "idle client never closed"
            talker.send_text(b'{"type":"ping"}')
            # read talker's pong (skip pings, never answer them)
            while True:
                f = talker.recv_frame(T)
                if f.opcode == OP_TEXT:
                    assert json.loads(f.payload) == {"type": "pong"}
                    break
                assert f.opcode == OP_PING, f
            closed = idle.is_eof(0.05) or not idle_alive(idle)
        # the talker lived through the idle client's timeout
        talker.send_text(b'{"type":"ping"}')
        while True:
            f = talker.recv_frame(T)
            if f.opcode == OP_TEXT:
                break
    finally:
        talker.close()
        idle.close()


def idle_alive(c):
    """Reads what the idle client got without answering; False once closed."""
    try:
        while True:
            f = c.recv_frame(0.01)
            if f.opcode == OP_CLOSE:
                return False
    except socket.timeout:
        return True
    except (rawws.Closed, OSError):
        return False


# --- header size and handshake timeout ---------------------------------------------------------
def test_header_too_large_431(start_server):
    """--max-header-bytes: a request head larger than the limit gets 431
    (counted); one just under it is upgraded."""
    s = start_server("--max-header-bytes", "1024")
    c = rawws.RawWS(s.host, s.port)
    req = c.request_bytes("/ws?user_id=big", extra_headers={"X-Pad": "p" * 2000})
    c.sendall(req)
    st, _, _ = c.read_http_head()
    c.close()
    assert st == 431
    assert s.metric(M.rejected, reason=M.R_HEADER_TOO_LARGE) >= 1
    c = rawws.RawWS(s.host, s.port)
    base = len(c.request_bytes("/ws?user_id=ok", extra_headers={"X-Pad": ""}))
    c.handshake("/ws?user_id=ok", extra_headers={"X-Pad": "p" * (1024 - base - 16)})
    c.close()


def test_header_too_large_without_end_431(start_server):
    """A head that exceeds the limit before its blank line arrives is refused
    at once (431), not buffered without bound."""
    s = start_server("--max-header-bytes", "1024", "--handshake-timeout-ms", "60000")
    c = rawws.RawWS(s.host, s.port)
    c.sendall(b"GET /ws?user_id=x HTTP/1.1\r\nX-Pad: " + b"p" * 4000)
    st, _, _ = c.read_http_head()
    c.close()
    assert st == 431


def test_handshake_timeout_closes_half_sent_head(start_server):
    """--handshake-timeout-ms (slowloris): a client that sends half a request
    head, or nothing, has its socket closed; counted as handshake_timeout."""
    s = start_server("--handshake-timeout-ms", "300", "--heartbeat-interval-ms", "100",
                     "--idle-timeout-ms", "60000")
    half = socket.create_connection(s.addr, timeout=T)
    half.sendall(b"GET /ws?user_id=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
    silent = socket.create_connection(s.addr, timeout=T)
    for sock in (half, silent):
        deadline = time.monotonic() + 15
        while True:
            assert time.monotonic() < deadline, "slow handshake not closed"
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                d = sock.recv(4096)  # perhaps a 408 response, then EOF
            except ConnectionResetError:
                break
            if not d:
                break
        sock.close()
    s.wait_for(lambda: s.metric(M.rejected, reason=M.R_HANDSHAKE_TIMEOUT) >= 2,
               what="handshake timeouts counted")


def test_handshake_trickle_still_times_out(start_server):
    """Slowloris that keeps sending a byte now and then never completes the
    head: the timeout runs from accept, not from the last byte."""
    s = start_server("--handshake-timeout-ms", "500", "--heartbeat-interval-ms", "100",
                     "--idle-timeout-ms", "60000")
    sock = socket.create_connection(s.addr, timeout=T)
    head = b"GET /ws?user_id=slow HTTP/1.1\r\nX-A: " + b"a" * 500
    deadline = time.monotonic() + 15
    i = 0
    try:
        while True:
            assert time.monotonic() < deadline, "trickling client never closed"
            try:
                sock.sendall(head[i % len(head):i % len(head) + 1])
            except OSError:
                break
            i += 1
            sock.settimeout(0.05)
            try:
                d = sock.recv(4096)
                if not d:
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                break
    finally:
        sock.close()


def test_half_open_flood_does_not_lock_out_health(start_server):
    """Many accepted sockets that never finish their request head (some send
    nothing, some half a head) are bounded by --max-pending-handshakes: the
    oldest are closed to make room, and a fresh /health still gets 200.
    (Before, they filled every socket slot and /health was refused.)"""
    pending = 64
    s = start_server("--max-connections", "10", "--max-pending-handshakes", str(pending),
                     "--handshake-timeout-ms", "60000")
    socks = []
    try:
        for i in range(1200):  # more than the socket table (10 + 1024 before)
            c = socket.create_connection(s.addr, timeout=T)
            if i % 2:
                c.sendall(b"GET /ws?user_id=x HTTP/1.1\r\nHost: x\r\n")
            socks.append(c)
        st, _, body = s.http_get("/health")
        assert st == 200, body
        m = s.metrics()
        assert m.get("wsgate_pending_handshakes") <= pending
        assert m.get("wsgate_handshakes_evicted_total") >= 1200 - pending - 10
    finally:
        for c in socks:
            c.close()


def test_incremental_head_trickled_then_upgrades(start_server):
    """A head that arrives in many small pieces still upgrades (the parser
    resumes where it stopped)."""
    s = start_server("--max-connections-per-ip", "1000")
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    head = (f"GET /ws?user_id=trickle HTTP/1.1\r\nHost: {s.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nX-Pad: {'p' * 2000}\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
    c = rawws.RawWS(s.host, s.port)
    for i in range(0, len(head), 7):
        c.sendall(head[i:i + 7])
    st, _, _ = c.read_http_head()
    assert st == 101
    c.close()


def test_tiny_io_uring_submission_queue_is_submitted_not_fatal(start_server):
    """--uring-sq-entries 2: every iteration needs far more submissions
    than the queue holds (a broadcast to 150 connections is 150 sends). The
    full queue is submitted and reused; nothing aborts, nothing is lost."""
    n = 150
    s = start_server("--uring-sq-entries", "2", "--max-connections-per-ip", "1000")

    async def go():
        conns = [await connect(s, f"q{i}") for i in range(n)]
        for k in range(3):
            await conns[0].send(json.dumps({"type": "broadcast", "content": k}))
        for c in conns:
            got = [json.loads(await asyncio.wait_for(c.recv(), T))["content"] for _ in range(3)]
            assert got == [0, 1, 2]
        for c in conns:
            await c.close()
    run(go(), timeout=60)
    assert s.metric("wsgate_io_uring_sq_full_total") > 0
    assert s.alive()


# --- shutdown -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_every_connection_1001_and_exits_0(start_server, sig):
    """SIGTERM/SIGINT: every open connection gets close 1001 (the drain), the
    process exits 0 once they are gone, and nothing listens after."""
    s = start_server("--shutdown-timeout-ms", "3000", "--max-connections-per-ip", "1000")

    async def go():
        conns = [await connect(s, f"u{i % 3}") for i in range(10)]
        raw = await asyncio.get_running_loop().run_in_executor(None, lambda: rawws.connect(s, "raw"))
        s.wait_for(lambda: s.health()["connections"] == 11, what="11 connections")
        s.signal(sig)

        async def closed_with(ws):
            await asyncio.wait_for(ws.wait_closed(), T + 3)
            return ws.close_code
        codes = await asyncio.gather(*(closed_with(c) for c in conns))
        assert codes == [1001] * 10, codes
        f = await asyncio.get_running_loop().run_in_executor(None, lambda: raw.expect_close(T + 3))
        assert f.close_code == 1001
        raw.close()
    run(go(), timeout=30)
    code = s.wait_exit(10)
    assert code == 0, f"exit code {code}; stderr:\n{s.stderr_text()}"
    # exited: nothing listens any more
    with pytest.raises(OSError):
        socket.create_connection(s.addr, timeout=2).close()


def test_shutdown_bounded_when_clients_never_answer_close(start_server):
    """SIGTERM with clients that never answer the close (and never read):
    the process still exits 0, within the shutdown timeout (plus slack)."""
    s = start_server("--shutdown-timeout-ms", "1000", "--close-timeout-ms", "500",
                     "--max-connections-per-ip", "1000")
    mute = [rawws.connect(s, f"mute{i}", rcvbuf=4096) for i in range(5)]
    s.wait_for(lambda: s.health()["connections"] == 5, what="5 connections")
    t = time.monotonic()
    s.signal(signal.SIGTERM)
    code = s.wait_exit(15)
    assert code == 0, f"exit code {code} after {time.monotonic() - t:.1f}s; stderr:\n{s.stderr_text()}"
    for c in mute:
        f = None
        try:
            while True:
                f = c.recv_frame(T)
                if f.opcode == OP_CLOSE:
                    break
        except (rawws.Closed, OSError):
            pass
        c.close()
        assert f is not None and f.opcode == OP_CLOSE and f.close_code == 1001, f


def test_sigterm_drains_at_the_flag_pace_while_http_answers(start_server):
    """SIGTERM runs the core's drain: connections close with 1001 at
    --drain-max-closes-per-s, not all at once; meanwhile /health answers 200
    (saying draining, with connections still open) and an upgrade gets 503;
    the process exits 0 once the last one is gone."""
    n, rate = 300, 100  # about 3 s of drain; all at once used to take ~10 ms
    s = start_server("--drain-max-closes-per-s", str(rate), "--shutdown-timeout-ms", "60000",
                     "--max-connections-per-ip", "1000")

    async def go():
        loop = asyncio.get_running_loop()
        conns = [await connect(s, f"d{i}") for i in range(n)]
        await loop.run_in_executor(None, lambda: s.wait_for(lambda: s.health()["connections"] == n,
                                                            what=f"{n} connections"))
        closed_at = []

        async def watch(ws):
            await asyncio.wait_for(ws.wait_closed(), 60)
            closed_at.append(loop.time())
            return ws.close_code
        watchers = [asyncio.create_task(watch(c)) for c in conns]
        s.signal(signal.SIGTERM)
        # The liveness probe keeps passing while the node still holds clients.
        h = await loop.run_in_executor(None, lambda: s.wait_for(
            lambda: (lambda h: h if h.get("draining") else None)(s.health()), what="/health saying draining"))
        assert h["status"] == "ok" and h["connections"] > 0, h
        assert await refused_status(s, "late") == 503
        codes = await asyncio.gather(*watchers)
        assert codes == [1001] * n
        # Paced: the closes are spread over about n/rate seconds (loosely:
        # half of it, minus the first step), not sent in one burst.
        span = max(closed_at) - min(closed_at)
        assert span >= 0.5 * (n / rate - 1), f"{n} closes within {span:.2f}s"
    run(go(), timeout=90)
    code = s.wait_exit(15)
    assert code == 0, f"exit code {code}; stderr:\n{s.stderr_text()}"


def test_sigterm_cuts_the_rest_at_the_shutdown_timeout(start_server):
    """A drain slower than --shutdown-timeout-ms: some clients got 1001, the
    rest are cut without a close frame at the deadline, and the process
    exits 0 (not after the whole drain)."""
    n = 40
    s = start_server("--drain-max-closes-per-s", "10", "--shutdown-timeout-ms", "1000",
                     "--close-timeout-ms", "60000", "--max-connections-per-ip", "1000")
    conns = [rawws.connect(s, f"t{i}") for i in range(n)]
    s.wait_for(lambda: s.health()["connections"] == n, what=f"{n} connections")
    s.signal(signal.SIGTERM)
    code = s.wait_exit(15)  # the whole drain would take 4 s; the bound is 1 s
    assert code == 0, f"exit code {code}; stderr:\n{s.stderr_text()}"
    went_away = 0
    for c in conns:
        try:
            while True:
                f = c.recv_frame(T)
                if f.opcode == OP_CLOSE:
                    assert f.close_code == 1001
                    went_away += 1
                    break
        except (rawws.Closed, OSError):
            pass  # cut at the deadline
        c.close()
    assert 1 <= went_away < n, went_away


def test_second_signal_closes_everything_at_once(start_server):
    """During a slow drain, a second SIGTERM (or SIGINT) closes every socket
    now and the process exits 0."""
    n = 20
    s = start_server("--drain-max-closes-per-s", "1", "--shutdown-timeout-ms", "120000",
                     "--max-connections-per-ip", "1000")
    conns = [rawws.connect(s, f"s{i}") for i in range(n)]
    s.wait_for(lambda: s.health()["connections"] == n, what=f"{n} connections")
    s.signal(signal.SIGTERM)
    s.wait_for(lambda: s.health().get("draining"), what="draining")
    assert s.health()["connections"] > 1  # one close a second: most still open
    s.signal(signal.SIGINT)
    code = s.wait_exit(15)  # the drain alone would take 20 s
    assert code == 0, f"exit code {code}; stderr:\n{s.stderr_text()}"
    for c in conns:
        c.close()


def test_shutdown_with_no_connections_exits_0(start_server):
    """SIGTERM on an idle node: exit 0 promptly."""
    s = start_server()
    s.signal(signal.SIGTERM)
    assert s.wait_exit(10) == 0


def test_port_from_environment(start_server):
    """PORT sets the port when --port is absent (flag beats env, checked by
    starting with --port 0 while PORT names a busy port)."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        # --port 0 from the fixture beats PORT=busy port
        s = start_server(env={"PORT": str(busy.getsockname()[1])})
        assert s.port != busy.getsockname()[1]
    finally:
        busy.close()


def test_http_while_at_connection_cap_and_unknown_method(start_server):
    """Plain HTTP keeps working at the cap; other requests get clean errors."""
    s = start_server("--max-connections", "1")

    async def go():
        async with connect(s, "only"):
            st, _, _ = http_request(s.host, s.port, "GET", "/metrics")
            assert st == 200
            st, _, _ = http_request(s.host, s.port, "GET", "/nope")
            assert st == 404
    run(go())
    assert wait_for(lambda: s.health()["connections"] == 0)
