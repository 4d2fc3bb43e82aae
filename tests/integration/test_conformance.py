"""WebSocket conformance, following the case groups of the Autobahn test suite
that apply to a server without compression (no permessage-deflate, so the
12.x/13.x groups do not apply):

  1.x framing   2.x ping/pong   3.x reserved bits   4.x opcodes
  5.x fragmentation   6.x UTF-8   7.x close handling   9.x limits

Driven by the raw-socket client (rawws.py) so any frame can be sent. Our
server has no echo: a text message is answered through the protocol
(`{"type":"ping"}` -> pong, or send_message to one's own user). A binary
message is not part of protocol v1 and is closed with 1003.

Each test's docstring cites the RFC 6455 section it checks.
"""
import json
import socket
import uuid

import pytest

import rawws
from rawws import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, encode_frame
from wsgate_fixture import M

T = 5.0
MAX = 4096  # --max-message-bytes of the server in this module

PING = b'{"type":"ping"}'
PONG = {"type": "pong"}


@pytest.fixture(scope="module")
def server():
    from wsgate_fixture import WsgateServer
    s = WsgateServer("--max-connections-per-ip", "1000000", "--max-message-bytes", str(MAX),
                     "--close-timeout-ms", "2000").start()
    yield s
    crashed = s.proc.poll() is not None
    code = s.stop()
    if crashed:
        pytest.fail(f"wsgate died during the conformance tests (exit {code}):\n{s.stderr_text()}")


@pytest.fixture
def ws(server):
    user = "c-" + uuid.uuid4().hex[:10]
    c = rawws.connect(server, user, timeout=T)
    c.user = user
    yield c
    c.close()


def self_message(user, content_json):
    return ('{"type":"send_message","target_user":"%s","content":%s}' % (user, content_json)).encode()


def expect_json(ws, expected=None):
    f = ws.recv_data(T)
    assert f.opcode == OP_TEXT, f
    assert f.fin and f.rsv == 0 and not f.masked, f"RFC 6455 5.1: server frames unmasked, {f}"
    msg = json.loads(f.payload)
    if expected is not None:
        assert msg == expected, f.payload
    return msg


def expect_pong_message(ws):
    """The connection still works: protocol ping -> pong."""
    ws.send_text(PING)
    expect_json(ws, PONG)


def expect_fail(ws, codes):
    """The server fails the connection: a close frame with one of codes, then
    the TCP connection ends."""
    if isinstance(codes, int):
        codes = (codes,)
    f = ws.expect_close(T)
    assert f.close_code in codes, f"expected close {codes}, got {f.close_code} ({f.close_reason!r})"
    return f


def text_of_size(user, n):
    """A send_message to self whose whole text payload is exactly n bytes."""
    base = self_message(user, '""')
    pad = n - len(base)
    assert pad >= 0, n
    return self_message(user, '"' + "x" * pad + '"')


# --- 1.x framing ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [125, 126, 127, 128, 1000, MAX - 1, MAX])
def test_1_1_text_payload_lengths(ws, n):
    """RFC 6455 5.2: payload length in 7 bits (<=125) and 16 bits (126 marker)
    — text messages of each size are received and answered."""
    payload = text_of_size(ws.user, n)
    assert len(payload) == n
    ws.send_text(payload)
    msg = expect_json(ws)
    assert msg["type"] == "message" and msg["from"] == ws.user
    assert len(msg["content"]) == n - len(self_message(ws.user, '""'))


def test_1_1_empty_text_message(ws):
    """RFC 6455 5.6: a zero-length text message is a valid frame; it is not
    JSON, so the protocol answers Invalid JSON."""
    ws.send_text(b"")
    expect_json(ws, {"type": "error", "message": "Invalid JSON"})


@pytest.mark.parametrize("n", [125, 126, 127, 65535, 65536])
def test_1_1_length_encodings_for_large_messages_default_limit(start_server, n):
    """RFC 6455 5.2: 16-bit (126..65535) and 64-bit (>= 65536) extended
    payload lengths, with the default 64 KiB message limit: a message of
    65536 bytes is still accepted."""
    s = start_server()
    ws = rawws.connect(s, "big")
    payload = text_of_size("big", n)
    ws.send_text(payload)
    msg = expect_json(ws)
    assert msg["type"] == "message" and len(msg["content"]) == n - len(self_message("big", '""'))
    ws.close()


