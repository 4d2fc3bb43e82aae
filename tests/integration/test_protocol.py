"""Protocol v1 (DESIGN.md, "The wire protocol") against the real binary,
driven by an independent client: Debian's python3-websockets.

Every row of the protocol table, several connections per user, content
passed through byte for byte, error replies, close 4001, binary -> 1003,
/health, /metrics, 404, the upgrade checks of RFC 6455 4.2.1, and the
undeliverable counter.
"""
import asyncio
import json
import uuid

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatusCode

import rawws
from wsgate_fixture import M, http_request, run

T = 5.0  # seconds: the deadline of any single await


def uid(prefix="u"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def connect(server, user, **kw):
    kw.setdefault("open_timeout", T)
    kw.setdefault("close_timeout", T)
    kw.setdefault("ping_interval", None)
    kw.setdefault("compression", None)
    kw.setdefault("max_size", None)
    return websockets.connect(server.url(user), **kw)


async def recv(ws, timeout=T):
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, str), f"expected a text message, got {msg!r}"
    return msg


async def recv_json(ws, timeout=T):
    raw = await recv(ws, timeout)
    return raw, json.loads(raw)


async def assert_silent(ws, timeout=0.3):
    """Nothing more arrives on ws. Used only after a barrier (a ping/pong on
    the same connection) showed that everything sent before was processed."""
    try:
        extra = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected extra message: {extra!r}")


async def barrier(ws):
    """Round trip on ws: everything the server queued to ws before this
    point has arrived once this returns (one connection is ordered)."""
    await ws.send('{"type":"ping"}')
    raw, msg = await recv_json(ws)
    assert msg == {"type": "pong"}, raw


def raw_fields(text):
    """The top-level fields of a JSON object as the raw text of each value
    (no re-serialisation), in order."""
    from json.decoder import scanstring
    dec = json.JSONDecoder()
    ws = " \t\r\n"
    i = 0
    while text[i] in ws:
        i += 1
    assert text[i] == "{", text
    i += 1
    out = []
    while True:
        while text[i] in ws:
            i += 1
        if text[i] == "}":
            return out
        if text[i] == ",":
            i += 1
            continue
        key, i = scanstring(text, i + 1)
        while text[i] in ws:
            i += 1
        assert text[i] == ":", text
        i += 1
        while text[i] in ws:
            i += 1
        _, end = dec.raw_decode(text, i)
        out.append((key, text[i:end]))
        i = end


def content_of(raw, kind, sender):
    """Checks raw is {"type":kind,"from":sender,"content":X} and returns X as
    the raw text the server wrote."""
    msg = json.loads(raw)
    assert msg.get("type") == kind, raw
    assert msg.get("from") == sender, raw
    fields = raw_fields(raw)
    assert [k for k, _ in fields] == ["type", "from", "content"], raw
    return fields[2][1]


# --- ping ---------------------------------------------------------------------
def test_ping_pong(server):
    """{"type":"ping"} -> {"type":"pong"}."""
    async def go():
        async with connect(server, uid()) as ws:
            await ws.send('{"type":"ping"}')
            raw, msg = await recv_json(ws)
            assert msg == {"type": "pong"}, raw
            # and again, with the fields in a different layout
            await ws.send(' { "type" : "ping" } ')
            raw, msg = await recv_json(ws)
            assert msg == {"type": "pong"}, raw
    run(go())


# --- send_message ---------------------------------------------------------------
def test_send_message_reaches_target_only(server):
    """send_message: the target gets {"type":"message","from":U,...}; the
    sender and bystanders get nothing."""
    a, b, c = uid("a"), uid("b"), uid("c")

    async def go():
        async with connect(server, a) as wa, connect(server, b) as wb, connect(server, c) as wc:
            await wa.send(json.dumps({"type": "send_message", "target_user": b, "content": "hi"}))
            raw = await recv(wb)
            assert content_of(raw, "message", a) == '"hi"'
            for ws in (wa, wb, wc):
                await barrier(ws)
                await assert_silent(ws, 0.05)
    run(go())


