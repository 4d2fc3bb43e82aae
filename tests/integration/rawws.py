"""A raw-socket WebSocket client for malformed input.

Does the RFC 6455 opening handshake itself and then sends whatever frames a
test asks for: masked or not, any RSV bits, any opcode, fragmented or not,
any declared length. Reads frames the server sends. Blocking sockets with a
deadline on every read, so no test can hang.
"""
import base64
import hashlib
import os
import socket
import struct
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    def __init__(self, status, headers, body):
        super().__init__(f"handshake answered {status}: {body[:200]!r}")
        self.status, self.headers, self.body = status, headers, body


class Closed(Exception):
    """The TCP connection ended (EOF or reset) while a frame was expected."""


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def encode_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, mask_key=None, length=None):
    """One frame. rsv: 3-bit value (4 = RSV1, 2 = RSV2, 1 = RSV3). length:
    the declared payload length, if it must differ from len(payload)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload) if length is None else length
    if n < 126:
        hdr = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n <= 0xFFFF:
        hdr = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return hdr + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    return hdr + key + mask_bytes(payload, key)


def mask_bytes(payload, key):
    if not payload:
        return b""
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def decode_header(buf):
    """The header at the start of buf, or None if buf holds less of it:
    (fin, rsv, opcode, masked, payload_length, mask_key or None, header_length).
    The one frame-header decoder of the Python tools and tests."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack("!H", buf[2:4])[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack("!Q", buf[2:10])[0]
        pos = 10
    masked = bool(b1 & 0x80)
    key = None
    if masked:
        if len(buf) < pos + 4:
            return None
        key = bytes(buf[pos:pos + 4])
        pos += 4
    return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, masked, n, key, pos


def decode_frame(buf):
    """(Frame, bytes consumed) for the whole frame at the start of buf, or
    None if it is not all there yet."""
    h = decode_header(buf)
    if h is None:
        return None
    fin, rsv, opcode, masked, n, key, pos = h
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos:pos + n])
    if masked:
        payload = mask_bytes(payload, key)
    return Frame(fin, rsv, opcode, masked, payload), pos + n


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


class Frame:
    __slots__ = ("fin", "rsv", "opcode", "masked", "payload")

    def __init__(self, fin, rsv, opcode, masked, payload):
        self.fin, self.rsv, self.opcode, self.masked, self.payload = fin, rsv, opcode, masked, payload

    @property
    def text(self):
        return self.payload.decode("utf-8")

    @property
    def close_code(self):
        if self.opcode != OP_CLOSE:
            return None
        if len(self.payload) < 2:
            return None  # "no status code" (1005 in the API sense)
        return struct.unpack("!H", self.payload[:2])[0]

    @property
    def close_reason(self):
        return self.payload[2:]

    def __repr__(self):
        p = self.payload if len(self.payload) <= 80 else self.payload[:80] + b"..."
        return f"Frame(op={self.opcode:#x}, fin={self.fin}, rsv={self.rsv}, masked={self.masked}, payload={p!r})"


