"""pytest fixtures: the real wsgate binary on a free loopback port.

WSGATE_BIN names the binary (CMake sets it); default ../../build/wsgate.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wsgate_fixture import WsgateServer, wsgate_bin  # noqa: E402


def _finish(server):
    crashed = server.proc is not None and server.proc.poll() is not None and not server.signalled
    code = server.stop()
    if crashed:
        pytest.fail(f"wsgate exited on its own during the test (exit {code}); stderr tail:\n"
                    f"{server.stderr_text()}", pytrace=False)


@pytest.fixture
def start_server():
    """Factory: start_server(*flags) -> started WsgateServer; each is stopped
    (SIGTERM, then SIGKILL on timeout) at teardown."""
    started = []

    def start(*flags, **kw):
        s = WsgateServer(*flags, **kw).start()
        started.append(s)
        return s

    yield start
    for s in started:
        _finish(s)


@pytest.fixture(scope="module")
def server():
    """One server shared by a module's tests: defaults except a per-IP limit
    high enough for the many connections the tests open from 127.0.0.1."""
    s = WsgateServer("--max-connections-per-ip", "1000000").start()
    yield s
    _finish(s)


@pytest.fixture
def host_port(server):
    """(host, port, process) as the brief asks for."""
    return server.host, server.port, server.proc


def pytest_report_header(config):
    return f"wsgate binary: {wsgate_bin()}"