def test_send_message_to_every_connection_of_user(server):
    """A user with several connections (tabs, devices) gets the message on
    each of them, exactly once."""
    a, b = uid("a"), uid("b")

    async def go():
        async with connect(server, a) as wa:
            conns = [await connect(server, b) for _ in range(4)]
            try:
                for i in range(3):
                    await wa.send(json.dumps({"type": "send_message", "target_user": b,
                                              "content": {"n": i}}))
                for ws in conns:
                    got = [content_of(await recv(ws), "message", a) for _ in range(3)]
                    assert got == ['{"n": 0}', '{"n": 1}', '{"n": 2}'], got
                for ws in conns:
                    await barrier(ws)
                    await assert_silent(ws, 0.05)
            finally:
                await asyncio.gather(*(ws.close() for ws in conns))
    run(go())


def test_send_message_to_self_reaches_all_own_connections(server):
    """Target = sender's own user: every connection of that user, the
    sending one included, receives it."""
    a = uid("self")

    async def go():
        async with connect(server, a) as w1, connect(server, a) as w2:
            await w1.send(json.dumps({"type": "send_message", "target_user": a, "content": 7}))
            assert content_of(await recv(w1), "message", a) == "7"
            assert content_of(await recv(w2), "message", a) == "7"
    run(go())


def test_connection_closed_stops_receiving_but_others_of_user_still_do(server):
    """When one of a user's connections closes, the others keep receiving."""
    a, b = uid("a"), uid("b")

    async def go():
        async with connect(server, a) as wa, connect(server, b) as keep:
            gone = await connect(server, b)
            await gone.close()
            await wa.send(json.dumps({"type": "send_message", "target_user": b, "content": 1}))
            assert content_of(await recv(keep), "message", a) == "1"
    run(go())


def test_messages_between_one_pair_arrive_in_order(server):
    """Messages from one connection to one target arrive in the order sent."""
    a, b = uid("a"), uid("b")

    async def go():
        async with connect(server, a) as wa, connect(server, b) as wb:
            for i in range(200):
                await wa.send('{"type":"send_message","target_user":"%s","content":%d}' % (b, i))
            got = [content_of(await recv(wb), "message", a) for _ in range(200)]
            assert got == [str(i) for i in range(200)]
    run(go())


CONTENTS = [
    "1.50e3",
    "-0",
    "0.1000",
    "1E+2",
    "12345678901234567890123456789",
    "1e400",
    "true", "false", "null",
    '""',
    "[]", "{}",
    '{"a":[1,2,{"b":null,"c":[true,false]}],"d":{"e":{"f":"g"}}}',
    '{ "spaced" : [ 1 , 2 ] ,\t"x" :\n"y" }',
    '"h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001F600"',
    r'"quote \" backslash \\ slash \/ nl \n tab \t uni \u00e9 pair \ud83d\ude00 ctl \u0001"',
    '"' + "x" * 3000 + '"',
    "[" * 64 + "]" * 64,
    '{"type":"send_message","target_user":"evil","content":"nested protocol-looking"}',
]


@pytest.mark.parametrize("content", CONTENTS, ids=range(len(CONTENTS)))
def test_content_passes_through_byte_for_byte(server, content):
    """`content` is any JSON value and arrives exactly as written (no
    re-serialisation): numbers keep their spelling, nested values, non-ASCII
    text and escapes are unchanged."""
    a, b = uid("a"), uid("b")
    text = '{"type":"send_message","target_user":"%s","content":%s}' % (b, content)

    async def go():
        async with connect(server, a) as wa, connect(server, b) as wb:
            await wa.send(text)
            to_b = asyncio.ensure_future(recv(wb))
            to_a = asyncio.ensure_future(recv(wa))
            done, _ = await asyncio.wait({to_a, to_b}, timeout=T, return_when=asyncio.FIRST_COMPLETED)
            for t in (to_a, to_b):
                if t not in done:
                    t.cancel()
            await asyncio.gather(to_a, to_b, return_exceptions=True)
            if to_a in done:
                raise AssertionError(f"sender got {to_a.result()} for valid content {content}")
            assert to_b in done, "target got nothing"
            raw = to_b.result()
            assert content_of(raw, "message", a) == content, raw
            # and in a broadcast
            await wa.send('{"type":"broadcast","content":%s}' % content)
            for ws in (wa, wb):
                while True:  # other tests' broadcasts may interleave on a shared server
                    raw = await recv(ws)
                    if json.loads(raw).get("from") == a:
                        break
                assert content_of(raw, "broadcast", a) == content, raw
    run(go())


