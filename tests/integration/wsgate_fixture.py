"""Start the real wsgate binary on a free loopback port and talk HTTP to it.

Used by conftest.py (pytest fixtures) and by tools/rss_idle.py. Nothing here
sleeps and hopes: every wait is for a condition, with a deadline.
"""
import os
import re
import signal
import socket
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BIN = os.path.normpath(os.path.join(HERE, "..", "..", "build", "wsgate"))
LISTEN_RE = re.compile(r"listening on ([\d.]+):(\d+)")


def run(coro, timeout=30.0):
    """Runs a coroutine to completion with an overall deadline."""
    import asyncio
    return asyncio.run(asyncio.wait_for(coro, timeout))


def wsgate_bin():
    return os.environ.get("WSGATE_BIN") or DEFAULT_BIN


class ServerError(RuntimeError):
    pass


class WsgateServer:
    """One wsgate process. start() returns once the first stderr line named
    the port; stderr is drained by a thread so the pipe never fills."""

    def __init__(self, *flags, binary=None, env=None, start_timeout=15.0):
        self.binary = binary or wsgate_bin()
        self.flags = [str(f) for f in flags]
        self.env = env
        self.start_timeout = start_timeout
        self.proc = None
        self.signalled = False
        self.host = None
        self.port = None
        self.first_line = None
        self.listen_line = None
        self.lines = []
        self._lines_lock = threading.Lock()
        self._listening = threading.Event()
        self._reader = None

    # --- life cycle ---------------------------------------------------------
    def start(self):
        if not os.path.exists(self.binary):
            raise ServerError(f"wsgate binary not found at {self.binary} (set WSGATE_BIN)")
        args = [self.binary, "--host", "127.0.0.1", "--port", "0", "--transport", "local"] + self.flags
        env = dict(os.environ)
        # The tests choose every setting by flag; keep stray env vars out.
        for k in list(env):
            if k in ("PORT", "NODE_ID", "REDIS_HOST", "REDIS_PORT") or k.startswith("WSGATE_"):
                env.pop(k, None)
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not self._listening.wait(self.start_timeout) or self.port is None:
            out = self.stderr_text()
            self.kill()
            raise ServerError(f"wsgate did not report its port within {self.start_timeout}s; "
                              f"args={args}; stderr:\n{out}")
        return self

    def _drain(self):
        # The listening line is the first line; a sanitizer build may print
        # a report before it, so the first matching line among the first few
        # is used (test_first_log_line checks it really is the first).
        n = 0
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lines_lock:
                self.lines.append(line)
                if len(self.lines) > 20000:  # bounded memory on chatty logs
                    del self.lines[:10000]
            n += 1
            if n == 1:
                self.first_line = line
            if self.port is None and n <= 50:
                m = LISTEN_RE.search(line)
                if m:
                    self.host, self.port = m.group(1), int(m.group(2))
                    self.listen_line = line
                    self._listening.set()
        self._listening.set()

    def stderr_text(self):
        with self._lines_lock:
            return "\n".join(self.lines[-200:])

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.signalled = True
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Exit code, or None if still running after timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=10.0):
        """SIGTERM, wait, SIGKILL on timeout. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                self.kill()
        if self._reader:
            self._reader.join(timeout=5)
        return self.proc.returncode

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- observation --------------------------------------------------------
    @property
    def addr(self):
        return (self.host, self.port)

    def url(self, user=None, path="/ws"):
        if user is None:
            return f"ws://{self.host}:{self.port}{path}"
        return f"ws://{self.host}:{self.port}{path}?user_id={user}"

    def rss_bytes(self, field="VmRSS"):
        return proc_status_bytes(self.pid, field)

    def http_get(self, path, timeout=5.0, **kw):
        return http_request(self.host, self.port, "GET", path, timeout=timeout, **kw)

    def health(self):
        import json
        st, _, body = self.http_get("/health")
        if st != 200:
            raise ServerError(f"/health answered {st}: {body!r}")
        return json.loads(body)

    def metrics(self):
        st, _, body = self.http_get("/metrics")
        if st != 200:
            raise ServerError(f"/metrics answered {st}: {body!r}")
        return parse_prometheus(body.decode())

    def metric(self, name, **labels):
        return self.metrics().get(name, **labels)

    def wait_for(self, predicate, timeout=10.0, interval=0.02, what="condition"):
        return wait_for(predicate, timeout, interval, what, server=self)


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition", server=None):
    """Polls predicate() until it returns a truthy value; raises on deadline."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except (OSError, ServerError) as e:  # server briefly busy: keep polling
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc})" if last_exc else ""
            log = f"\nserver stderr tail:\n{server.stderr_text()}" if server else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}{log}")
        time.sleep(interval)