def test_1_1_frame_sent_byte_by_byte(ws):
    """RFC 6455 5.2: frame boundaries are independent of TCP segments; a frame
    arriving one byte at a time is reassembled (Autobahn 1.1.7/1.2.7)."""
    data = encode_frame(OP_TEXT, self_message(ws.user, '"chopped"'))
    for i in range(len(data)):
        ws.sendall(data[i:i + 1])
    assert expect_json(ws)["content"] == "chopped"


def test_1_1_many_frames_in_one_segment(ws):
    """RFC 6455 5.2: several frames in one TCP write are each processed."""
    ws.sendall(b"".join(encode_frame(OP_TEXT, PING) for _ in range(50)))
    for _ in range(50):
        expect_json(ws, PONG)


@pytest.mark.parametrize("n", [0, 125, 126, 65535])
def test_1_2_binary_message_closes_1003(ws, n):
    """RFC 6455 7.4.1 (1003: data type it cannot accept): protocol v1 has no
    binary messages, so any binary message closes 1003."""
    ws.send_frame(OP_BINARY, b"\xfe" * n)
    expect_fail(ws, 1003 if n <= MAX else (1003, 1009))


def test_1_x_unmasked_client_frame_closes_1002(ws):
    """RFC 6455 5.1: a server MUST close the connection upon receiving an
    unmasked frame (1002)."""
    ws.send_frame(OP_TEXT, PING, mask=False)
    expect_fail(ws, 1002)


def test_1_x_unmasked_control_frame_closes_1002(ws):
    """RFC 6455 5.1: client frames, control frames included, must be masked."""
    ws.send_frame(OP_PING, b"x", mask=False)
    expect_fail(ws, 1002)


def test_1_x_all_zero_mask_is_fine(ws):
    """RFC 6455 5.3: a masking key of zeros is a valid (if weak) key."""
    ws.send_frame(OP_TEXT, PING, mask_key=b"\0\0\0\0")
    expect_json(ws, PONG)


def test_1_x_non_minimal_length_encoding(ws):
    """RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the
    length" — a 16-bit length for a short payload is a protocol error (1002),
    or, leniently, accepted; it must never be misparsed."""
    key = b"abcd"
    payload = PING
    hdr = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    ws.sendall(hdr + key + rawws.mask_bytes(payload, key))
    f = ws.recv_data(T)
    if f.opcode == OP_CLOSE:
        assert f.close_code == 1002, f
    else:
        assert json.loads(f.payload) == PONG


def test_1_x_64bit_length_with_high_bit_set_closes(ws):
    """RFC 6455 5.2: the most significant bit of a 64-bit length MUST be 0;
    (and such a length is above any message limit): close 1002 or 1009."""
    ws.sendall(bytes([0x81, 0x80 | 127]) + (1 << 63).to_bytes(8, "big") + b"abcd" + b"x" * 16)
    expect_fail(ws, (1002, 1009))


# --- 2.x ping/pong --------------------------------------------------------------------
@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(256))[:125], b"\x00\xff\xfe\x80" * 31],
                         ids=["empty", "text", "binary-125", "bytes-124"])
def test_2_ping_answered_with_same_payload(ws, payload):
    """RFC 6455 5.5.2/5.5.3: a Ping is answered by a Pong with identical
    application data (up to 125 bytes, any bytes)."""
    ws.send_frame(OP_PING, payload)
    f = ws.recv_frame(T)
    while f.opcode == OP_PING:  # a heartbeat ping of the server; answer and skip
        ws.send_frame(OP_PONG, f.payload)
        f = ws.recv_frame(T)
    assert f.opcode == OP_PONG, f
    assert f.payload == payload
    assert f.fin and not f.masked


def test_2_ping_126_bytes_closes_1002(ws):
    """RFC 6455 5.5: control frames have a payload of 125 bytes or less."""
    ws.send_frame(OP_PING, b"x" * 126)
    expect_fail(ws, 1002)


def test_2_unsolicited_pong_ignored(ws):
    """RFC 6455 5.5.3: an unsolicited Pong may be sent; no response expected."""
    ws.send_frame(OP_PONG, b"unsolicited")
    ws.send_frame(OP_PONG, b"")
    expect_pong_message(ws)


def test_2_pong_with_payload_then_ping(ws):
    """RFC 6455 5.5.3: an unsolicited Pong followed by a Ping: only the Ping
    is answered."""
    ws.send_frame(OP_PONG, b"p1")
    ws.send_frame(OP_PING, b"p2")
    f = ws.recv_frame(T)
    while f.opcode == OP_PING:
        f = ws.recv_frame(T)
    assert f.opcode == OP_PONG and f.payload == b"p2", f