def test_field_order_and_whitespace_do_not_matter(server):
    """The request fields may come in any order, with any JSON whitespace."""
    a, b = uid("a"), uid("b")

    async def go():
        async with connect(server, a) as wa, connect(server, b) as wb:
            await wa.send('{ "content" : 1.50e3 ,\n "target_user":"%s", "type" : "send_message" }' % b)
            assert content_of(await recv(wb), "message", a) == "1.50e3"
    run(go())


def test_user_id_is_percent_decoded_and_json_escaped(server):
    """user_id is URL-decoded from the query; "from" is a correctly escaped
    JSON string even when the id has quotes or non-ASCII."""
    weird = 'we"ird \\ id \u00e9' + uuid.uuid4().hex[:6]
    from urllib.parse import quote

    async def go():
        async with websockets.connect(server.url() + "?user_id=" + quote(weird, safe=""),
                                      open_timeout=T, ping_interval=None, compression=None) as ww, \
                connect(server, uid("b")) as wb:
            await ww.send(json.dumps({"type": "send_message", "target_user": weird, "content": 1}))
            raw = await recv(ww)
            assert json.loads(raw) == {"type": "message", "from": weird, "content": 1}, raw
            await ww.send('{"type":"broadcast","content":2}')
            raw = await recv(ww)
            assert json.loads(raw) == {"type": "broadcast", "from": weird, "content": 2}, raw
            await wb.send(json.dumps({"type": "send_message", "target_user": weird, "content": 3}))
            raw = await recv(ww)
            assert json.loads(raw)["content"] == 3, raw
    run(go())


# --- broadcast -------------------------------------------------------------------
def test_broadcast_reaches_every_client_including_sender_once(server):
    """broadcast: every connected client, the sender included, gets
    {"type":"broadcast","from":U,"content":X} exactly once (a user with two
    connections gets it on both)."""
    a = uid("bc")
    others = [uid("o") for _ in range(5)]
    marker = uuid.uuid4().hex

    async def go():
        clients = [await connect(server, u) for u in [a] + others + [others[0]]]
        try:
            await clients[0].send('{"type":"broadcast","content":{"m":"%s"}}' % marker)
            for ws in clients:
                while True:  # skip broadcasts of other tests on the shared server
                    raw = await recv(ws)
                    if marker in raw:
                        assert content_of(raw, "broadcast", a) == '{"m":"%s"}' % marker
                        break
            # Exactly once: after a barrier per connection, no second copy.
            for ws in clients:
                seen = await drain_until_pong(ws)
                dup = [r for r in seen if marker in r]
                assert not dup, f"broadcast delivered twice: {dup}"
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))
    run(go())


async def drain_until_pong(ws):
    await ws.send('{"type":"ping"}')
    seen = []
    while True:
        raw = await recv(ws)
        if json.loads(raw) == {"type": "pong"}:
            return seen
        seen.append(raw)


# --- errors ------------------------------------------------------------------------
INVALID_JSON = ["not json", "", "{", '{"type":"ping"', "{'type':'ping'}", '{"type":"ping"} trailing',
                '{"type":"ping",}', "\"just a string", "nul", "[1,2", '{"type":"ping"}{"type":"ping"}']


@pytest.mark.parametrize("text", INVALID_JSON, ids=range(len(INVALID_JSON)))
def test_not_json_gets_invalid_json_error(server, text):
    """Not JSON -> {"type":"error","message":"Invalid JSON"}; the connection
    stays usable."""
    async def go():
        async with connect(server, uid()) as ws:
            await ws.send(text)
            raw, msg = await recv_json(ws)
            assert msg == {"type": "error", "message": "Invalid JSON"}, raw
            await barrier(ws)
    run(go())


