"""Helpers for the cluster tests: a real redis-server, several wsgate nodes,
a real nginx in front of them, and WebSocket clients that record what they
receive.

Everything listens on 127.0.0.1 on ports chosen at run time; nothing here
touches the system's redis-server or nginx services. Every wait polls a
condition with a deadline. Cluster.close() stops every process it started
(SIGTERM, then SIGKILL) and removes every shared-memory segment it named,
also when the test failed.
"""
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
import websockets

from wsgate_fixture import ServerError, WsgateServer, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
NGINX_CONF = os.path.join(REPO, "deploy", "nginx.conf")

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

T = 10.0  # seconds: the deadline of any single network wait in the tests


def uid(prefix="u"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port():
    """A port the kernel just handed out on 127.0.0.1 (for servers that
    cannot be told --port 0, like redis-server and nginx)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- a tiny RESP2 client ----------------------------------------------------
class RespError(Exception):
    """An error reply (-ERR ..., -WRONGPASS ...)."""


class Resp:
    """A blocking RESP2 client with a deadline on every read."""

    def __init__(self, port, host="127.0.0.1", password=None, timeout=5.0):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        if password is not None:
            self.command("AUTH", password)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))

    def command(self, *args):
        self.send(*args)
        r = self.read_reply()
        if isinstance(r, RespError):
            raise r
        return r

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed waiting for a Redis reply")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self.buf += chunk

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_reply(self, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return self._reply(deadline)

    def _reply(self, deadline):
        line = self._line(deadline)
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill(deadline)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._reply(deadline) for _ in range(n)]
        raise ConnectionError(f"not a RESP reply: {line!r}")

    # conveniences
    def hgetall(self, key):
        flat = self.command("HGETALL", key)
        return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}

    def smembers(self, key):
        return set(self.command("SMEMBERS", key))


class Subscriber:
    """A connection in SUBSCRIBE mode that records every message."""

    def __init__(self, port, channels, password=None):
        self.conn = Resp(port, password=password)
        self.messages = []  # (channel, data)
        self.conn.send("SUBSCRIBE", *channels)
        confirmed = 0
        while confirmed < len(channels):
            r = self.conn.read_reply()
            if isinstance(r, list) and r and r[0] == "subscribe":
                confirmed += 1

    def poll(self, timeout=0.05):
        """Reads what has arrived (waits at most timeout for the first)."""
        got = 0
        while True:
            try:
                if not self.conn.buf:
                    self.conn.sock.settimeout(timeout if got == 0 else 0.001)
                    chunk = self.conn.sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("Redis closed the subscriber connection")
                    self.conn.buf += chunk
                while self.conn.buf:
                    saved = self.conn.buf
                    try:
                        r = self.conn.read_reply(timeout=0.2)
                    except socket.timeout:
                        self.conn.buf = saved  # a partial reply: read more next time
                        break
                    if isinstance(r, list) and len(r) == 3 and r[0] == "message":
                        self.messages.append((r[1], r[2]))
                        got += 1
            except socket.timeout:
                return got

    def wait_for(self, predicate, timeout=T, what="a Redis message"):
        """Polls until predicate(self.messages) is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate(self.messages)
            if v:
                return v
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; got: {self.messages}")
            self.poll(0.05)

    def json_messages(self, channel=None):
        return [json.loads(d) for c, d in self.messages if channel is None or c == channel]

    def close(self):
        self.conn.close()


# --- redis-server ---------------------------------------------------------
class RedisServer:
    def __init__(self, workdir, port=None, password=None):
        self.workdir = workdir
        self.port = port
        self.password = password
        self.proc = None
        self.log_path = None
        self.starts = 0

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def start(self, timeout=T):
        """Starts (or restarts, on the same port) and waits until it answers PING."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        for attempt in range(5):
            port = self.port or free_port()
            self.starts += 1
            self.log_path = os.path.join(self.workdir, f"redis-{port}-{self.starts}.log")
            args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", self.workdir, "--protected-mode", "yes"]
            if self.password is not None:
                args += ["--requirepass", self.password]
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # e.g. the port was taken meanwhile
                try:
                    with Resp(port, password=self.password, timeout=1.0) as r:
                        if r.command("PING") == "PONG":
                            self.port = port
                            return self
                except (OSError, RespError):
                    time.sleep(0.02)
            self._reap()
            if self.port is not None:  # a restart on a fixed port: no other port will do
                if attempt < 4:
                    continue
                break
        raise ServerError(f"redis-server did not answer PING; log:\n{self.log_text()}")

    def log_text(self):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()[-4000:]
        except (OSError, TypeError):
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _reap(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def kill(self):
        """SIGKILL, as a crash: nothing is saved, clients see their
        connections reset."""
        self._reap()

    def stop(self, timeout=10.0):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._reap()

    def client(self, password="__default__"):
        return Resp(self.port, password=self.password if password == "__default__" else password)

    def cmd(self, *args):
        with self.client() as r:
            return r.command(*args)

    def hgetall(self, key):
        with self.client() as r:
            return r.hgetall(key)

    def smembers(self, key):
        with self.client() as r:
            return r.smembers(key)

    def exists(self, key):
        return self.cmd("EXISTS", key) == 1

    def subscribe(self, *channels):
        return Subscriber(self.port, list(channels), password=self.password)


# --- nginx ------------------------------------------------------------------
def render_nginx_conf(text, listen_port, upstreams, workdir):
    """deploy/nginx.conf with this run's listen port, upstream servers and
    paths under workdir, so an unprivileged copy runs beside everything
    else. Fails if the shipped file no longer has what is substituted."""
    servers = re.findall(r"^(\s*)server\s+[\w.\-\[\]:]+:\d+[^;]*;", text, flags=re.M)
    assert len(servers) == len(upstreams), (
        f"deploy/nginx.conf has {len(servers)} upstream server lines, the test starts {len(upstreams)} nodes")
    it = iter(upstreams)
    text = re.sub(r"^(\s*)server\s+[\w.\-\[\]:]+:\d+([^;]*);",
                  lambda m: f"{m.group(1)}server {next(it)}{m.group(2)};", text, flags=re.M)
    text, n = re.subn(r"^(\s*)listen\s+[^;]+;", lambda m: f"{m.group(1)}listen 127.0.0.1:{listen_port};",
                      text, flags=re.M)
    assert n == 1, f"deploy/nginx.conf: expected one listen line, found {n}"
    for directive, path, extra in (("pid", "nginx.pid", ""), ("error_log", "error.log", " info"),
                                   ("access_log", "access.log", "")):
        text, n = re.subn(rf"^(\s*){directive}\s+[^;]+;",
                          lambda m, d=directive, p=path, e=extra: f"{m.group(1)}{d} {workdir}/{p}{e};",
                          text, flags=re.M)
        assert n == 1, f"deploy/nginx.conf: expected one {directive} line, found {n}"
    temp = "".join(f"\n    {d} {workdir}/{d.split('_')[0]}_temp;"
                   for d in ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path",
                             "uwsgi_temp_path", "scgi_temp_path"))
    text, n = re.subn(r"^http\s*\{", lambda m: m.group(0) + temp, text, flags=re.M)
    assert n == 1, "deploy/nginx.conf: expected one http { block"
    return text


class Nginx:
    def __init__(self, workdir, upstreams, conf_path=NGINX_CONF):
        self.workdir = os.path.join(workdir, "nginx")
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # workers may run as another user when we are root
        self.upstreams = list(upstreams)
        self.conf_path = conf_path
        self.port = None
        self.proc = None
        self.conf = None

    def start(self, timeout=T):
        with open(self.conf_path) as f:
            shipped = f.read()
        for attempt in range(5):
            self.port = free_port()
            self.conf = render_nginx_conf(shipped, self.port, self.upstreams, self.workdir)
            path = os.path.join(self.workdir, "nginx.conf")
            with open(path, "w") as f:
                f.write(self.conf)
            with open(os.path.join(self.workdir, "stderr.log"), "ab") as log:
                # Its own session: at teardown the whole group (master and
                # workers) is signalled by its id, so no worker outlives it.
                self.proc = subprocess.Popen([NGINX, "-p", self.workdir, "-c", path, "-g", "daemon off;"],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if port_accepts(self.port):
                    return self
                time.sleep(0.02)
            self.stop()
        raise ServerError(f"nginx did not start; log:\n{self.log_text()}")

    def log_text(self):
        out = []
        for name in ("stderr.log", "error.log"):
            try:
                with open(os.path.join(self.workdir, name), errors="replace") as f:
                    out.append(f"--- {name}\n" + f.read()[-4000:])
            except OSError:
                pass
        return "\n".join(out)

    def url(self, user):
        return f"ws://127.0.0.1:{self.port}/ws?user_id={user}"

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the master's pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # workers left behind, if any
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


# --- wsgate nodes -------------------------------------------------------------
class Node(WsgateServer):
    """A wsgate node: WsgateServer plus its node id and restart."""

    def __init__(self, node_id, *flags, **kw):
        # NODE_ID in env: the id comes from the environment, not a flag.
        id_flag = [] if (kw.get("env") or {}).get("NODE_ID") == node_id else ["--node-id", node_id]
        super().__init__(*id_flag, *flags, **kw)
        self.node_id = node_id
        self._ctor_flags = flags
        self._ctor_kw = kw

    def fresh(self):
        """A not yet started copy with the same flags (for a restart)."""
        return Node(self.node_id, *self._ctor_flags, **self._ctor_kw)

    def stop(self, timeout=10.0):
        self.signalled = True  # stopped by the test, not exited on its own
        return super().stop(timeout)

    def kill9(self):
        self.signal(signal.SIGKILL)
        return self.wait_exit(10)

    def connections(self):
        return self.health()["connections"]

    def transport_connected(self):
        return self.health().get("transport_connected")


class Cluster:
    """Owns every process a test starts; close() stops them all."""

    def __init__(self):
        self.workdir = tempfile.mkdtemp(prefix="wsgate-cluster-")
        self.redises = []
        self.nodes = []
        self.nginxes = []
        self.shm_names = []
        self.subscribers = []

    # redis
    def redis(self, password=None):
        r = RedisServer(self.workdir, password=password)
        self.redises.append(r)
        return r.start()

    # nodes
    def node(self, node_id, *flags, env=None, start=True):
        n = Node(node_id, "--max-connections-per-ip", "1000000", *flags, env=env)
        self.nodes.append(n)
        return n.start() if start else n

    def redis_node(self, redis, node_id, *flags, prefix=None, password=None, ttl_ms=None):
        args = ["--transport", "redis", "--redis", redis.addr]
        if prefix is not None:
            args += ["--redis-prefix", prefix]
        pw = redis.password if password is None else password
        if pw is not None:
            args += ["--redis-password", pw]
        if ttl_ms is not None:
            args += ["--presence-ttl-ms", str(ttl_ms)]
        return self.node(node_id, *args, *flags)

    def shm_name(self):
        name = f"wsgate-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.shm_names.append(name)
        return name

    def shm_node(self, shm_name, node_id, *flags):
        return self.node(node_id, "--transport", "shm", "--shm-name", shm_name, *flags)

    def restart(self, node):
        """Starts a node again with the flags it had (a new process, a new port)."""
        n = node.fresh()
        self.nodes.append(n)
        return n.start()

    # nginx
    def nginx(self, nodes):
        ng = Nginx(self.workdir, [f"{n.host}:{n.port}" for n in nodes])
        self.nginxes.append(ng)
        return ng.start()

    def subscribe(self, redis, *channels):
        s = redis.subscribe(*channels)
        self.subscribers.append(s)
        return s

    def crashed_nodes(self):
        """Nodes that exited on their own (not signalled by the test)."""
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is not None and not n.signalled]

    def close(self):
        crashed = [(n.node_id, n.proc.returncode, n.stderr_text()) for n in self.crashed_nodes()]
        for s in self.subscribers:
            s.close()
        for ng in self.nginxes:
            try:
                ng.stop()
            except Exception:  # keep tearing down the rest
                pass
        for n in self.nodes:
            try:
                n.stop()
            except Exception:
                n.kill()
        for r in self.redises:
            r.stop()
        for name in self.shm_names:
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)
        return crashed


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        crashed = c.close()
    if crashed:
        pytest.fail("wsgate node(s) exited on their own during the test:\n" +
                    "\n".join(f"node {i} exit {code}; stderr tail:\n{err}" for i, code, err in crashed),
                    pytrace=False)


# --- WebSocket clients --------------------------------------------------------
class Client:
    """One WebSocket connection whose incoming messages are recorded by a
    reader task; tests wait for conditions on the record."""

    def __init__(self, user, ws, url):
        self.user = user
        self.ws = ws
        self.url = url
        self.received = []  # parsed JSON objects, in arrival order
        self.raw = []
        self.closed = None  # the ConnectionClosed exception once the connection ended
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())
        self._pings = 0

    @classmethod
    async def connect(cls, url, user, source=None, timeout=T):
        kw = dict(open_timeout=timeout, close_timeout=2, ping_interval=None, compression=None, max_size=None)
        if source:
            kw["local_addr"] = (source, 0)
        ws = await websockets.connect(url, **kw)
        return cls(user, ws, url)

    async def _read(self):
        try:
            async for msg in self.ws:
                self.raw.append(msg)
                self.received.append(json.loads(msg))
                self._changed.set()
        except websockets.ConnectionClosed as e:
            self.closed = e
        except Exception as e:  # noqa: BLE001 - recorded, the test decides
            self.closed = e
        else:
            self.closed = True
        self._changed.set()

    async def send(self, obj):
        await self.ws.send(obj if isinstance(obj, str) else json.dumps(obj))

    async def send_to(self, target, content):
        await self.send({"type": "send_message", "target_user": target, "content": content})

    async def broadcast(self, content):
        await self.send({"type": "broadcast", "content": content})

    async def wait_for(self, predicate, timeout=T, what="a message"):
        """Waits until predicate(self) is truthy (checked on every arrival)."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate(self)
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.user}: timed out after {timeout}s waiting for {what}; "
                                     f"closed={self.closed!r}; received={self.received[-20:]}")
            if self.closed is not None and not predicate(self):
                raise AssertionError(f"{self.user}: connection ended ({self.closed!r}) while waiting for {what}; "
                                     f"received={self.received[-20:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def barrier(self, timeout=T):
        """A ping/pong round trip: everything this node queued to this
        connection before the ping has arrived when it returns."""
        self._pings += 1
        want = sum(1 for m in self.received if m.get("type") == "pong") + 1
        await self.send({"type": "ping"})
        await self.wait_for(lambda c: sum(1 for m in c.received if m.get("type") == "pong") >= want,
                            timeout, "pong")

    def of_type(self, t):
        return [m for m in self.received if m.get("type") == t]

    def contents(self, t="message", sender=None):
        return [m["content"] for m in self.received
                if m.get("type") == t and (sender is None or m.get("from") == sender)]

    async def wait_closed(self, timeout=T):
        await self.wait_for(lambda c: c.closed is not None, timeout, "the connection to end")

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:  # noqa: BLE001 - teardown
            pass
        self._task.cancel()
        try:
            await self._task
        except BaseException:  # noqa: BLE001
            pass


class Clients:
    """Tracks clients so a test closes them all, even on failure."""

    def __init__(self):
        self.all = []

    async def connect(self, url, user, source=None, timeout=T):
        c = await Client.connect(url, user, source=source, timeout=timeout)
        self.all.append(c)
        return c

    async def close(self):
        await asyncio.gather(*(c.close() for c in self.all), return_exceptions=True)


def run(coro_fn, timeout=55.0):
    """Runs coro_fn(clients) with an overall deadline; every client it opened
    is closed afterwards, also on failure."""
    async def main():
        clients = Clients()
        try:
            return await asyncio.wait_for(coro_fn(clients), timeout)
        finally:
            await clients.close()
    return asyncio.run(main())


def wait_subscribed(redis, users, prefix="wsgate:", at_least=1, timeout=T):
    """A coroutine: waits until Redis shows every user's channel subscribed
    by at least `at_least` nodes (PUBSUB NUMSUB). A node subscribes after
    the WebSocket upgrade completes; a publish that beats the subscription
    reaches nobody, so tests wait for this before sending across nodes."""
    users = list(users)

    def ok():
        with redis.client() as r:
            for u in users:
                if int(r.command("PUBSUB", "NUMSUB", f"{prefix}user:{u}")[1]) < at_least:
                    return False
        return True
    return async_wait(ok, timeout=timeout, what=f"Redis subscriptions for {users}")


def wait_health(node, predicate, timeout=T, what="health"):
    return wait_for(lambda: predicate(node.health()), timeout, what=f"{node.node_id}: {what}", server=node)


async def async_wait(predicate, timeout=T, what="condition", interval=0.02):
    """wait_for for use inside a coroutine: predicate is a plain function
    (may do blocking HTTP to a node: short calls only)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except (OSError, ServerError, RespError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" +
                                 (f" (last error: {last})" if last else ""))
        await asyncio.sleep(interval)
