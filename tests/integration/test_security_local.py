"""The local socket against other users: its directory, SO_PEERCRED, the client's check.

Real node processes; the other user is ``nobody`` (uid 65534), played by a
forked child of this process that drops to that uid (the tests run as root).
Each child runs under a deadline and reports one JSON result through a pipe.
Also here: nodes that never unpickle what crosses the network (run under an
audit hook) and the pure parts (who is admitted, how refusals are logged).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import fractions
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import objstore
from objstore._proto.local import local_pb2 as pb
from objstore.errors import AuthenticationError, ConfigError, ObjectStoreError
from objstore.plasma.server import Admission
from objstore.plasma.socketdir import check_user_dir, prepare_socket_dir
from objstore.protocol import PROTOCOL_VERSION, encode_frame
from objstore.protocol.handshake import PeerCredentials, check_node, trusted_node_uids

NOBODY = 65534
MiB = 1 << 20
ROOT_ONLY = pytest.mark.skipif(
    os.getuid() != 0,
    reason="needs root to act as uid 65534 and to chown (CI runs as root, so these run there)",
)


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A short directory (socket paths are limited to 107 bytes), removed afterwards."""
    d = tempfile.mkdtemp(prefix="osl-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_user(uid: int, fn: Callable[[], dict[str, Any]], timeout: float = 20.0) -> dict[str, Any]:
    """Run ``fn`` in a forked child as ``uid`` (no groups); its JSON-able result.

    An exception in the child comes back as ``{"error": type, "message": str}``;
    a child that overruns ``timeout`` is killed and fails the test.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            os.write(w, (json.dumps(run_as(uid, fn)) + "\n").encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the child running as uid {uid} overran {timeout}s")
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(r)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
    assert data, f"the child running as uid {uid} reported nothing (wait status {status})"
    return json.loads(data.splitlines()[-1])  # type: ignore[no-any-return]


def run_as(uid: int, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Drop to ``uid`` in this (forked) process and run ``fn``; an error becomes a result."""
    try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        return fn()
    except Exception as exc:  # noqa: BLE001  (reported to the parent, which asserts on it)
        return {"error": type(exc).__name__, "message": str(exc)}


def open_up(node_socket: str) -> None:
    """Let other users reach the socket (so SO_PEERCRED is what decides)."""
    os.chmod(os.path.dirname(node_socket), 0o711)
    os.chmod(node_socket, 0o666)


def connect_and_put(path: str) -> dict[str, Any]:
    """In a child: connect, put and get back one value."""

    async def run() -> dict[str, Any]:
        async with asyncio.timeout(10):
            async with objstore.connect(path) as c:
                ref = await c.put({"uid": os.getuid()})
                got = await c.get(ref, timeout=5)
                return {"ok": True, "got": got}

    return asyncio.run(run())


def node_stats(path: str) -> dict[str, Any]:
    """The node's counters, asked as its own user."""

    async def run() -> dict[str, Any]:
        async with asyncio.timeout(10), objstore.connect(path) as c:
            return await c.stats()

    return asyncio.run(run())


def raw_hello(path: str) -> dict[str, Any]:
    """In a child: a bare Hello on a raw socket; what came back, and how many fds."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(path)
        hello = pb.Hello(version=PROTOCOL_VERSION, segment=0, pid=os.getpid())
        sock.sendall(encode_frame(hello.SerializeToString()))
        data = b""
        fds: list[int] = []
        need = 4
        while len(data) < need:  # one frame: its length, then its bytes
            chunk, got, _, _ = socket.recv_fds(sock, need - len(data), 4)
            fds += got
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} of {need} bytes")
            data += chunk
            if len(data) == 4 == need:
                need += int.from_bytes(data, "little")
        for fd in fds:
            os.close(fd)
    finally:
        sock.close()
    reply = pb.HelloReply.FromString(data[4:])
    return {
        "fds": len(fds),
        "code": int(reply.error.code),
        "message": reply.error.message,
        "segment_size": reply.segment_size,
    }


# ---------------------------------------------------------------- pure parts
def test_admission_of_uids_and_gids() -> None:
    a = Admission(1000, (), ())
    assert not a.shared
    assert a.allows(PeerCredentials(1, 1000, 1000))
    assert not a.allows(PeerCredentials(1, NOBODY, NOBODY))
    assert not a.allows(PeerCredentials(1, 0, 0))  # root is not implied
    msg = a.refusal("/run/x.sock", PeerCredentials(7, NOBODY, NOBODY))
    assert msg == (
        "the node at /run/x.sock serves uid 1000 only; this process runs as uid 65534 "
        "(gid 65534) (allow it with node.allowed_uids, e.g. OBJSTORE_NODE_ALLOWED_UIDS=65534, "
        "or node.allowed_gids)"
    )
    b = Admission(1000, (1001,), (50,))
    assert b.shared
    assert b.allows(PeerCredentials(1, 1001, 9)) and b.allows(PeerCredentials(1, 9, 50))
    assert not b.allows(PeerCredentials(1, 9, 9))
    assert "serves uid 1000, uids 1001 and gids 50;" in b.refusal("p", PeerCredentials(1, 9, 9))


def test_client_trusts_its_uid_root_and_the_listed_uids() -> None:
    me = os.getuid()
    assert trusted_node_uids({}) == {me, 0}
    assert trusted_node_uids({"OBJSTORE_TRUSTED_NODE_UIDS": "7, 8"}) == {me, 0, 7, 8}
    check_node("p", PeerCredentials(1, 0, 0), {})
    with pytest.raises(AuthenticationError, match="served by uid 4242 .*TRUSTED_NODE_UIDS=4242"):
        check_node("/tmp/x.sock", PeerCredentials(1, 4242, 4242), {})
    check_node("p", PeerCredentials(1, 4242, 0), {"OBJSTORE_TRUSTED_NODE_UIDS": "4242"})
    with pytest.raises(ConfigError, match="numeric uids"):
        trusted_node_uids({"OBJSTORE_TRUSTED_NODE_UIDS": "bob"})


def test_own_directory_checks(short_tmp: str) -> None:
    d = os.path.join(short_tmp, "own")
    prepare_socket_dir(d, shared=False)
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    prepare_socket_dir(d, shared=True)  # other users may enter, not list
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o711
    prepare_socket_dir(d, shared=False)  # and back
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    for mode in (0o777, 0o755, 0o1777, 0o750):
        os.chmod(d, mode)
        with pytest.raises(ObjectStoreError, match=f"has mode {mode:04o}.*must be 0700"):
            prepare_socket_dir(d, shared=False)
    link = os.path.join(short_tmp, "link")
    os.symlink(d, link)
    with pytest.raises(ObjectStoreError, match="not a directory of its own"):
        prepare_socket_dir(link, shared=False)
    # $TMPDIR itself writable by others with no sticky bit: ours could be renamed away.
    os.chmod(d, 0o700)
    os.chmod(short_tmp, 0o777)
    with pytest.raises(ObjectStoreError, match=f"a directory above the socket, {short_tmp}, may"):
        prepare_socket_dir(d, shared=False)
    os.chmod(short_tmp, 0o700)


def test_chosen_directory_checks(short_tmp: str) -> None:
    d = os.path.join(short_tmp, "d")
    os.mkdir(d)
    for mode in (0o700, 0o755, 0o1777, 0o1770):
        os.chmod(d, mode)
        check_user_dir(d)
    for mode in (0o777, 0o775, 0o757):
        os.chmod(d, mode)
        with pytest.raises(ObjectStoreError, match=f"may be written by other users.*{mode:04o}"):
            check_user_dir(d)
    # A writable directory above it is as bad: the socket's directory could be renamed away.
    os.chmod(d, 0o700)
    inner = os.path.join(d, "inner")
    os.mkdir(inner, 0o700)
    os.chmod(d, 0o777)
    with pytest.raises(
        ObjectStoreError, match=f"a directory above the socket, {d}, may be written"
    ):
        check_user_dir(inner)


# ---------------------------------------------------------------- the socket directory
def _default_socket(tmpdir: str) -> str:
    """The node's default socket path when its $TMPDIR is ``tmpdir``."""
    return os.path.join(tmpdir, f"objstore-{os.getuid()}", "node.sock")


def _start_fails(node_factory: Any, sock: str, env: dict[str, str]) -> str:
    n = node_factory(socket_path=sock, env=env, expect_ready=False, memory="16MiB")
    code = n.proc.wait(15)
    err = n.stderr()
    assert code == 1, err
    assert "Traceback" not in err, err
    return err  # type: ignore[no-any-return]


@ROOT_ONLY
@pytest.mark.slow
def test_default_directory_made_by_someone_else_is_refused(node_factory, short_tmp) -> None:
    sock = _default_socket(short_tmp)
    d = os.path.dirname(sock)
    env = {"TMPDIR": short_tmp}
    # Pre-created world-writable: anyone could have put their own node.sock there.
    os.mkdir(d)
    os.chmod(d, 0o777)
    err = _start_fails(node_factory, sock, env)
    assert (
        f"objstore.node: cannot start: plasma.socket: the socket directory {d} has mode 0777" in err
    )
    assert "must be 0700" in err
    # Pre-created by another user, even with a private mode.
    os.chmod(d, 0o700)
    os.chown(d, NOBODY, NOBODY)
    err = _start_fails(node_factory, sock, env)
    assert f"the socket directory {d} belongs to another user (owner uid {NOBODY}" in err
    assert "can replace the node's socket" in err


@ROOT_ONLY
@pytest.mark.slow
def test_default_directory_is_made_private(node_factory, short_tmp) -> None:
    os.chmod(short_tmp, 0o711)  # stands for /tmp: other users pass through
    sock = _default_socket(short_tmp)
    n = node_factory(socket_path=sock, env={"TMPDIR": short_tmp}, memory="16MiB")
    assert n.ready["socket"] == sock
    assert stat.S_IMODE(os.lstat(os.path.dirname(sock)).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
    assert n.stop() == 0
    # Admitting other users: the directory becomes enterable, the socket connectable.
    env = {"TMPDIR": short_tmp, "OBJSTORE_NODE_ALLOWED_UIDS": str(NOBODY)}
    n = node_factory(socket_path=sock, env=env, memory="16MiB")
    assert stat.S_IMODE(os.lstat(os.path.dirname(sock)).st_mode) == 0o711
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o666
    got = as_user(NOBODY, lambda: connect_and_put(sock))
    assert got == {"ok": True, "got": {"uid": NOBODY}}


@ROOT_ONLY
@pytest.mark.slow
def test_chosen_directory_others_control_is_refused(node_factory, short_tmp) -> None:
    d = os.path.join(short_tmp, "s")
    os.mkdir(d)
    os.chmod(d, 0o777)
    err = _start_fails(node_factory, os.path.join(d, "node.sock"), {})
    assert f"plasma.socket: the socket directory, {d}, may be written by other users" in err
    os.chmod(d, 0o755)
    os.chown(d, NOBODY, NOBODY)
    err = _start_fails(node_factory, os.path.join(d, "node.sock"), {})
    assert f"the socket directory, {d}, belongs to another user (owner uid {NOBODY}" in err
    # A /tmp-like directory (sticky) is fine, and so is a stale socket of our own in it.
    os.chown(d, 0, 0)
    os.chmod(d, 0o1777)
    n = node_factory(socket_path=os.path.join(d, "node.sock"), memory="16MiB")
    assert stat.S_IMODE(os.lstat(n.socket).st_mode) == 0o600


@ROOT_ONLY
@pytest.mark.slow
def test_a_socket_another_user_left_in_a_sticky_directory_is_refused(
    node_factory, short_tmp
) -> None:
    os.chmod(short_tmp, 0o711)
    d = os.path.join(short_tmp, "t")
    os.mkdir(d)
    os.chmod(d, 0o1777)
    sock = os.path.join(d, "node.sock")

    def plant() -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(sock)  # left behind, not listening: a stale socket of nobody's
        return {"planted": True}

    assert as_user(NOBODY, plant) == {"planted": True}
    err = _start_fails(node_factory, sock, {})
    assert f"plasma.socket: {sock} exists and belongs to another user (owner uid {NOBODY}" in err


# ---------------------------------------------------------------- SO_PEERCRED
@ROOT_ONLY
@pytest.mark.slow
def test_another_uid_is_refused_and_gets_no_fd(node_factory) -> None:
    n = node_factory(memory="16MiB")
    open_up(n.socket)
    expected = (
        f"the node at {n.socket} serves uid 0 only; this process runs as uid {NOBODY} "
        f"(gid {NOBODY}) (allow it with node.allowed_uids"
    )
    got = as_user(NOBODY, lambda: connect_and_put(n.socket))
    assert got["error"] == "AuthenticationError", got
    assert got["message"].startswith(expected), got
    raw = as_user(NOBODY, lambda: raw_hello(n.socket))
    assert raw["fds"] == 0, raw
    assert raw["code"] == pb.ERROR_CODE_UNAUTHENTICATED, raw
    assert raw["message"].startswith(expected) and raw["segment_size"] == 0, raw
    # The node's own uid works as before, and the node still serves after the refusals.
    got = connect_and_put(n.socket)
    assert got == {"ok": True, "got": {"uid": 0}}
    assert node_stats(n.socket)["refused_clients"] == 2
    err = n.stderr()
    # Two refusals of one uid within a minute: one line.
    assert err.count("local client refused: its uid is not allowed on this socket") == 1, err
    assert f"uid={NOBODY}" in err


@ROOT_ONLY
@pytest.mark.slow
def test_another_uid_is_admitted_with_allowed_uids(node_factory) -> None:
    n = node_factory(memory="16MiB", env={"OBJSTORE_NODE_ALLOWED_UIDS": str(NOBODY)})
    # The node opened the socket itself; the directory is the test's (0700): open it.
    assert stat.S_IMODE(os.lstat(n.socket).st_mode) == 0o666
    os.chmod(os.path.dirname(n.socket), 0o711)
    got = as_user(NOBODY, lambda: connect_and_put(n.socket))
    assert got == {"ok": True, "got": {"uid": NOBODY}}
    raw = as_user(NOBODY, lambda: raw_hello(n.socket))
    assert raw["fds"] == 1 and raw["code"] == 0 and raw["segment_size"] > 0, raw
    assert connect_and_put(n.socket) == {"ok": True, "got": {"uid": 0}}
    # By primary group instead: uid 65534 with gid 65534.
    m = node_factory(memory="16MiB", env={"OBJSTORE_NODE_ALLOWED_GIDS": str(NOBODY)})
    os.chmod(os.path.dirname(m.socket), 0o711)
    assert as_user(NOBODY, lambda: connect_and_put(m.socket)) == {
        "ok": True,
        "got": {"uid": NOBODY},
    }


@ROOT_ONLY
def test_client_refuses_a_socket_another_user_serves(short_tmp) -> None:
    """A process of another user bound the path: the client says so and sends nothing."""
    os.chmod(short_tmp, 0o711)
    d = os.path.join(short_tmp, "fake")
    os.mkdir(d)
    os.chown(d, NOBODY, NOBODY)
    sock = os.path.join(d, "node.sock")
    ready_r, ready_w = os.pipe()

    def pose() -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(sock)
        os.chmod(sock, 0o666)
        s.listen(4)
        os.write(ready_w, b"x")
        s.settimeout(10)
        received = []
        for _ in range(2):
            conn, _ = s.accept()
            conn.settimeout(0.5)
            try:
                received.append(len(conn.recv(4096)))
            except TimeoutError:
                received.append(-1)
            conn.close()
        return {"received": received}

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, json.dumps(run_as(NOBODY, pose)).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(ready_w)
    try:
        ready, _, _ = select.select([ready_r], [], [], 10)
        assert ready, "the posing process did not start"

        async def attempt() -> None:
            async with objstore.connect(sock):
                pass

        with pytest.raises(AuthenticationError) as info:
            asyncio.run(attempt())
        msg = str(info.value)
        assert f"the socket {sock} is served by uid {NOBODY}" in msg
        assert f"OBJSTORE_TRUSTED_NODE_UIDS={NOBODY}" in msg
        # Trusted on purpose: the client goes on and sends its hello.
        os.environ["OBJSTORE_TRUSTED_NODE_UIDS"] = str(NOBODY)
        try:
            with pytest.raises(objstore.errors.NodeUnavailableError):
                asyncio.run(attempt())
        finally:
            del os.environ["OBJSTORE_TRUSTED_NODE_UIDS"]
        ready, _, _ = select.select([r], [], [], 15)
        assert ready
        out = json.loads(os.read(r, 65536))
    finally:
        os.close(r)
        os.close(ready_r)
        os.waitpid(pid, 0)
    # The refused attempt sent nothing (no hello, no pid); the trusted one sent its hello.
    assert out["received"][0] in (0, -1), out
    assert out["received"][1] > 0, out


# ---------------------------------------------------------------- no unpickling on nodes
# Run a node under an audit hook: unpickling any global ("pickle.find_class")
# appends to the file named by $OBJSTORE_TEST_UNPICKLE_MARK.
_AUDITED_NODE = """\
import os, sys, traceback
_mark = os.environ["OBJSTORE_TEST_UNPICKLE_MARK"]
def _hook(event, args):
    if event == "pickle.find_class":
        with open(_mark, "a") as f:
            f.write(f"{args!r}\\n{''.join(traceback.format_stack(limit=12))}\\n")
sys.addaudithook(_hook)
if sys.argv[1:2] == ["--self-test"]:
    import collections, pickle
    pickle.loads(pickle.dumps(collections.OrderedDict(a=1)))
    sys.exit(0)
from objstore.node.main import main
main()
"""


def _value() -> dict[str, Any]:
    """A value whose pickle names globals (so unpickling it calls find_class)."""
    return {
        "od": collections.OrderedDict([("b", 2), ("a", 1)]),
        "when": datetime.date(2024, 2, 29),
        "third": fractions.Fraction(1, 3),
        "array": np.arange(256 * 1024, dtype=np.int32),  # 1 MiB, out of band
    }


def _same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    return (
        type(got["od"]) is collections.OrderedDict
        and list(got["od"].items()) == list(want["od"].items())
        and got["when"] == want["when"]
        and got["third"] == want["third"]
        and np.array_equal(got["array"], want["array"])
    )


def test_the_audit_hook_sees_unpickling(tmp_path: Path) -> None:
    """The hook the nodes run under does record an unpickled global."""
    mark = tmp_path / "mark"
    env = {**os.environ, "OBJSTORE_TEST_UNPICKLE_MARK": str(mark)}
    done = subprocess.run(
        [sys.executable, "-c", _AUDITED_NODE, "--self-test"], env=env, timeout=30, check=False
    )
    assert done.returncode == 0
    assert "('collections', 'OrderedDict')" in mark.read_text()


@pytest.mark.slow
async def test_nodes_never_unpickle_what_they_store_move_or_spill(node_factory, tmp_path) -> None:
    mark = tmp_path / "unpickled"
    argv0 = [sys.executable, "-c", _AUDITED_NODE]
    env = {
        "OBJSTORE_TEST_UNPICKLE_MARK": str(mark),
        "OBJSTORE_DIRECTORY_HEARTBEAT_S": "0.25",
        "OBJSTORE_TRANSFER_CHUNK_SIZE": "64KiB",
        "OBJSTORE_TRANSFER_MAX_BYTES_IN_FLIGHT": "1MiB",
        "OBJSTORE_PLASMA_FALLBACK_MAX_BYTES": "0",
        "OBJSTORE_SPILL_MIN_SPILLING_SIZE": "1MiB",
    }
    spill = tmp_path / "spill"
    head = node_factory("--spill", str(spill), argv0=argv0, env=env, memory="16MiB")
    other = node_factory(
        argv0=argv0, env=env, memory="32MiB", directory=str(head.ready["directory"])
    )
    want = _value()
    async with objstore.connect(head.socket) as ch, objstore.connect(other.socket) as co:
        ref = await ch.put(want)
        moved = await co.get(ref, timeout=20)  # pulled over the data plane
        assert _same(moved, want)
        del moved
        # Push it out of the head's memory: spilled, then restored for a get.
        fill = [await ch.put(bytes([i]) * (5 * MiB)) for i in range(3)]
        deadline = time.monotonic() + 20
        while (await ch.stats())["spilled_objects"] == 0:
            assert time.monotonic() < deadline, await ch.stats()
            await asyncio.sleep(0.05)
        back = await ch.get(ref, timeout=20)
        assert _same(back, want)
        assert (await ch.stats())["restored"] >= 1
        del back, fill
    assert not mark.exists(), mark.read_text()
