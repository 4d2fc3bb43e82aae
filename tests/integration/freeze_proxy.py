"""A TCP proxy that can freeze: while frozen it neither reads nor writes
nor accepts, but keeps every socket open, as a stalled VM or a blackholed
route looks to a client (no reset, no FIN, just silence). Used between
wsgate and redis-server to check that a frozen Redis is noticed.

One thread, selectors, bounded buffers; close() stops it and closes every
socket it holds.
"""
import selectors
import socket
import threading


class FreezeProxy:
    def __init__(self, upstream_port, upstream_host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.stopping = threading.Event()
        self.accepted = 0
        self.pairs = []  # [client, upstream]
        self.lock = threading.Lock()
        self.error = None  # an exception that stopped the proxy's thread
        self.thread = threading.Thread(target=self._guarded_run, daemon=True)
        self.thread.start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def freeze(self):
        self.frozen.set()

    def unfreeze(self):
        self.frozen.clear()

    def connection_count(self):
        with self.lock:
            return self.accepted

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        with self.lock:
            for pair in self.pairs:
                for s in pair:
                    try:
                        s.close()
                    except OSError:
                        pass
            self.pairs.clear()
        self.listener.close()

    def _guarded_run(self):
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported by check()
            self.error = e

    def check(self):
        """Raises if the proxy's thread died (the test would blame wsgate)."""
        if self.error is not None:
            raise AssertionError(f"the freeze proxy failed: {self.error!r}")

    def _run(self):
        sel = selectors.DefaultSelector()
        registered = False
        peer = {}
        while not self.stopping.is_set():
            if self.frozen.is_set():
                if registered:
                    for key in list(sel.get_map().values()):
                        sel.unregister(key.fileobj)
                    registered = False
                self.stopping.wait(0.02)
                continue
            if not registered:
                sel.register(self.listener, selectors.EVENT_READ)
                with self.lock:
                    for c, u in self.pairs:
                        sel.register(c, selectors.EVENT_READ)
                        sel.register(u, selectors.EVENT_READ)
                registered = True
            for key, _ in sel.select(timeout=0.02):
                if self.frozen.is_set():
                    break
                s = key.fileobj
                if s is self.listener:
                    try:
                        c, _ = self.listener.accept()
                    except OSError:
                        continue
                    try:
                        u = socket.create_connection(self.upstream, timeout=2)
                    except OSError:
                        c.close()
                        continue
                    c.setblocking(True)
                    u.setblocking(True)
                    with self.lock:
                        self.pairs.append([c, u])
                        self.accepted += 1
                    peer[c], peer[u] = u, c
                    sel.register(c, selectors.EVENT_READ)
                    sel.register(u, selectors.EVENT_READ)
                    continue
                other = peer.get(s)
                if other is None:
                    continue  # its pair ended earlier in this round
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        other.sendall(data)
                        continue
                    except OSError:
                        pass
                # One side ended: end the pair.
                for x in (s, other):
                    try:
                        sel.unregister(x)
                    except (KeyError, ValueError):
                        pass
                    try:
                        x.close()
                    except OSError:
                        pass
                    peer.pop(x, None)
                with self.lock:
                    self.pairs = [p for p in self.pairs if s not in p]
        sel.close()