def test_2_ten_pings_answered_in_order_latest_last(ws):
    """RFC 6455 5.5.2/5.5.3: pings are answered in order, and of pings that
    arrive before their pongs could be sent only the latest needs one: ten
    pings in one write get pongs in order, the last carrying the tenth's
    payload (the server answers only the latest unanswered ping, so a ping
    flood costs one pong; Autobahn 2.10 asks for all ten, non-strictly)."""
    ws.sendall(b"".join(encode_frame(OP_PING, b"ping-%d" % i) for i in range(10)))
    got = []
    while not got or got[-1] != b"ping-9":
        f = ws.recv_frame(T)
        if f.opcode == OP_PONG:
            got.append(f.payload)
        else:
            assert f.opcode == OP_PING, f
    order = [int(p.split(b"-")[1]) for p in got]
    assert order == sorted(set(order)), got


def test_2_fragmented_ping_closes_1002(ws):
    """RFC 6455 5.5: control frames MUST NOT be fragmented."""
    ws.send_frame(OP_PING, b"frag", fin=False)
    ws.send_frame(OP_CONT, b"ment", fin=True)
    expect_fail(ws, 1002)


def test_2_fragmented_pong_closes_1002(ws):
    """RFC 6455 5.5: control frames MUST NOT be fragmented (pong too)."""
    ws.send_frame(OP_PONG, b"frag", fin=False)
    expect_fail(ws, 1002)


def test_2_ping_answered_promptly_while_data_flows(ws):
    """RFC 6455 5.5.2: a Pong is sent "as soon as is practical": a ping
    between data messages is answered among their replies."""
    ws.sendall(encode_frame(OP_TEXT, PING) + encode_frame(OP_PING, b"mid") + encode_frame(OP_TEXT, PING))
    seen = []
    while len(seen) < 3:
        f = ws.recv_frame(T)
        if f.opcode == OP_PING:
            continue
        seen.append((f.opcode, f.payload))
    assert (OP_PONG, b"mid") in seen, seen
    texts = [json.loads(p) for o, p in seen if o == OP_TEXT]
    assert texts == [PONG, PONG], seen


# --- 3.x reserved bits ------------------------------------------------------------------
@pytest.mark.parametrize("rsv", [1, 2, 3, 4, 5, 6, 7])
def test_3_rsv_bits_on_text_close_1002(ws, rsv):
    """RFC 6455 5.2: RSV1-3 MUST be 0 unless an extension defines them (none
    negotiated) -> fail the connection (1002)."""
    ws.send_frame(OP_TEXT, PING, rsv=rsv)
    expect_fail(ws, 1002)


def test_3_rsv_bits_on_ping_close_1002(ws):
    """RFC 6455 5.2: reserved bits on a control frame -> 1002."""
    ws.send_frame(OP_PING, b"x", rsv=4)
    expect_fail(ws, 1002)


def test_3_rsv_on_binary_close_1002(ws):
    """RFC 6455 5.2: reserved bits are checked before the message type
    (Autobahn 3.6): 1002, or 1003 if the binary is judged first."""
    ws.send_frame(OP_BINARY, b"\x00", rsv=2)
    expect_fail(ws, (1002, 1003))


def test_3_rsv_after_valid_message(ws):
    """RFC 6455 5.2 (Autobahn 3.2): a valid message is answered, the next
    frame with RSV set fails the connection."""
    ws.sendall(encode_frame(OP_TEXT, PING) + encode_frame(OP_TEXT, PING, rsv=2))
    f = ws.recv_data(T)
    if f.opcode == OP_TEXT:
        assert json.loads(f.payload) == PONG
        expect_fail(ws, 1002)
    else:
        assert f.close_code == 1002, f


# --- 4.x opcodes -------------------------------------------------------------------------
@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7])
def test_4_1_reserved_non_control_opcode_closes_1002(ws, opcode):
    """RFC 6455 5.2: opcodes 0x3-0x7 are reserved for further non-control
    frames -> fail the connection (1002)."""
    ws.send_frame(opcode, b"reserved")
    expect_fail(ws, 1002)


@pytest.mark.parametrize("opcode", [0xB, 0xC, 0xD, 0xE, 0xF])
def test_4_2_reserved_control_opcode_closes_1002(ws, opcode):
    """RFC 6455 5.2: opcodes 0xB-0xF are reserved for further control frames
    -> fail the connection (1002)."""
    ws.send_frame(opcode, b"")
    expect_fail(ws, 1002)