ERRORS = [
    # (message, words of which at least one must appear in the error text)
    ('{"type":"nope"}', ["type", "nope"]),
    ('{"type":""}', ["type"]),
    ('{"content":1}', ["type"]),
    ('{}', ["type"]),
    ('{"type":5}', ["type"]),
    ('{"type":null}', ["type"]),
    ('{"type":"send_message","content":1}', ["target_user"]),
    ('{"type":"send_message","target_user":"x"}', ["content"]),
    ('{"type":"send_message"}', ["target_user", "content"]),
    ('{"type":"send_message","target_user":5,"content":1}', ["target_user"]),
    ('{"type":"broadcast"}', ["content"]),
    ('{"type":"PING"}', ["type", "PING"]),
]


@pytest.mark.parametrize("text,words", ERRORS, ids=range(len(ERRORS)))
def test_unknown_type_or_missing_field_gets_error_naming_it(server, text, words):
    """JSON with an unknown type or a missing field -> {"type":"error",
    "message":"..."} naming what is wrong; the connection stays usable."""
    async def go():
        async with connect(server, uid()) as ws:
            await ws.send(text)
            raw, msg = await recv_json(ws)
            assert msg.get("type") == "error", raw
            m = msg.get("message")
            assert isinstance(m, str) and m, raw
            assert any(w.lower() in m.lower() for w in words), f"{raw} does not name any of {words}"
            await barrier(ws)
    run(go())


@pytest.mark.parametrize("text", ["[1,2]", "5", '"ping"', "null", "true"])
def test_json_that_is_not_an_object_gets_error(server, text):
    """A JSON value that is not an object is not a message: error reply."""
    async def go():
        async with connect(server, uid()) as ws:
            await ws.send(text)
            raw, msg = await recv_json(ws)
            assert msg.get("type") == "error" and msg.get("message"), raw
            await barrier(ws)
    run(go())


# --- identity, binary ---------------------------------------------------------------
@pytest.mark.parametrize("path", ["/ws", "/ws?user_id=", "/ws?other=1", "/ws?user_id"])
def test_missing_user_id_upgrades_then_closes_4001(server, path):
    """Missing identity: the upgrade completes (101), then close 4001."""
    async def go():
        async with websockets.connect(f"ws://{server.host}:{server.port}{path}", open_timeout=T,
                                      close_timeout=T, ping_interval=None, compression=None) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), T)
            await asyncio.wait_for(ws.wait_closed(), T)
            assert ws.close_code == 4001, (ws.close_code, ws.close_reason)
    run(go())


def test_binary_message_closes_1003(server):
    """A binary message is not part of v1: close 1003 (RFC 6455 7.4.1)."""
    async def go():
        async with connect(server, uid()) as ws:
            await ws.send(b"\x00\x01binary")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), T)
            assert ws.close_code == 1003, (ws.close_code, ws.close_reason)
    run(go())


def test_client_close_is_echoed(server):
    """A close from the client is answered with the same code."""
    async def go():
        ws = await connect(server, uid())
        await asyncio.wait_for(ws.close(code=4321, reason="bye"), T)
        assert ws.close_code == 4321
    run(go())


# --- undeliverable ------------------------------------------------------------------
def test_message_to_absent_user_is_dropped_and_counted(server):
    """A message to a user with no connection is dropped (no error reply)
    and counted in /metrics."""
    a = uid("a")

    async def go():
        before = server.metrics().get(M.undeliverable)
        async with connect(server, a) as wa:
            for _ in range(3):
                await wa.send(json.dumps({"type": "send_message", "target_user": uid("nobody"),
                                          "content": 1}))
            await barrier(wa)  # also proves no error reply came before the pong
            server.wait_for(lambda: server.metrics().get(M.undeliverable) >= before + 3,
                            what="undeliverable counter +3")
    run(go())


