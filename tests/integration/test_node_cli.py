"""The node's command line as a new user meets it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import objstore
from objstore.auth import generate_token, write_token_file


def _start(
    args: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "objstore.node", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(proc.communicate(timeout=5)[1].decode())
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err.decode()
    return err.decode()


async def test_default_socket_directory_is_created() -> None:
    with tempfile.TemporaryDirectory(prefix="osd-", dir="/tmp") as tmp:
        env = {**os.environ, "TMPDIR": tmp}
        env.pop("OBJSTORE_SOCKET", None)
        proc, ready = _start(["--head", "--memory", "64MiB", "--prefault", "0"], env)
        try:
            expected = os.path.join(tmp, f"objstore-{os.getuid()}", "node.sock")
            assert ready["socket"] == expected
            assert os.stat(os.path.dirname(expected)).st_mode & 0o777 == 0o700
            # A client finds it through $OBJSTORE_SOCKET.
            os.environ["OBJSTORE_SOCKET"] = expected
            try:
                async with objstore.connect() as client:
                    ref = await client.put(b"default socket")
                    assert bytes(await client.get(ref)) == b"default socket"
            finally:
                del os.environ["OBJSTORE_SOCKET"]
        finally:
            _stop(proc)
        assert not os.path.exists(expected)


@pytest.mark.slow
def test_json_logs_and_unreachable_directory() -> None:
    """A node whose directory never answers stops with a clear error and JSON logs."""
    with tempfile.TemporaryDirectory(prefix="osd-", dir="/tmp") as tmp:
        sock = os.path.join(tmp, "n.sock")
        # A token of its own: without one it would not even try to connect.
        token = os.path.join(tmp, "token")
        write_token_file(token, generate_token())
        env = dict(os.environ, OBJSTORE_DIRECTORY_REQUEST_TIMEOUT_S="1.5")
        t0 = time.monotonic()
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "objstore.node",
                "--directory",
                "127.0.0.1:1",
                "--token-file",
                token,
                "--memory",
                "64MiB",
                "--prefault",
                "0",
                "--socket",
                sock,
                "--log-format",
                "json",
            ],
            capture_output=True,
            timeout=30,
            env=env,
            check=False,
        )
        assert time.monotonic() - t0 < 15
        assert res.returncode == 1 and res.stdout == b""
        lines = res.stderr.decode().splitlines()
        assert "cannot register with the directory at 127.0.0.1:1" in lines[-1]
        events = [json.loads(line) for line in lines[:-1] if line.strip()]
        warn = next(e for e in events if "directory" in e["event"])
        assert warn["level"] == "warning" and warn["directory"] == "127.0.0.1:1"
        assert events[-1]["event"] == "node stopped"
        assert not os.path.exists(sock)


@pytest.mark.slow
def test_config_file_and_bad_config_file() -> None:
    with tempfile.TemporaryDirectory(prefix="osd-", dir="/tmp") as tmp:
        sock = os.path.join(tmp, "n.sock")
        cfg = os.path.join(tmp, "objstore.toml")
        with open(cfg, "w") as fh:
            fh.write(f'[plasma]\nmemory = "48MiB"\nsocket = "{sock}"\nprefault_bytes = 0\n')
        proc, ready = _start(["--head", "--config", cfg], dict(os.environ))
        assert ready["memory"] == 48 << 20 and ready["socket"] == sock
        _stop(proc)
        with open(cfg, "w") as fh:
            fh.write("[plasma]\nmemroy = 1\n")
        bad = subprocess.run(
            [sys.executable, "-m", "objstore.node", "--head", "--config", cfg],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert bad.returncode == 2
        assert b"unknown setting plasma.memroy" in bad.stderr