class RawWS:
    def __init__(self, host, port, timeout=5.0, source=None, rcvbuf=None):
        self.host, self.port, self.timeout = host, port, timeout
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the window the server sees is small.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            s.bind((source, 0))
        s.settimeout(timeout)
        s.connect((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self.buf = b""
        self.status = None
        self.headers = {}

    # --- handshake ----------------------------------------------------------
    def request_bytes(self, path="/ws?user_id=raw", key=None, extra_headers=None, version="13"):
        self.key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {self.key}",
                 f"Sec-WebSocket-Version: {version}"]
        for k, v in (extra_headers or {}).items():
            lines.append(f"{k}: {v}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def handshake(self, path="/ws?user_id=raw", key=None, extra_headers=None):
        """Sends the upgrade request; raises HandshakeError unless 101 with
        the right Sec-WebSocket-Accept."""
        self.sendall(self.request_bytes(path, key, extra_headers))
        status, headers, body = self.read_http_head()
        self.status, self.headers = status, headers
        if status != 101:
            raise HandshakeError(status, headers, body)
        got = headers.get("sec-websocket-accept")
        if got != accept_for(self.key):
            raise AssertionError(f"bad Sec-WebSocket-Accept {got!r} for key {self.key!r}")
        return self

    def read_http_head(self):
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status == 101:
            self.buf = rest
            return status, headers, b""
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            self.buf = rest
            try:
                self._fill(deadline)
            except Closed:
                break
            rest = self.buf
        self.buf = b""
        return status, headers, rest[:n]

    # --- sending ------------------------------------------------------------
    def sendall(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", **kw):
        self.sendall(encode_frame(opcode, payload, **kw))

    def send_text(self, text, **kw):
        self.send_frame(OP_TEXT, text, **kw)

    def send_close(self, code=None, reason=b"", **kw):
        self.send_frame(OP_CLOSE, close_payload(code, reason), **kw)

    def send_fragments(self, opcode, pieces, **kw):
        """One message as len(pieces) frames: opcode, then continuations."""
        out = b""
        for i, p in enumerate(pieces):
            out += encode_frame(opcode if i == 0 else OP_CONT, p, fin=(i == len(pieces) - 1), **kw)
        self.sendall(out)

    # --- receiving ----------------------------------------------------------
    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed waiting for data")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError as e:
            raise Closed("connection reset") from e
        if not chunk:
            raise Closed("EOF")
        self.buf += chunk

    def recv_frame(self, timeout=None):
        """The next frame from the server. Raises socket.timeout after the
        deadline, Closed on EOF/reset."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            got = decode_frame(self.buf)
            if got is not None:
                frame, used = got
                self.buf = self.buf[used:]
                return frame
            self._fill(deadline)

    def recv_data(self, timeout=None, answer_pings=True):
        """Next text/binary/close frame; pings are answered (or skipped) and
        pongs skipped on the way."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f.opcode == OP_PING:
                if answer_pings:
                    self.send_frame(OP_PONG, f.payload)
                continue
            if f.opcode == OP_PONG:
                continue
            return f

    def recv_text(self, timeout=None):
        f = self.recv_data(timeout)
        if f.opcode != OP_TEXT:
            raise AssertionError(f"expected a text frame, got {f!r}")
        return f.payload

    def expect_close(self, timeout=None, reply=True):
        """Reads until the server's close frame; skips data, answers nothing
        but the close. Returns the close Frame. Then (reply=True) echoes the
        close and checks the server ends the TCP connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            except Closed as e:
                raise AssertionError(f"TCP closed without a close frame ({e})") from e
            if f.opcode == OP_CLOSE:
                break
        if reply:
            try:
                self.send_frame(OP_CLOSE, f.payload[:2])
            except OSError:
                pass
            self.wait_eof(max(0.5, deadline - time.monotonic()))
        return f

    def wait_eof(self, timeout=None):
        """Waits until the server ends the TCP connection (EOF or reset),
        discarding anything that arrives. Raises on deadline."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self.buf = b""
        while True:
            try:
                self._fill(deadline)
            except Closed:
                return True
            except OSError as e:
                if isinstance(e, socket.timeout):
                    raise AssertionError("server did not close the TCP connection in time") from e
                return True
            self.buf = b""

    def is_eof(self, timeout=0.0):
        """True if the server has ended the connection (checks without
        consuming frames beyond the buffer)."""
        try:
            self.sock.settimeout(timeout if timeout > 0 else 0.000001)
            chunk = self.sock.recv(1 << 16, socket.MSG_PEEK)
            return chunk == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (socket.timeout, BlockingIOError):
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(server_or_addr, user="raw", timeout=5.0, source=None, rcvbuf=None, path=None):
    """Handshaken RawWS for user (user=None: no user_id in the query)."""
    host, port = server_or_addr.addr if hasattr(server_or_addr, "addr") else server_or_addr
    ws = RawWS(host, port, timeout=timeout, source=source, rcvbuf=rcvbuf)
    if path is None:
        path = "/ws" if user is None else f"/ws?user_id={user}"
    try:
        ws.handshake(path)
    except BaseException:
        ws.close()
        raise
    return ws