def test_message_counters_by_type(server):
    """/metrics counts messages in and out by type."""
    a, b = uid("a"), uid("b")

    async def go():
        m0 = server.metrics()
        async with connect(server, a) as wa, connect(server, b) as wb:
            await wa.send(json.dumps({"type": "send_message", "target_user": b, "content": 1}))
            await recv(wb)
            await barrier(wa)
        m1 = server.metrics()
        assert m1.get(M.messages_in, type="send_message") >= m0.get_or0(M.messages_in, type="send_message") + 1
        assert m1.get(M.messages_in, type="ping") >= m0.get_or0(M.messages_in, type="ping") + 1
        assert m1.get(M.messages_out, type="message") >= m0.get_or0(M.messages_out, type="message") + 1
        assert m1.get(M.messages_out, type="pong") >= m0.get_or0(M.messages_out, type="pong") + 1
        assert m1.get(M.bytes_in) > m0.get(M.bytes_in)
        assert m1.get(M.bytes_out) > m0.get(M.bytes_out)
        assert m1.get(M.accepted) >= m0.get(M.accepted) + 2
    run(go())


# --- plain HTTP ---------------------------------------------------------------------
def test_health(start_server):
    """GET /health -> {"status":"ok","node_id":...,"connections":N,"transport":...,
    "transport_connected":...}; N follows the open WebSocket connections."""
    s = start_server("--node-id", "test-node-7")
    st, headers, body = s.http_get("/health")
    assert st == 200, body
    assert "json" in headers.get("content-type", ""), headers
    h = json.loads(body)
    assert h == {"status": "ok", "node_id": "test-node-7", "connections": 0,
                 "transport": "local", "transport_connected": True}, h

    async def go():
        conns = [await connect(s, uid()) for _ in range(3)]
        s.wait_for(lambda: s.health()["connections"] == 3, what="health connections == 3")
        await conns[0].close()
        s.wait_for(lambda: s.health()["connections"] == 2, what="health connections == 2")
        await asyncio.gather(*(c.close() for c in conns[1:]))
        s.wait_for(lambda: s.health()["connections"] == 0, what="health connections == 0")
    run(go())


def test_node_id_from_environment(start_server):
    """NODE_ID sets the node id; the flag beats the variable."""
    s = start_server(env={"NODE_ID": "from-env"})
    assert s.health()["node_id"] == "from-env"
    assert "node_id=from-env" in s.listen_line, s.listen_line
    s2 = start_server("--node-id", "from-flag", env={"NODE_ID": "from-env"})
    assert s2.health()["node_id"] == "from-flag"


def test_first_log_line(server):
    """The first stderr line names address, node id, transport, io_uring."""
    line = server.first_line
    assert f"listening on 127.0.0.1:{server.port}" in line, line
    assert "node_id=" in line and "transport=local" in line and "io_uring=" in line, line


def test_metrics_exposition(server):
    """GET /metrics is Prometheus text with the counters the issue lists."""
    st, headers, body = server.http_get("/metrics")
    assert st == 200
    assert headers.get("content-type", "").startswith("text/plain"), headers
    m = server.metrics()  # parses every line or fails
    for name in (M.connections_open, M.accepted, M.rejected, M.messages_in, M.messages_out,
                 M.bytes_in, M.bytes_out, M.slow_consumer, M.heartbeat_timeouts, M.undeliverable):
        assert name in m.names() or name in m.types, f"{name} missing from /metrics:\n{m.text}"
    assert m.types.get(M.connections_open) == "gauge", m.types
    for name in (M.accepted, M.slow_consumer, M.heartbeat_timeouts, M.bytes_in, M.bytes_out):
        assert m.types.get(name) == "counter", (name, m.types.get(name))


@pytest.mark.parametrize("path", ["/", "/nope", "/healthz", "/health/x", "/metricsx", "/wsx"])
def test_other_paths_404(server, path):
    """Any other path -> 404."""
    st, _, _ = server.http_get(path)
    assert st == 404, (path, st)


def test_head_of_health_and_query_string(server):
    """/health?x=1 is still /health (the query is not part of the path)."""
    st, _, body = server.http_get("/health?x=1")
    assert st == 200 and json.loads(body)["status"] == "ok"


