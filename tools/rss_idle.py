#!/usr/bin/python3
"""RSS of a wsgate node per idle WebSocket connection.

Opens N idle WebSocket connections to a wsgate server, then reads the
server's resident set size from /proc/PID/status before and after and prints
bytes per connection.

    /usr/bin/python3 tools/rss_idle.py --bin build/wsgate --connections 10000
    /usr/bin/python3 tools/rss_idle.py --port 8080 --pid 1234 --connections 10000

With --bin it starts its own server (--port 0, a long heartbeat/idle timeout
so idle clients are not closed during the measurement, and a connection cap
above N); without it, it measures the running server given by --port/--pid.

Clients are cheap: raw sockets after a handshake, spread over several worker
processes (at most --per-process sockets each, default 15000) and over
source addresses 127.0.K.x (at most --per-ip per address, default 50) so the
default per-IP rate limit is respected. No thread per connection: each
worker pipelines handshakes in batches with a selector and then just holds
its sockets (answering server pings so an idle timeout cannot close them).
"""
import argparse
import base64
import json
import multiprocessing as mp
import os
import selectors
import signal
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

from rawws import OP_PING, OP_PONG, decode_frame, encode_frame  # noqa: E402
from wsgate_fixture import WsgateServer, http_request, proc_status_bytes  # noqa: E402

REQUEST = ("GET /ws?user_id={user} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")


def source_addr(global_index, per_ip):
    k = global_index // per_ip
    # 127.0.K.x with K >= 1, x in 1..250: 250 * 254 addresses
    return f"127.0.{1 + k // 250}.{1 + k % 250}"


