"""Shared fixtures: real node processes on this machine.

``node_factory`` starts ``python -m objstore.node`` processes, waits for their
ready line and stops them with SIGTERM, checking that they exit 0 and that
their event loop never stalled (the node logs ``event loop blocked`` when it
does; see ``node.loop_lag_warn_ms``).  An unhandled exception in this process's
own loop fails the test that was running (``loop_errors.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from loop_errors import loop_error_handler, loop_errors  # noqa: F401  (autouse fixtures)
from tiers import pytest_collection_finish, pytest_deselected  # noqa: F401  (hooks)

# The tests of the harness itself run inner pytest sessions.
pytest_plugins = ["pytester"]

# The machine is shared and noisy: no per-example deadlines (timeouts bound tests).
settings.register_profile("objstore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("objstore")

READY_TIMEOUT = 15.0

# Heads publish their cluster token under the user's runtime directory
# (objstore/auth.py); the tests' heads publish theirs in a directory of their own.
_RUNTIME = tempfile.mkdtemp(prefix="os-run-", dir="/tmp")
os.chmod(_RUNTIME, 0o700)
os.environ["XDG_RUNTIME_DIR"] = _RUNTIME


@dataclass
class NodeProcess:
    """A running node started by the tests."""

    proc: subprocess.Popen[bytes]
    socket: str
    ready: dict[str, object]
    stderr_path: Path
    args: list[str] = field(default_factory=list)
    allow_loop_stall: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(
                    f"node did not stop within {timeout}s:\n{self.stderr()[-4000:]}"
                )
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _short_tmp() -> str:
    # Unix socket paths are limited to 107 bytes: keep them short.
    return tempfile.mkdtemp(prefix="os-", dir="/tmp")


def start_node(
    *extra: str,
    memory: str = "128MiB",
    env: dict[str, str] | None = None,
    socket_path: str | None = None,
    expect_ready: bool = True,
    directory: str | None = None,
    argv0: list[str] | None = None,
) -> NodeProcess:
    """Start a node process and wait for its ready line.

    A head node (which runs the directory) unless ``directory`` names one to join.
    ``argv0`` replaces ``python -m objstore.node`` (e.g. ``python -c CODE`` that
    installs an audit hook and then calls ``objstore.node.main.main``).
    """
    d = _short_tmp()
    sock = socket_path or os.path.join(d, "node.sock")
    stderr_path = Path(d) / "node.stderr"
    role = ["--directory", directory] if directory else ["--head"]
    args = [
        *(argv0 or [sys.executable, "-m", "objstore.node"]),
        *role,
        "--memory",
        memory,
        "--socket",
        sock,
        "--prefault",
        "0",
        "--fallback-dir",
        d,
        *extra,
    ]
    full_env = dict(os.environ)
    full_env.setdefault("OBJSTORE_NODE_LOOP_LAG_WARN_MS", "250")
    if env:
        full_env.update(env)
    with open(stderr_path, "wb") as err:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=full_env
        )
    node = NodeProcess(proc, sock, {}, stderr_path, args)
    if not expect_ready:
        return node
    deadline = time.monotonic() + READY_TIMEOUT
    assert proc.stdout is not None
    line = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.1)
        if r:
            line = proc.stdout.readline()
            break
        if proc.poll() is not None:
            break
    if not line:
        node.kill()
        raise AssertionError(f"node did not become ready:\n{node.stderr()[-4000:]}")
    node.ready = json.loads(line)
    assert node.ready["event"] == "ready"
    return node


@pytest.fixture
def node_factory() -> Iterator[type]:
    """Start nodes with ``node_factory(...)``; all are stopped (and checked) at teardown."""
    started: list[NodeProcess] = []

    def factory(*extra: str, **kw: object) -> NodeProcess:
        n = start_node(*extra, **kw)  # type: ignore[arg-type]
        started.append(n)
        return n

    yield factory  # type: ignore[misc]
    problems = []
    for n in started:
        if n.proc.poll() is None:
            code = n.stop()
            if code != 0:
                problems.append(f"node exited {code}:\n{n.stderr()[-3000:]}")
        if not n.allow_loop_stall and "event loop blocked" in n.stderr():
            problems.append(f"node event loop stalled:\n{n.stderr()[-3000:]}")
        if "Traceback" in n.stderr():
            problems.append(f"node logged a traceback:\n{n.stderr()[-3000:]}")
        shutil.rmtree(n.stderr_path.parent, ignore_errors=True)
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def node(node_factory: type) -> NodeProcess:
    """A fresh 128 MiB node."""
    return node_factory()  # type: ignore[call-arg]


# Directory settings for cluster tests: deaths are found within a couple of seconds.
CLUSTER_ENV = {
    "OBJSTORE_DIRECTORY_HEARTBEAT_S": "0.25",
    "OBJSTORE_DIRECTORY_NODE_TIMEOUT_S": "3",
}


@dataclass
class Cluster:
    """A head node (running the directory) and other nodes joined to it."""

    head: NodeProcess
    nodes: list[NodeProcess]
    factory: object

    @property
    def directory(self) -> str:
        return str(self.head.ready["directory"])

    def add_node(self, *extra: str, **kw: object) -> NodeProcess:
        env = {**CLUSTER_ENV, **kw.pop("env", {})}  # type: ignore[dict-item]
        n = self.factory(*extra, directory=self.directory, env=env, **kw)  # type: ignore[operator]
        self.nodes.append(n)
        return n


@pytest.fixture
def cluster_factory(node_factory: type) -> object:
    """``cluster_factory(n)``: a head plus ``n`` nodes, all real processes on 127.0.0.1."""

    def make(
        n: int = 2, *head_extra: str, env: dict[str, str] | None = None, memory: str = "64MiB"
    ) -> Cluster:
        full_env = {**CLUSTER_ENV, **(env or {})}
        head = node_factory(*head_extra, env=full_env, memory=memory)  # type: ignore[call-arg]
        c = Cluster(head, [], node_factory)
        for _ in range(n):
            c.add_node(env=env or {}, memory=memory)
        return c

    return make


@pytest.fixture
def cluster(cluster_factory: object) -> Cluster:
    """A head and two nodes, 64 MiB each."""
    return cluster_factory(2)  # type: ignore[operator,no-any-return]


async def run_cli(*args: str) -> tuple[int, str, str]:
    """``python -m objstore ARGS``: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "objstore",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