# --- the upgrade checks (RFC 6455 4.2.1) ----------------------------------------------
def upgrade_headers(**over):
    h = {"Upgrade": "websocket", "Connection": "Upgrade",
         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    for k, v in over.items():
        k = k.replace("_", "-")
        if v is None:
            h.pop(k, None)
        else:
            h[k] = v
    return h


def raw_upgrade(server, method="GET", path="/ws?user_id=h", **over):
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{k}: {v}" for k, v in upgrade_headers(**over).items()]
    return http_request(server.host, server.port, method, path,
                        raw=("\r\n".join(lines) + "\r\n\r\n").encode())


def test_valid_upgrade_101_with_accept(server):
    """RFC 6455 4.2.2: 101 with Sec-WebSocket-Accept = base64(SHA-1(key+GUID))."""
    st, h, _ = raw_upgrade(server)
    assert st == 101
    assert h.get("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", h
    assert h.get("upgrade", "").lower() == "websocket"
    assert "upgrade" in h.get("connection", "").lower()


@pytest.mark.parametrize("over", [
    {"Connection": "keep-alive, Upgrade"},
    {"Connection": "upgrade"},
    {"Upgrade": "WebSocket"},
    {"Origin": "http://example.com"},
], ids=["conn-token-list", "conn-lower", "upgrade-case", "origin"])
def test_upgrade_variants_accepted(server, over):
    """RFC 6455 4.2.1: Connection is a token list, header values are
    case-insensitive."""
    st, _, body = raw_upgrade(server, **over)
    assert st == 101, body


def test_post_is_405(server):
    """RFC 6455 4.2.1 (1): the method must be GET -> 405 otherwise."""
    st, _, _ = raw_upgrade(server, method="POST")
    assert st == 405


@pytest.mark.parametrize("over", [
    {"Upgrade": None}, {"Upgrade": "h2c"}, {"Connection": None}, {"Connection": "keep-alive"},
    {"Sec_WebSocket_Key": None}, {"Sec_WebSocket_Key": "short"},
    {"Sec_WebSocket_Key": "dGhlIHNhbXBsZSBub25jZQ"},           # 16 bytes but no padding
    {"Sec_WebSocket_Key": "dGhlIHNhbXBsZSBub25jZXg="},         # 17 bytes
    {"Sec_WebSocket_Key": "!!!!!!!!!!!!!!!!!!!!!!=="},
], ids=["no-upgrade", "upgrade-h2c", "no-connection", "connection-no-upgrade", "no-key",
        "short-key", "unpadded-key", "17-byte-key", "non-base64-key"])
def test_bad_upgrade_400(server, over):
    """RFC 6455 4.2.1: missing/invalid Upgrade, Connection or
    Sec-WebSocket-Key -> 400."""
    st, _, body = raw_upgrade(server, **over)
    assert st == 400, (st, body)


@pytest.mark.parametrize("version", ["8", "12", "14", None])
def test_bad_version_426(server, version):
    """RFC 6455 4.2.2 / 4.4: a version other than 13 -> 426 with
    Sec-WebSocket-Version: 13 (a missing version may be 400 or 426)."""
    st, h, _ = raw_upgrade(server, Sec_WebSocket_Version=version)
    if version is None:
        assert st in (400, 426), st
        return
    assert st == 426, st
    assert h.get("sec-websocket-version") == "13", h


def test_rejected_upgrades_counted(server):
    """Rejected upgrades appear in /metrics by reason."""
    m0 = server.metrics()
    raw_upgrade(server, Sec_WebSocket_Key=None)
    raw_upgrade(server, Sec_WebSocket_Version="8")
    server.wait_for(lambda: server.metrics().get(M.rejected, reason=M.R_BAD_REQUEST)
                    >= m0.get_or0(M.rejected, reason=M.R_BAD_REQUEST) + 1, what="bad_request counted")
    server.wait_for(lambda: server.metrics().get(M.rejected, reason=M.R_BAD_VERSION)
                    >= m0.get_or0(M.rejected, reason=M.R_BAD_VERSION) + 1, what="bad_version counted")


def test_websockets_client_rejected_status(server):
    """The independent client sees the HTTP status of a refused upgrade."""
    async def go():
        with pytest.raises(InvalidStatusCode) as e:
            await websockets.connect(f"ws://{server.host}:{server.port}/nope", open_timeout=T)
        assert e.value.status_code == 404
    run(go())


def test_raw_and_library_clients_interoperate(server):
    """A raw-socket client and a websockets client exchange messages."""
    a, b = uid("raw"), uid("lib")

    async def go():
        r = rawws.connect(server, a)
        try:
            async with connect(server, b) as wb:
                r.send_text(json.dumps({"type": "send_message", "target_user": b, "content": [1]}))
                assert content_of(await recv(wb), "message", a) == "[1]"
                await wb.send(json.dumps({"type": "send_message", "target_user": a, "content": [2]}))
                raw = await asyncio.get_running_loop().run_in_executor(None, r.recv_text, T)
                assert content_of(raw.decode(), "message", b) == "[2]"
        finally:
            r.close()
    run(go())


# --- identity edge cases ---------------------------------------------------------------
def test_user_id_too_long_closes_4001(start_server):
    """--max-user-id-bytes: a longer (decoded) user_id is a missing identity:
    the upgrade completes, then close 4001."""
    s = start_server("--max-user-id-bytes", "16")

    async def go():
        ok = await websockets.connect(s.url("x" * 16), open_timeout=T, ping_interval=None)
        await barrier(ok)
        await ok.close()
        async with websockets.connect(s.url("x" * 17), open_timeout=T, ping_interval=None) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), T)
            assert ws.close_code == 4001
        # percent-encoded: 6 characters encode to 18 bytes of UTF-8 ("\u00e9" is 2 bytes)
        async with websockets.connect(s.url("%C3%A9" * 9), open_timeout=T, ping_interval=None) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), T)
            assert ws.close_code == 4001
    run(go())