def test_4_reserved_opcode_after_valid_message(ws):
    """RFC 6455 5.2 (Autobahn 4.1.3): valid message answered, then the
    reserved opcode fails the connection."""
    ws.sendall(encode_frame(OP_TEXT, PING) + encode_frame(5, b"x") + encode_frame(OP_PING, b"late"))
    f = ws.recv_data(T)
    if f.opcode == OP_TEXT:
        assert json.loads(f.payload) == PONG
        f = ws.recv_data(T)
    assert f.opcode == OP_CLOSE and f.close_code == 1002, f


# --- 5.x fragmentation ----------------------------------------------------------------------
@pytest.mark.parametrize("parts", [2, 3, 10, 1000])
def test_5_text_in_fragments_reassembled(ws, parts):
    """RFC 6455 5.4: a fragmented text message (FIN=0 text, continuations,
    FIN=1) is delivered as one message."""
    msg = self_message(ws.user, '"' + "abcdefghij" * 120 + '"')
    step = max(1, -(-len(msg) // parts))
    pieces = [msg[i:i + step] for i in range(0, len(msg), step)]
    ws.send_fragments(OP_TEXT, pieces)
    assert expect_json(ws)["content"] == "abcdefghij" * 120


def test_5_empty_fragments(ws):
    """RFC 6455 5.4: fragments may be empty (Autobahn 5.18-ish: empty first,
    empty middle and empty final fragment)."""
    ws.send_fragments(OP_TEXT, [b"", PING[:5], b"", PING[5:], b""])
    expect_json(ws, PONG)


def test_5_ping_between_fragments_answered(ws):
    """RFC 6455 5.4: control frames MAY be injected in the middle of a
    fragmented message; the ping is answered and the message reassembled."""
    ws.send_frame(OP_TEXT, PING[:6], fin=False)
    ws.send_frame(OP_PING, b"between")
    f = ws.recv_frame(T)
    while f.opcode == OP_PING:
        f = ws.recv_frame(T)
    assert f.opcode == OP_PONG and f.payload == b"between", f
    ws.send_frame(OP_CONT, PING[6:], fin=True)
    expect_json(ws, PONG)


def test_5_pong_between_fragments_ignored_by_hand(ws):
    """RFC 6455 5.4/5.5.3: an unsolicited pong between fragments is ignored."""
    ws.sendall(encode_frame(OP_TEXT, PING[:3], fin=False) + encode_frame(OP_PONG, b"u")
               + encode_frame(OP_CONT, PING[3:], fin=True))
    expect_json(ws, PONG)


def test_5_continuation_without_start_closes_1002(ws):
    """RFC 6455 5.4: a continuation frame with no message in progress is a
    protocol error (1002)."""
    ws.send_frame(OP_CONT, PING, fin=True)
    expect_fail(ws, 1002)


def test_5_continuation_without_start_not_final_closes_1002(ws):
    """RFC 6455 5.4 (Autobahn 5.9/5.10): a non-final continuation with nothing
    to continue -> 1002."""
    ws.send_frame(OP_CONT, PING[:4], fin=False)
    ws.send_frame(OP_CONT, PING[4:], fin=True)
    expect_fail(ws, 1002)


def test_5_new_text_inside_fragmented_message_closes_1002(ws):
    """RFC 6455 5.4: fragments of one message must not be interleaved with
    another data frame: a new text frame before FIN -> 1002."""
    ws.send_frame(OP_TEXT, PING[:4], fin=False)
    ws.send_frame(OP_TEXT, PING, fin=True)
    expect_fail(ws, 1002)


def test_5_new_binary_inside_fragmented_message_closes(ws):
    """RFC 6455 5.4: a binary frame inside a fragmented text message -> 1002."""
    ws.send_frame(OP_TEXT, PING[:4], fin=False)
    ws.send_frame(OP_BINARY, b"\x00", fin=True)
    expect_fail(ws, 1002)


def test_5_fragmented_binary_closes_1003(ws):
    """RFC 6455 5.4/7.4.1: a fragmented binary message is still binary -> 1003
    (once it is known to be binary or once complete)."""
    ws.send_fragments(OP_BINARY, [b"ab", b"cd"])
    expect_fail(ws, 1003)


def test_5_fragmented_message_over_limit_closes_1009(ws):
    """RFC 6455 7.4.1 (1009: message too big to process): the limit applies to
    the reassembled message, not to each fragment."""
    piece = b"x" * (MAX // 4)
    ws.send_frame(OP_TEXT, b'"' + piece, fin=False)
    for _ in range(4):
        ws.send_frame(OP_CONT, piece, fin=False)
    try:
        ws.send_frame(OP_CONT, b'"', fin=True)
    except OSError:
        pass
    expect_fail(ws, 1009)


# --- 6.x UTF-8 ------------------------------------------------------------------------------
VALID_UTF8 = [
    "\u03ba\u1f79\u03c3\u03bc\u03b5",           # Autobahn 6.2: "kosme"
    "\u00e9", "\u20ac", "\U0001F600",            # 2, 3, 4 bytes
    "\u0080", "\u07ff", "\u0800", "\uffff", "\U00010000", "\U0010FFFF",  # boundaries
    "\ufeff\ufffe",                              # BOM, noncharacter: valid UTF-8
    "\u00c0\u00c1\u00f5\u00ff",                  # code points, correctly encoded
]


@pytest.mark.parametrize("s", VALID_UTF8, ids=range(len(VALID_UTF8)))
def test_6_valid_utf8_passes(ws, s):
    """RFC 6455 5.6 / 8.1: text is UTF-8; every valid sequence, boundary code
    points included, is accepted and passed through unchanged."""
    content = json.dumps(s, ensure_ascii=False)
    ws.send_text(self_message(ws.user, content))
    f = ws.recv_data(T)
    assert f.opcode == OP_TEXT, f
    assert f.payload.endswith(b'"content":' + content.encode() + b"}"), f.payload


@pytest.mark.parametrize("s", ["\u03ba\u1f79\u03c3\u03bc\u03b5", "\U0001F600\u20ac\u00e9"])
def test_6_valid_utf8_split_across_fragments_at_every_byte(ws, s):
    """RFC 6455 5.6/8.1: the UTF-8 check is on the reassembled message; a
    valid multibyte character split across fragments is fine (Autobahn 6.2.3/
    6.2.4: fragment boundaries inside code points)."""
    msg = self_message(ws.user, json.dumps(s, ensure_ascii=False))
    start = msg.index(b'"content":') + 11
    for cut in range(start, start + len(s.encode())):
        ws.send_fragments(OP_TEXT, [msg[:cut], msg[cut:]])
        assert expect_json(ws)["content"] == s


def test_6_valid_utf8_one_byte_per_fragment(ws):
    """RFC 6455 5.4/8.1: a message sent one byte per frame (Autobahn 6.2.4)."""
    msg = self_message(ws.user, json.dumps("\u03ba\u1f79\u03c3\u03bc\u03b5\U0001F600", ensure_ascii=False))
    ws.send_fragments(OP_TEXT, [msg[i:i + 1] for i in range(len(msg))])
    assert expect_json(ws)["content"] == "\u03ba\u1f79\u03c3\u03bc\u03b5\U0001F600"


INVALID_UTF8 = {
    "lone-continuation": b"\x80",
    "continuation-bf": b"\xbf",
    "ff": b"\xff",
    "fe": b"\xfe",
    "overlong-slash-2": b"\xc0\xaf",
    "overlong-slash-3": b"\xe0\x80\xaf",
    "overlong-slash-4": b"\xf0\x80\x80\xaf",
    "overlong-nul-2": b"\xc0\x80",
    "overlong-max-2": b"\xc1\xbf",
    "overlong-max-3": b"\xe0\x9f\xbf",
    "overlong-max-4": b"\xf0\x8f\xbf\xbf",
    "surrogate-high": b"\xed\xa0\x80",
    "surrogate-low": b"\xed\xbf\xbf",
    "surrogate-pair": b"\xed\xa0\x80\xed\xb0\x80",
    "above-10ffff": b"\xf4\x90\x80\x80",
    "f5": b"\xf5\x80\x80\x80",
    "5-byte": b"\xf8\x88\x80\x80\x80",
    "6-byte": b"\xfc\x84\x80\x80\x80\x80",
    "truncated-2-at-end": b"\xc3",
    "truncated-3-at-end": b"\xe2\x82",
    "truncated-4-at-end": b"\xf0\x9f\x98",
    "truncated-then-ascii": b"\xe2\x82x",
    "kosme-then-invalid": "\u03ba\u1f79\u03c3\u03bc\u03b5".encode() + b"\xed\xa0\x80edited",
}


@pytest.mark.parametrize("bad", list(INVALID_UTF8.values()), ids=list(INVALID_UTF8))
def test_6_invalid_utf8_closes_1007(ws, bad):
    """RFC 6455 8.1: an endpoint that receives a text message that is not
    valid UTF-8 MUST fail the connection (7.4.1: 1007)."""
    # Raw bytes inside a JSON string, and as the whole message: both 1007.
    ws.send_text(b'{"type":"broadcast","content":"' + bad + b'"}')
    expect_fail(ws, 1007)


@pytest.mark.parametrize("bad", [b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff",
                                 b"\xe2\x82", b"ok\xc3"],
                         ids=["overlong", "surrogate", "above-max", "ff", "truncated", "ascii-then-lead"])
def test_6_invalid_utf8_as_whole_message_closes_1007(ws, bad):
    """RFC 6455 8.1: the UTF-8 check comes before any JSON parsing: 1007, not
    an Invalid JSON reply."""
    ws.send_text(bad)
    expect_fail(ws, 1007)


def test_6_truncated_sequence_at_message_end_closes_1007(ws):
    """RFC 6455 8.1: a message that ends in the middle of a multibyte
    sequence is invalid, even when every fragment ended "cleanly"."""
    ws.send_fragments(OP_TEXT, [b'{"type":"ping","x":"', b'"}\xe2\x82'])
    expect_fail(ws, 1007)


@pytest.mark.parametrize("first,second", [
    (b'{"type":"ping","x":"\xed', b'\xa0\x80"}'),        # surrogate split after lead byte
    (b'{"type":"ping","x":"\xed\xa0', b'\x80"}'),        # split after 2 bytes
    (b'{"type":"ping","x":"\xf4', b'\x90\x80\x80"}'),    # above U+10FFFF
    (b'{"type":"ping","x":"\xe0', b'\x80\xaf"}'),        # overlong
    (b'{"type":"ping","x":"\xc3', b'("}'),               # lead byte then ASCII
    (b'{"type":"ping","x":"\xe2\x82', b'"}'),            # truncated at the boundary
], ids=["surrogate-1", "surrogate-2", "above-max", "overlong", "lead-then-ascii", "truncated"])
def test_6_invalid_utf8_split_across_fragments_closes_1007(ws, first, second):
    """RFC 6455 8.1 with 5.4: each fragment looks harmless alone (it ends on a
    possibly valid prefix), the sequence across the boundary is invalid ->
    1007."""
    ws.send_fragments(OP_TEXT, [first, second])
    expect_fail(ws, 1007)


def test_6_invalid_utf8_three_fragments(ws):
    """RFC 6455 8.1: a 4-byte sequence spread over three fragments whose
    last byte makes it invalid."""
    ws.send_fragments(OP_TEXT, [b'"\xf0', b"\x9f", b'\x98("'])
    expect_fail(ws, 1007)


def test_6_fail_fast_on_invalid_utf8_in_first_fragment(ws):
    """RFC 6455 8.1 (Autobahn 6.4.1, "fail fast"): the first fragment already
    holds an invalid sequence; the server fails the connection with 1007
    without waiting for the rest of the message."""
    ws.send_frame(OP_TEXT, "\u03ba\u1f79\u03c3\u03bc\u03b5".encode() + b"\xf4\x90\x80\x80", fin=False)
    expect_fail(ws, 1007)


def test_6_fail_fast_invalid_after_valid_fragments(ws):
    """RFC 6455 8.1 (Autobahn 6.4.2): valid fragments then one with an
    invalid sequence, message not finished -> 1007 without waiting."""
    ws.send_frame(OP_TEXT, b'{"type":"ping","x":"ok', fin=False)
    ws.send_frame(OP_CONT, b"\xf4\x90\x80\x80", fin=False)
    expect_fail(ws, 1007)


# --- 7.x close handling -------------------------------------------------------------------------
def test_7_1_close_without_payload(ws):
    """RFC 6455 5.5.1: a close without a body is answered by a close (no body
    or 1000), and the server then closes TCP (7.1.1)."""
    ws.send_close()
    f = ws.recv_data(T, answer_pings=False)
    assert f.opcode == OP_CLOSE, f
    assert f.close_code in (None, 1000), f
    ws.wait_eof(T)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                  3000, 3999, 4000, 4999])
def test_7_7_valid_close_codes_echoed(ws, code):
    """RFC 6455 5.5.1/7.4: a close with a valid code is answered with a close
    echoing that code; then the server closes TCP (7.1.1)."""
    ws.send_close(code, b"reason")
    f = ws.recv_data(T, answer_pings=False)
    assert f.opcode == OP_CLOSE, f
    assert f.close_code == code, f
    ws.wait_eof(T)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_7_9_invalid_close_codes_close_1002(ws, code):
    """RFC 6455 7.4.1/7.4.2: codes 0-999 unused, 1004 reserved, 1005/1006/1015
    must not be sent, 1016-2999 reserved for the RFC/extensions, >= 5000
    undefined: a close carrying one -> close 1002."""
    ws.send_close(code, b"")
    f = ws.recv_data(T, answer_pings=False)
    assert f.opcode == OP_CLOSE, f
    assert f.close_code == 1002, f
    ws.wait_eof(T)


def test_7_3_close_with_1_byte_payload_closes_1002(ws):
    """RFC 6455 5.5.1: a close body, if present, starts with a 2-byte code; a
    1-byte body is a protocol error (1002)."""
    ws.send_frame(OP_CLOSE, b"\x03")
    expect_fail(ws, 1002)


def test_7_3_close_with_max_reason(ws):
    """RFC 6455 5.5/5.5.1: code + 123-byte reason = 125 bytes, the largest
    control payload: valid, echoed."""
    ws.send_close(1000, b"r" * 123)
    f = ws.recv_data(T, answer_pings=False)
    assert f.opcode == OP_CLOSE and f.close_code == 1000, f
    ws.wait_eof(T)


def test_7_3_close_payload_126_closes_1002(ws):
    """RFC 6455 5.5: a close frame with 126 payload bytes is too long for a
    control frame (1002)."""
    ws.send_close(1000, b"r" * 124)
    expect_fail(ws, 1002)


def test_7_5_close_reason_invalid_utf8(ws):
    """RFC 6455 5.5.1/8.1: the close reason is UTF-8; an invalid one fails the
    connection (1002, or 1007 as for invalid text)."""
    ws.send_close(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited")
    f = ws.recv_data(T, answer_pings=False)
    assert f.opcode == OP_CLOSE, f
    assert f.close_code in (1002, 1007), f
    ws.wait_eof(T)


def test_7_1_data_after_close_ignored(ws):
    """RFC 6455 5.5.1: after sending a close an endpoint sends no more data;
    the server ignores data that follows the client's close (no pong reply)."""
    ws.sendall(encode_frame(OP_CLOSE, rawws.close_payload(1000)) + encode_frame(OP_TEXT, PING)
               + encode_frame(OP_PING, b"after"))
    f = ws.recv_data(T, answer_pings=False)
    assert f.opcode == OP_CLOSE and f.close_code == 1000, f"expected only a close, got {f!r}"
    # nothing after the close frame: the next thing is EOF
    try:
        g = ws.recv_frame(T)
    except rawws.Closed:
        return
    raise AssertionError(f"frame after close: {g!r}")


def test_7_1_close_twice(ws):
    """RFC 6455 5.5.1: a second close after the first is not answered again."""
    ws.sendall(encode_frame(OP_CLOSE, rawws.close_payload(1000)) * 2)
    f = ws.recv_data(T, answer_pings=False)
    assert f.opcode == OP_CLOSE
    try:
        g = ws.recv_frame(T)
    except rawws.Closed:
        return
    raise AssertionError(f"frame after close: {g!r}")


def test_7_1_close_in_middle_of_fragmented_message(ws):
    """RFC 6455 5.4/5.5.1: a close may arrive between fragments: the partial
    message is discarded and the close echoed."""
    ws.send_frame(OP_TEXT, PING[:4], fin=False)
    ws.send_close(1000)
    f = ws.recv_data(T, answer_pings=False)
    assert f.opcode == OP_CLOSE and f.close_code == 1000, f
    ws.wait_eof(T)


def test_7_1_server_closes_tcp_if_client_never_answers_close(server):
    """RFC 6455 7.1.1/7.1.7: after the server fails a connection it closes
    TCP even if the peer never sends its close (close timeout)."""
    c = rawws.connect(server, "noanswer")
    try:
        c.send_frame(OP_TEXT, PING, rsv=4)
        f = c.expect_close(T, reply=False)
        assert f.close_code == 1002
        c.wait_eof(T + 3)  # close timeout is 2 s in this module
    finally:
        c.close()


def test_7_tcp_drop_without_close_is_cleaned_up(server):
    """RFC 6455 7.1.5 (1006, abnormal closure): a client that vanishes is
    removed; /health connections goes back down."""
    base = server.health()["connections"]
    cs = [rawws.connect(server, "vanish") for _ in range(5)]
    server.wait_for(lambda: server.health()["connections"] >= base + 5, what="5 more connections")
    for c in cs:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()  # RST
    server.wait_for(lambda: server.health()["connections"] <= base, what="connections cleaned up")


# --- 9.x limits ------------------------------------------------------------------------------------
def test_9_message_exactly_max_accepted(ws):
    """RFC 6455 10.4 (implementation-specific limits): a message of exactly
    --max-message-bytes is accepted."""
    ws.send_text(text_of_size(ws.user, MAX))
    msg = expect_json(ws)
    assert msg["type"] == "message"


def test_9_message_max_plus_one_closes_1009(ws):
    """RFC 6455 7.4.1/10.4: a message above the limit -> close 1009."""
    try:
        ws.send_text(text_of_size(ws.user, MAX + 1))
    except OSError:
        pass
    expect_fail(ws, 1009)


def test_9_huge_declared_length_closes_1009_without_payload(ws):
    """RFC 6455 10.4: the server rejects a frame by its declared length (here
    2^40 bytes) before reading the payload: 1009 (or 1002)."""
    ws.sendall(bytes([0x81, 0x80 | 127]) + (1 << 40).to_bytes(8, "big") + b"abcd")
    expect_fail(ws, (1009, 1002))


def test_9_fragmented_exactly_max_accepted(ws):
    """RFC 6455 5.4/10.4: a fragmented message of exactly the limit is fine."""
    msg = text_of_size(ws.user, MAX)
    ws.send_fragments(OP_TEXT, [msg[i:i + 1000] for i in range(0, len(msg), 1000)])
    assert expect_json(ws)["type"] == "message"


def test_9_many_messages_in_a_row(ws):
    """RFC 6455 5.2: 200 messages back to back (the default burst of
    --client-burst-messages) are all answered, in order."""
    ws.sendall(b"".join(encode_frame(OP_TEXT, self_message(ws.user, str(i))) for i in range(200)))
    for i in range(200):
        assert expect_json(ws)["content"] == i


def test_protocol_errors_counted(server):
    """Protocol-error closes appear in /metrics."""
    before = server.metrics().get_or0(M.protocol_errors)
    c = rawws.connect(server, "counted")
    c.send_frame(OP_TEXT, PING, mask=False)
    expect_fail(c, 1002)
    c.close()
    server.wait_for(lambda: server.metrics().get(M.protocol_errors) >= before + 1,
                    what="protocol error close counted")


def test_9_huge_declared_length_memory_bounded(ws):
    """RFC 6455 10.4: a frame declaring 2^40 bytes is failed with 1009 once
    more than the limit has arrived, never buffered to its declared size."""
    ws.sendall(bytes([0x81, 0x80 | 127]) + (1 << 40).to_bytes(8, "big") + b"abcd")
    try:
        ws.sendall(b"x" * (MAX + 1))
    except OSError:
        pass
    expect_fail(ws, (1009, 1002))


def test_5_many_empty_fragments(ws):
    """RFC 6455 5.4: a message may have any number of fragments; 5000 empty
    continuations then the rest of the message."""
    ws.sendall(encode_frame(OP_TEXT, PING[:1], fin=False)
               + b"".join(encode_frame(OP_CONT, b"", fin=False) for _ in range(5000))
               + encode_frame(OP_CONT, PING[1:], fin=True))
    expect_json(ws, PONG)


def test_4_2_1_frame_pipelined_with_handshake(server):
    """RFC 6455 4.1/4.2: a client may send its first frame right behind the
    request head (same TCP segment); the server must not lose it."""
    c = rawws.RawWS(server.host, server.port)
    try:
        c.sendall(c.request_bytes("/ws?user_id=pipelined") + encode_frame(OP_TEXT, PING)
                  + encode_frame(OP_PING, b"p"))
        st, _, _ = c.read_http_head()
        assert st == 101
        expect_json(c, PONG)
        f = c.recv_frame(T)
        assert f.opcode == OP_PONG and f.payload == b"p", f
    finally:
        c.close()


def test_4_2_1_request_head_byte_by_byte(server):
    """RFC 6455 4.2.1 over TCP: the request head may arrive in any number of
    segments (here one byte each)."""
    c = rawws.RawWS(server.host, server.port)
    try:
        req = c.request_bytes("/ws?user_id=bytewise")
        for i in range(len(req)):
            c.sendall(req[i:i + 1])
        st, h, _ = c.read_http_head()
        assert st == 101 and h.get("sec-websocket-accept") == rawws.accept_for(c.key)
        c.send_text(PING)
        expect_json(c, PONG)
    finally:
        c.close()


def test_1_x_server_frames_are_unmasked_and_unfragmented(ws):
    """RFC 6455 5.1: a server MUST NOT mask frames it sends (checked on a
    large reply too)."""
    ws.send_text(text_of_size(ws.user, MAX))
    f = ws.recv_data(T)
    assert f.opcode == OP_TEXT and not f.masked and f.rsv == 0, f
