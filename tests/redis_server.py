"""A real ``redis-server`` for the tests of the directory's Redis state store.

``start_redis(directory)`` starts one on a free port of 127.0.0.1 (no
persistence, files under ``directory``) and waits for it to answer PING.  The
session-scoped ``redis_url`` fixture yields its URL; a test module (or a
conftest) imports it to use it::

    from redis_server import redis_url  # noqa: F401

pytest puts ``tests/`` on ``sys.path`` (rootdir-relative ``conftest.py``, no
``__init__.py``), which is what makes that import work.  Tests share the one
server, so each must use its own key prefix.

When ``redis-server`` is not installed the fixture fails (it never skips):
``.ci/run`` installs it with ``apt-get install redis-server``.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_process import ServerProcess, start_server

__all__ = ["RedisServer", "start_redis", "redis_url", "MISSING_MESSAGE"]

START_TIMEOUT = 10.0

MISSING_MESSAGE = (
    "redis-server is not on PATH, and the directory's Redis state tests need a real one. "
    "`.ci/run` installs it (apt-get install redis-server); on this machine run "
    "`apt-get install -y redis-server`."
)


@dataclass
class RedisServer(ServerProcess):
    """A running ``redis-server`` started by :func:`start_redis`."""

    directory: Path = Path()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(directory: str | Path) -> RedisServer:
    """Start ``redis-server`` on a free port; raise with its output if it does not answer PING."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError(MISSING_MESSAGE)
    directory = Path(directory)
    server = start_server(
        "redis-server",
        directory,
        lambda port: [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--daemonize",
            "no",
        ],
        _ping,
        START_TIMEOUT,
    )
    return RedisServer(server.proc, server.port, server.log_path, directory)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a ``redis-server`` shared by the session (stopped at its end)."""
    if shutil.which("redis-server") is None:
        pytest.fail(MISSING_MESSAGE, pytrace=False)
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()