def proc_status_bytes(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                parts = line.split()
                assert parts[2] == "kB"
                return int(parts[1]) * 1024
    raise KeyError(field)


# --- plain HTTP -------------------------------------------------------------
def http_request(host, port, method, path, headers=None, timeout=5.0, source=None, raw=None):
    """One request with Connection: close. Returns (status, headers dict with
    lower-case names, body bytes). raw: send these bytes instead."""
    s = socket.create_connection((host, port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    try:
        if raw is None:
            lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
            for k, v in (headers or {}).items():
                lines.append(f"{k}: {v}")
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
        s.sendall(raw)
        return read_http_response(s, timeout)
    finally:
        s.close()


def read_http_response(sock, timeout=5.0, max_bytes=1 << 20):
    """Reads status line, headers and a Content-Length body (or to EOF)."""
    sock.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline or len(buf) > max_bytes:
            raise ServerError(f"no complete HTTP response head: {buf[:200]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            raise ServerError(f"connection closed before a complete response head: {buf[:200]!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if status == 101:
        return status, headers, body
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(body) < n:
            if time.monotonic() > deadline:
                raise ServerError("body truncated")
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        body = body[:n]
    else:
        while time.monotonic() < deadline and len(body) < max_bytes:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            body += chunk
    return status, headers, body


# --- Prometheus text format -------------------------------------------------
_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$')
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    def __init__(self, samples, types, text):
        self.samples = samples  # list of (name, {labels}, value)
        self.types = types      # name -> counter/gauge/...
        self.text = text

    def get(self, name, **labels):
        """Sum of the samples called name whose labels include the given
        ones. Raises KeyError when no sample matches at all."""
        found = False
        total = 0.0
        for n, ls, v in self.samples:
            if n == name and all(ls.get(k) == str(val) for k, val in labels.items()):
                found = True
                total += v
        if not found:
            raise KeyError(f"no sample {name}{labels} in /metrics:\n{self.text}")
        return total

    def get_or0(self, name, **labels):
        try:
            return self.get(name, **labels)
        except KeyError:
            return 0.0

    def names(self):
        return {n for n, _, _ in self.samples}


def parse_prometheus(text):
    samples, types = [], {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            p = line.split()
            if len(p) >= 4 and p[1] == "TYPE":
                types[p[2]] = p[3]
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            raise ValueError(f"not a Prometheus sample line: {line!r}")
        labels = {k: v for k, v in _LABEL_RE.findall(m.group(3) or "")}
        samples.append((m.group(1), labels, float(m.group(4))))
    return Metrics(samples, types, text)


# --- metric names (core/metrics.cpp renders them) ---------------------------
class M:
    connections_open = "wsgate_connections_open"
    accepted = "wsgate_connections_accepted_total"
    rejected = "wsgate_connections_rejected_total"     # label reason=
    messages_in = "wsgate_messages_in_total"           # label type=
    messages_out = "wsgate_messages_out_total"         # label type=
    invalid = "wsgate_messages_invalid_total"
    undeliverable = "wsgate_messages_undeliverable_total"
    bytes_in = "wsgate_bytes_in_total"
    bytes_out = "wsgate_bytes_out_total"
    slow_consumer = "wsgate_slow_consumer_closes_total"
    heartbeat_timeouts = "wsgate_heartbeat_timeouts_total"
    protocol_errors = "wsgate_protocol_error_closes_total"
    # reason label values (reject_reason_name)
    R_BAD_REQUEST = "bad_request"
    R_BAD_VERSION = "bad_version"
    R_HEADER_TOO_LARGE = "header_too_large"
    R_HANDSHAKE_TIMEOUT = "handshake_timeout"
    R_TOO_MANY = "too_many_connections"
    R_RATE_LIMITED = "rate_limited"
    R_NOT_FOUND = "not_found"