def test_user_id_control_characters_escaped(server):
    """A user_id with control characters, quotes and backslashes comes out
    as a correctly escaped JSON string in "from"."""
    async def go():
        async with websockets.connect(server.url() + "?user_id=a%00%01%1f%7f%22%5Cb", open_timeout=T,
                                      ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "send_message", "target_user": 'a\x00\x01\x1f\x7f"\\b',
                                      "content": 1}))
            raw = await recv(ws)
            assert json.loads(raw) == {"type": "message", "from": 'a\x00\x01\x1f\x7f"\\b', "content": 1}
    run(go())


@pytest.mark.parametrize("query", ["%FF%FE", "%E9t%E9", "%ED%A0%80", "%C0%AF"],
                         ids=["ff-fe", "latin1", "surrogate", "overlong"])
def test_user_id_not_utf8_never_yields_invalid_text_frames(server, query):
    """RFC 6455 5.6/8.1: the server's text frames must be valid UTF-8. A
    user_id whose percent-decoding is not UTF-8 must be refused (4001 or an
    HTTP 400) or made valid; it must never appear raw in "from" — otherwise
    every client that receives that user's broadcast is failed by its own
    library with 1007."""
    bystander_user = uid("by")

    async def go():
        async with connect(server, bystander_user) as bystander:
            try:
                bad = await websockets.connect(server.url() + "?user_id=" + query, open_timeout=T,
                                               ping_interval=None, compression=None)
            except InvalidStatusCode as e:
                assert e.status_code == 400
                return
            try:
                try:
                    # The server may already have closed it (4001) by now.
                    await bad.send('{"type":"broadcast","content":"from-bad-%s"}' % bystander_user)
                    raw = await asyncio.wait_for(bad.recv(), T)
                except ConnectionClosed as e:
                    sent = getattr(e, "sent", None)
                    assert not (sent and sent.code == 1007), \
                        "the server sent a text frame that is not UTF-8 (the client failed it with 1007)"
                    assert bad.close_code == 4001, (bad.close_code, bad.close_reason)
                    return
                assert isinstance(raw, str)  # websockets has validated UTF-8
                # the bystander receives it as valid UTF-8, and stays connected
                while True:
                    got = await recv(bystander)
                    if ("from-bad-" + bystander_user) in got:
                        break
                await barrier(bystander)
            finally:
                await bad.close()
    run(go())
