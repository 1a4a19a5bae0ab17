"""Start a test server process on a free port of 127.0.0.1 and wait until it answers.

Shared by ``redis_server.py`` and ``s3_server.py``: the port is picked here,
the server's output goes to a log file under the caller's directory, and a
start that loses its port to another process (``Address already in use``) is
tried again on another one.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerProcess", "free_port", "start_server"]


@dataclass
class ServerProcess:
    """A running server started by :func:`start_server`."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def output(self) -> str:
        """What the server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    name: str,
    directory: Path,
    argv: Callable[[int], list[str]],
    answers: Callable[[int], bool],
    timeout: float,
) -> ServerProcess:
    """Run ``argv(port)`` until ``answers(port)``; raise with its output if it never does."""
    directory.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for attempt in range(3):  # another process may take the free port first
        port = free_port()
        log_path = directory / f"{name}-{port}.log"
        with open(log_path, "wb") as log_file:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(
                argv(port), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        server = ServerProcess(proc, port, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers(port):
                return server
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        server.stop()
        failures.append(
            f"attempt {attempt + 1} (port {port}, exit code {proc.returncode}):\n{server.output()}"
        )
        if "Address already in use" not in failures[-1]:
            break
    raise RuntimeError(f"{name} did not answer within {timeout:.0f} s:\n" + "\n".join(failures))