def worker(host, port, first, count, per_ip, batch, ready_q, stop_evt):
    """Opens count connections (global indexes first..first+count-1), reports
    how many succeeded, then holds them until stop_evt is set."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, count + 256)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass
    sel = selectors.DefaultSelector()
    socks = []
    failures = 0
    first_error = None
    key = base64.b64encode(os.urandom(16)).decode()
    i = 0
    while i < count:
        n = min(batch, count - i)
        pending = {}
        for j in range(n):
            g = first + i + j
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((source_addr(g, per_ip), 0))
                s.settimeout(10)
                s.connect((host, port))
                s.setblocking(False)
                s.send(REQUEST.format(user=f"idle{g}", host=host, port=port, key=key).encode())
            except OSError as e:
                failures += 1
                first_error = first_error or repr(e)
                s.close()
                continue
            pending[s.fileno()] = (s, b"")
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for k, _ in sel.select(timeout=1.0):
                s, buf = pending[k.fd]
                try:
                    d = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as e:
                    d = b""
                    first_error = first_error or repr(e)
                buf += d
                if not d or b"\r\n\r\n" in buf:
                    sel.unregister(s)
                    del pending[k.fd]
                    if d and buf.startswith(b"HTTP/1.1 101"):
                        socks.append(s)
                    else:
                        failures += 1
                        first_error = first_error or buf[:80].decode("latin-1")
                        s.close()
                else:
                    pending[k.fd] = (s, buf)
        for fd, (s, _) in pending.items():
            sel.unregister(s)
            s.close()
            failures += 1
            first_error = first_error or "handshake timed out"
        i += n
    ready_q.put((len(socks), failures, first_error))
    # Hold the sockets; answer pings so a heartbeat cannot time them out.
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    pending_bytes = {}  # socket -> bytes of a frame not yet complete
    while not stop_evt.is_set():
        for k, _ in sel.select(timeout=0.5):
            s = k.fileobj
            try:
                d = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            if not d:
                sel.unregister(s)
                pending_bytes.pop(s, None)
                continue
            buf = pending_bytes.pop(s, b"") + d
            while (got := decode_frame(buf)) is not None:
                frame, used = got
                buf = buf[used:]
                if frame.opcode == OP_PING:
                    try:
                        s.send(encode_frame(OP_PONG, frame.payload, mask_key=b"\0\0\0\0"))
                    except OSError:
                        pass
            if buf:
                pending_bytes[s] = buf
    for s in socks:
        s.close()


def health_connections(host, port):
    st, _, body = http_request(host, port, "GET", "/health", timeout=10)
    return json.loads(body)["connections"] if st == 200 else None


def settle_rss(pid, seconds=1.0):
    """RSS after it stops moving (the server may still be finishing work)."""
    last = proc_status_bytes(pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(seconds / 4)
        now = proc_status_bytes(pid)
        if now == last:
            return now
        last = now
    return last


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="start this wsgate binary (else measure --port/--pid)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int)
    ap.add_argument("--pid", type=int, help="pid of the running server (with --port)")
    ap.add_argument("--connections", "-n", type=int, default=10000)
    ap.add_argument("--per-process", type=int, default=15000)
    ap.add_argument("--per-ip", type=int, default=50)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra flag for the server started with --bin (repeatable)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()

    server = None
    if a.bin:
        flags = ["--max-connections", str(a.connections + 1000),
                 "--max-open-connections-per-ip", str(a.connections + 1000), "--heartbeat-interval-ms", "600000",
                 "--idle-timeout-ms", "3600000", "--ip-window-ms", "600000"] + a.server_arg
        server = WsgateServer(*flags, binary=a.bin).start()
        host, port, pid = server.host, server.port, server.pid
    else:
        if not (a.port and a.pid):
            ap.error("give --bin, or --port and --pid of a running server")
        host, port, pid = a.host, a.port, a.pid

    n = a.connections
    nproc = max(1, -(-n // a.per_process))
    ctx = mp.get_context("fork")
    ready_q = ctx.Queue()
    stop_evt = ctx.Event()
    procs = []
    try:
        warm = health_connections(host, port)  # connections already open
        rss_before = settle_rss(pid)
        anon_before = proc_status_bytes(pid, "RssAnon")
        t0 = time.monotonic()
        base, per = 0, -(-n // nproc)
        for w in range(nproc):
            cnt = min(per, n - base)
            p = ctx.Process(target=worker, args=(host, port, base, cnt, a.per_ip, a.batch, ready_q, stop_evt),
                            daemon=True)
            p.start()
            procs.append(p)
            base += cnt
        ok = fail = 0
        errors = []
        for _ in procs:
            o, f, e = ready_q.get(timeout=600)
            ok, fail = ok + o, fail + f
            if e:
                errors.append(e)
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 30
        conns = None
        while time.monotonic() < deadline:
            conns = health_connections(host, port)
            if conns is not None and conns >= (warm or 0) + ok:
                break
            time.sleep(0.1)
        rss_after = settle_rss(pid)
        anon_after = proc_status_bytes(pid, "RssAnon")
        delta = rss_after - rss_before
        result = {
            "connections_requested": n, "connections_open": ok, "failed": fail,
            "server_reports_connections": conns, "processes": nproc,
            "rss_before_bytes": rss_before, "rss_after_bytes": rss_after,
            "rss_delta_bytes": delta, "rss_bytes_per_connection": round(delta / ok, 1) if ok else None,
            "rss_anon_delta_bytes": anon_after - anon_before,
            "rss_anon_bytes_per_connection": round((anon_after - anon_before) / ok, 1) if ok else None,
            "connect_seconds": round(elapsed, 2),
        }
        if errors:
            result["first_errors"] = errors[:3]
        if a.json:
            print(json.dumps(result))
        else:
            print(f"idle connections: {ok} open ({fail} failed) in {nproc} client processes, "
                  f"server reports {conns}; connected in {elapsed:.1f}s")
            print(f"server RSS: {rss_before / 1048576:.1f} MiB before, {rss_after / 1048576:.1f} MiB after")
            if ok:
                print(f"RSS per idle connection: {delta / ok:.0f} bytes "
                      f"(anonymous memory only: {(anon_after - anon_before) / ok:.0f} bytes)")
            if errors:
                print(f"first errors: {errors[:3]}")
        return 0 if ok == n else 1
    finally:
        stop_evt.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        if server:
            server.stop()


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
