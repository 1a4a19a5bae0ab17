"""A real node against misbehaving peers and signals.

Garbage on the socket must close only the offending connection (and be
logged); silent peers are dropped after the handshake timeout; SIGTERM and
SIGINT stop the node cleanly.  Raw connections use blocking sockets, run in a
thread so the test's event loop (and its well-behaved client) keeps running.
"""

from __future__ import annotations

import array
import asyncio
import errno
import os
import random
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waits import round_trip

import objstore
from objstore.errors import NodeUnavailableError
from objstore.protocol import encode_frame, pb

pytestmark = pytest.mark.timeout(30)

HEADER = struct.Struct("<I")
HELPERS = Path(__file__).parent / "_helpers"
WARNINGS = ("protocol error", "handshake failed")


# --------------------------------------------------------------------------- raw sockets


def raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.connect(path)
    return sock


def _recv(sock: socket.socket, n: int) -> bytes:
    """Up to ``n`` bytes; file descriptors that come along are closed at once."""
    data, anc, _, _ = sock.recvmsg(n, socket.CMSG_SPACE(16))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % 4])
            for fd in fds:
                os.close(fd)
    return data


def recv_frame(sock: socket.socket) -> bytes:
    buf = b""
    need = 4
    while len(buf) < need:
        data = _recv(sock, need - len(buf))
        if not data:
            raise ConnectionError(f"closed after {len(buf)} bytes of a frame")
        buf += data
        if need == 4 and len(buf) >= 4:
            need = 4 + HEADER.unpack_from(buf)[0]
    return buf[4:]


def send_hello(sock: socket.socket, version: int = 1, segment: int = 0) -> pb.HelloReply:
    hello = pb.Hello(version=version, segment=segment, pid=os.getpid())
    sock.sendall(encode_frame(hello.SerializeToString()))
    return pb.HelloReply.FromString(recv_frame(sock))


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send, ignoring a node that already hung up (it may close mid-way)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def wait_closed(sock: socket.socket, timeout: float = 2.0) -> tuple[bool, bytes]:
    """Read until the node closes: (closed within ``timeout``, bytes received)."""
    got = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, got
            sock.settimeout(left)
            try:
                data = _recv(sock, 65536)
            except TimeoutError:
                return False, got
            if not data:
                return True, got
            got += data
    except ConnectionResetError:
        return True, got
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return True, got
        raise
    finally:
        sock.close()


def replies(data: bytes) -> list[bytes]:
    out = []
    while len(data) >= 4:
        (n,) = HEADER.unpack_from(data)
        out.append(data[4 : 4 + n])
        data = data[4 + n :]
    return out


def warning_count(node: Any) -> int:
    text = node.stderr()
    return sum(text.count(w) for w in WARNINGS)


def _garbage(rng: random.Random, n: int, parses: Callable[[bytes], bool]) -> bytes:
    """``n`` random bytes that ``parses`` rejects."""
    for _ in range(1000):
        data = rng.randbytes(n)
        if not parses(data):
            return data
    raise AssertionError("no unparsable garbage found")


def _parses(msg: type) -> Callable[[bytes], bool]:
    def check(data: bytes) -> bool:
        try:
            parsed = msg.FromString(data)
        except DecodeError:
            return False
        return msg is not pb.Request or parsed.WhichOneof("body") is not None

    return check


# --------------------------------------------------------------------------- the cases
# Each sends something wrong and returns (closed, bytes received); `True` in the
# table says the node must log a warning for it.


def case_random_bytes(path: str, size: int, seed: int) -> tuple[bool, bytes]:
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    data[3] |= 0x01  # length prefix > 16 MiB: no plausible hello
    sock = raw_connect(path)
    send_quietly(sock, bytes(data))
    return wait_closed(sock)


def case_plausible_hello_garbage(path: str, size: int, seed: int) -> tuple[bool, bytes]:
    garbage = _garbage(random.Random(seed), size, _parses(pb.Hello))
    sock = raw_connect(path)
    send_quietly(sock, encode_frame(garbage))
    return wait_closed(sock)


def case_oversized_hello(path: str) -> tuple[bool, bytes]:
    sock = raw_connect(path)
    send_quietly(sock, HEADER.pack(0xFFFFFFFF) + b"\x08\x01" * 8)
    return wait_closed(sock)


def case_oversized_request(path: str) -> tuple[bool, bytes]:
    sock = raw_connect(path)
    assert not send_hello(sock).HasField("error")
    send_quietly(sock, HEADER.pack(0xFFFFFFFF) + b"\x08\x01" * 8)
    return wait_closed(sock)


def case_truncated_hello(path: str) -> tuple[bool, bytes]:
    sock = raw_connect(path)
    frame = encode_frame(pb.Hello(version=1, pid=1).SerializeToString())
    sock.sendall(frame[:-2])
    sock.shutdown(socket.SHUT_WR)
    return wait_closed(sock)


def case_truncated_request(path: str) -> tuple[bool, bytes]:
    sock = raw_connect(path)
    assert not send_hello(sock).HasField("error")
    req = pb.Request(id=1)
    req.put_inline.object_id = os.urandom(20)
    req.put_inline.data = b"x" * 1000
    frame = encode_frame(req.SerializeToString())
    sock.sendall(frame[:500])
    sock.shutdown(socket.SHUT_WR)
    return wait_closed(sock)


def case_hello_then_garbage(path: str, size: int, seed: int) -> tuple[bool, bytes]:
    garbage = _garbage(random.Random(seed), size, _parses(pb.Request))
    sock = raw_connect(path)
    assert not send_hello(sock).HasField("error")
    send_quietly(sock, encode_frame(garbage))
    return wait_closed(sock)


def case_hello_then_random_stream(path: str, seed: int) -> tuple[bool, bytes]:
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(256))
    data[3] |= 0x40  # length prefix > 1 GiB: over the node's frame limit
    sock = raw_connect(path)
    assert not send_hello(sock).HasField("error")
    send_quietly(sock, bytes(data))
    return wait_closed(sock)


def case_hello_and_garbage_in_one_write(path: str) -> tuple[bool, bytes]:
    garbage = _garbage(random.Random(13), 64, _parses(pb.Request))
    hello = pb.Hello(version=1, segment=0, pid=os.getpid()).SerializeToString()
    sock = raw_connect(path)
    send_quietly(sock, encode_frame(hello) + encode_frame(garbage))
    reply = pb.HelloReply.FromString(recv_frame(sock))
    assert not reply.HasField("error"), reply
    return wait_closed(sock)


def case_wrong_version(path: str) -> tuple[bool, bytes]:
    sock = raw_connect(path)
    reply = send_hello(sock, version=99)
    assert reply.HasField("error"), reply
    assert reply.error.code == pb.ERROR_CODE_PROTOCOL, reply
    assert "99" in reply.error.message
    return wait_closed(sock)


def case_empty_body(path: str) -> tuple[bool, bytes]:
    sock = raw_connect(path)
    assert not send_hello(sock).HasField("error")
    send_quietly(sock, encode_frame(pb.Request(id=1).SerializeToString()))
    return wait_closed(sock)


def case_unknown_body(path: str) -> tuple[bool, bytes]:
    sock = raw_connect(path)
    assert not send_hello(sock).HasField("error")
    # id=1, then field 99 (varint 5): a body from some future protocol.
    payload = pb.Request(id=1).SerializeToString() + b"\x98\x06\x05"
    assert pb.Request.FromString(payload).WhichOneof("body") is None
    send_quietly(sock, encode_frame(payload))
    return wait_closed(sock)


CASES: dict[str, tuple[Callable[..., tuple[bool, bytes]], tuple[Any, ...], bool]] = {
    "random-4": (case_random_bytes, (4, 1), True),
    "random-17": (case_random_bytes, (17, 2), True),
    "random-100": (case_random_bytes, (100, 3), True),
    "random-4096": (case_random_bytes, (4096, 4), True),
    "random-65536": (case_random_bytes, (65536, 5), True),
    "plausible-hello-garbage-3": (case_plausible_hello_garbage, (3, 6), True),
    "plausible-hello-garbage-40": (case_plausible_hello_garbage, (40, 7), True),
    "plausible-hello-garbage-4000": (case_plausible_hello_garbage, (4000, 8), True),
    "oversized-hello": (case_oversized_hello, (), True),
    "oversized-request": (case_oversized_request, (), True),
    "truncated-hello": (case_truncated_hello, (), True),
    "truncated-request": (case_truncated_request, (), True),
    "hello-then-garbage-5": (case_hello_then_garbage, (5, 9), True),
    "hello-then-garbage-300": (case_hello_then_garbage, (300, 10), True),
    "hello-then-garbage-50000": (case_hello_then_garbage, (50000, 11), True),
    "hello-then-random-stream": (case_hello_then_random_stream, (12,), True),
    "hello-and-garbage-in-one-write": (case_hello_and_garbage_in_one_write, (), True),
    "wrong-version": (case_wrong_version, (), True),
    "empty-body": (case_empty_body, (), True),
    "unknown-body": (case_unknown_body, (), True),
}


async def _check_client_works(client: objstore.Client, ref: objstore.ObjectRef) -> None:
    async with asyncio.timeout(5):
        arr = await client.get(ref)
        np.testing.assert_array_equal(arr, np.arange(100_000))
        del arr
        ref2 = await client.put(b"still here" * 10_000)
        assert bytes(await client.get(ref2)) == b"still here" * 10_000
        await client.delete(ref2)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
async def test_garbage_closes_only_that_connection(node, case: str) -> None:
    func, args, must_warn = CASES[case]
    async with objstore.connect(node.socket) as client:
        ref = await client.put(np.arange(100_000))
        before = warning_count(node)
        closed, got = await asyncio.to_thread(func, node.socket, *args)
        assert closed, f"{case}: the node kept the connection open (received {got[:200]!r})"
        if case != "wrong-version":
            # Nothing but possibly error replies: never a session's worth of data.
            for frame in replies(got):
                reply = pb.Reply.FromString(frame)
                assert reply.HasField("error"), reply
        await _check_client_works(client, ref)
        async with objstore.connect(node.socket) as fresh:
            np.testing.assert_array_equal(await fresh.get(ref, timeout=5), np.arange(100_000))
            st = await fresh.stats()
            assert st["objects"] == 1 and st["creating"] == 0, st
        deadline = time.monotonic() + 10
        while (await client.stats())["clients"] != 1:
            assert time.monotonic() < deadline, "the bad connection is still counted"
            await asyncio.sleep(0.01)
        if must_warn:
            deadline = time.monotonic() + 10
            while warning_count(node) <= before:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{case}: the node logged no warning ({' / '.join(WARNINGS)}); "
                        f"its stderr:\n{node.stderr()}"
                    )
                await asyncio.sleep(0.01)


async def test_request_pipelined_behind_hello_is_served(node) -> None:
    def go() -> list[pb.Reply]:
        sock = raw_connect(node.socket)
        hello = pb.Hello(version=1, segment=0, pid=os.getpid()).SerializeToString()
        req = pb.Request(id=7)
        req.put_inline.object_id = b"\x01" * 20
        req.put_inline.data = b"pipelined"
        req.put_inline.metadata = b"objstore/raw"
        stats = pb.Request(id=8)
        stats.stats.SetInParent()
        sock.sendall(
            encode_frame(hello)
            + encode_frame(req.SerializeToString())
            + encode_frame(stats.SerializeToString())
        )
        try:
            assert not pb.HelloReply.FromString(recv_frame(sock)).HasField("error")
            return [pb.Reply.FromString(recv_frame(sock)) for _ in range(2)]
        finally:
            sock.close()

    put, stats = await asyncio.to_thread(go)
    assert put.id == 7 and put.HasField("put") and not put.HasField("error"), put
    assert stats.id == 8 and stats.stats.objects == 1, stats


async def test_wrong_segment_hello_gets_an_error(node) -> None:
    def go() -> tuple[pb.HelloReply, tuple[bool, bytes]]:
        sock = raw_connect(node.socket)
        reply = send_hello(sock, segment=4242)
        return reply, wait_closed(sock)

    reply, (closed, _) = await asyncio.to_thread(go)
    assert reply.HasField("error") and reply.error.code == pb.ERROR_CODE_NOT_FOUND, reply
    assert closed


async def test_arbitrary_bytes_then_eof_never_hurt_the_node(node) -> None:
    """Hypothesis: whatever a peer sends (before or after Hello), then EOF, the
    node closes that connection within 2 s and keeps serving."""
    async with objstore.connect(node.socket) as client:
        ref = await client.put(np.arange(100_000))

        @settings(
            max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(after_hello=st.booleans(), framed=st.booleans(), payload=st.binary(max_size=3000))
        def check(after_hello: bool, framed: bool, payload: bytes) -> None:
            sock = raw_connect(node.socket)
            if after_hello:
                assert not send_hello(sock).HasField("error")
            send_quietly(sock, encode_frame(payload) if framed else payload)
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            closed, _ = wait_closed(sock)
            assert closed

        await asyncio.to_thread(check)
        await _check_client_works(client, ref)
        st_ = await client.stats()
        deadline = time.monotonic() + 10
        while st_["clients"] != 1 or st_["creating"] != 0 or st_["objects"] != 1:
            assert time.monotonic() < deadline, st_
            await asyncio.sleep(0.02)
            st_ = await client.stats()


_IDS = st.one_of(
    st.binary(min_size=20, max_size=20),
    st.binary(max_size=30),
    st.sampled_from([b"\x01" * 20, b"\x02" * 20]),
)
_U64 = st.one_of(
    st.integers(0, 1 << 20), st.sampled_from([0, 1, 1 << 27, 200 << 20, 2**63, 2**64 - 1])
)
_I64 = st.one_of(st.integers(-5, 50), st.sampled_from([-(2**63), -1, 2**63 - 1]))
_KINDS = [
    "put_inline",
    "create",
    "seal",
    "abort",
    "get",
    "release",
    "delete",
    "wait",
    "contains",
    "stats",
    "list_objects",
]


@st.composite
def _requests(draw: Any) -> pb.Request:
    """A well-formed Request with arbitrary (often nonsensical) field values."""
    r = pb.Request(id=draw(st.integers(0, 2**64 - 1)))
    kind = draw(st.sampled_from(_KINDS))
    oid, oid2, name = draw(_IDS), draw(_IDS), draw(st.sampled_from(["", "n", "é"]))
    if kind == "put_inline":
        r.put_inline.object_id = oid
        r.put_inline.data = draw(st.binary(max_size=100))
        r.put_inline.metadata = draw(st.sampled_from([b"objstore/raw", b"", b"junk"]))
        r.put_inline.name = name
    elif kind == "create":
        r.create.object_id = oid
        r.create.data_size = draw(_U64)
        r.create.name = name
    elif kind == "seal":
        r.seal.object_id = oid
    elif kind == "abort":
        r.abort.object_id = oid
    elif kind == "get":
        r.get.object_ids.extend([oid, oid2][: draw(st.integers(0, 2))])
        r.get.name = name
        r.get.timeout_ms = draw(_I64)
    elif kind == "release":
        r.release.object_ids.extend([oid, oid2])
    elif kind == "delete":
        r.delete.object_ids.append(oid)
        r.delete.name = name
    elif kind == "wait":
        r.wait.object_ids.extend([oid, oid2][: draw(st.integers(0, 2))])
        r.wait.num_returns = draw(st.integers(0, 2**32 - 1))
        r.wait.timeout_ms = draw(_I64)
    elif kind == "contains":
        r.contains.object_id = oid
    elif kind == "stats":
        r.stats.SetInParent()
    else:
        r.list_objects.limit = draw(st.integers(0, 2**32 - 1))
    return r


@pytest.mark.slow
async def test_nonsensical_requests_never_hurt_the_node(node) -> None:
    """Hypothesis: well-formed requests with arbitrary values (bad ids, huge sizes,
    odd timeouts, seals and aborts of others' objects...) get replies or errors,
    never a crash, a traceback or a stalled loop; all is cleaned up on disconnect."""
    async with objstore.connect(node.socket) as client:
        ref = await client.put(np.arange(100_000))

        @settings(
            max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(reqs=st.lists(_requests(), min_size=1, max_size=8))
        def check(reqs: list[pb.Request]) -> None:
            sock = raw_connect(node.socket)
            assert not send_hello(sock).HasField("error")
            send_quietly(sock, b"".join(encode_frame(r.SerializeToString()) for r in reqs))
            time.sleep(0.005)
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            closed, _ = wait_closed(sock, 3.0)
            assert closed

        await asyncio.to_thread(check)
        await _check_client_works(client, ref)
        deadline = time.monotonic() + 10
        while True:
            st_ = await client.stats()
            if (st_["clients"], st_["creating"], st_["fallback_used"]) == (1, 0, 0) and (
                st_["objects"] == 1 or st_["objects"] == 1 + len(await _named(client))
            ):
                break
            assert time.monotonic() < deadline, st_
            await asyncio.sleep(0.02)
        assert node.proc.poll() is None


async def _named(client: objstore.Client) -> list[str]:
    objects, _ = await client.list_objects()
    return [o["name"] for o in objects if o["name"]]


@pytest.mark.slow
async def test_silent_client_dropped_after_handshake_timeout(node) -> None:
    async with objstore.connect(node.socket) as client:
        ref = await client.put(np.arange(100_000))
        sock = await asyncio.to_thread(raw_connect, node.socket)
        t0 = time.monotonic()
        waiter = asyncio.create_task(asyncio.to_thread(wait_closed, sock, 20.0))
        # The others are served as usual meanwhile.
        ops = 0
        while not waiter.done():
            await _check_client_works(client, ref)
            ops += 1
            await asyncio.sleep(0.05)
        closed, got = await waiter
        elapsed = time.monotonic() - t0
        assert closed and got == b""
        # Dropped at the 5 s handshake timeout: not before, and not left open (generous
        # upper bound for a loaded machine).
        assert 4.0 < elapsed < 15.0, elapsed
        assert ops > 10
        assert "handshake failed" in node.stderr()
        await _check_client_works(client, ref)
        assert (await client.stats())["clients"] == 1


# --------------------------------------------------------------------------- signals


def _wait_exit(node: Any, timeout: float) -> int:
    try:
        return node.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"node did not exit within {timeout}s:\n{node.stderr()}") from None


async def test_sigterm_with_connected_clients(node_factory) -> None:
    """Clients in every state: holding a view, waiting in a get, mid-handshake
    (silent), and with an unsealed object (another process)."""
    node = node_factory()
    # reconnect=False: calls after the node stops fail (they would wait for a new node).
    c1 = await objstore.connect(node.socket, reconnect=False)
    c2 = await objstore.connect(node.socket, reconnect=False)
    silent = await asyncio.to_thread(raw_connect, node.socket)
    creator = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HELPERS / "raw_create.py"),
        node.socket,
        str(1 << 20),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert creator.stdout is not None
        async with asyncio.timeout(10):
            assert b'"created"' in await creator.stdout.readline()
        ref = await c2.put(np.arange(1_000_000))
        view = await c1.get(ref)
        pending = asyncio.create_task(c1.get(objstore.ObjectRef(os.urandom(20))))
        await round_trip(c1)
        assert not pending.done()
        assert (await c2.stats())["creating"] == 1
        t0 = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(_wait_exit, node, 5.0)
        assert code == 0, node.stderr()
        assert time.monotonic() - t0 < 5.0
        assert not os.path.exists(node.socket)
        closed, _ = await asyncio.to_thread(wait_closed, silent, 1.0)
        assert closed
        async with asyncio.timeout(5):
            with pytest.raises(NodeUnavailableError):
                await pending
            with pytest.raises(NodeUnavailableError):
                await c1.put(b"x" * 100)
            with pytest.raises(NodeUnavailableError):
                await c2.get(objstore.ObjectRef(os.urandom(20)))
            with pytest.raises(NodeUnavailableError):
                await c2.stats()
            with pytest.raises(NodeUnavailableError):
                await objstore.connect(node.socket)
        # The view maps the memfd itself: it outlives the node.
        np.testing.assert_array_equal(view, np.arange(1_000_000))
        del view
    finally:
        silent.close()
        if creator.returncode is None:
            creator.kill()
        await creator.wait()
        await c1.close()
        await c2.close()


async def test_sigint_exits_zero(node_factory) -> None:
    node = node_factory()
    async with objstore.connect(node.socket, reconnect=False) as client:
        await client.put(np.arange(100_000))
        node.proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(_wait_exit, node, 5.0)
        assert code == 0, node.stderr()
        assert not os.path.exists(node.socket)
        async with asyncio.timeout(5):
            with pytest.raises(NodeUnavailableError):
                await client.stats()


@pytest.mark.slow
async def test_node_killed_clients_fail_cleanly_and_socket_is_reusable(node_factory) -> None:
    node = node_factory()
    async with objstore.connect(node.socket, reconnect=False) as client:
        ref = await client.put(np.arange(1_000_000))
        view = await client.get(ref)
        node.kill()
        async with asyncio.timeout(5):
            with pytest.raises(NodeUnavailableError):
                await client.get(objstore.ObjectRef(os.urandom(20)))
        np.testing.assert_array_equal(view, np.arange(1_000_000))
        del view
    # The dead node's socket file is stale: a new node takes the path over.
    assert os.path.exists(node.socket)
    again = node_factory(socket_path=node.socket)
    async with objstore.connect(again.socket) as client:
        assert (await client.stats())["objects"] == 0
    # A live node's socket is not taken over.
    third = node_factory(socket_path=node.socket, expect_ready=False)
    code = await asyncio.to_thread(_wait_exit, third, 10.0)
    assert code != 0
    assert "live node" in third.stderr(), third.stderr()
    async with objstore.connect(again.socket) as client:
        assert (await client.stats())["clients"] == 1


# --------------------------------------------------------------------------- start-up


def test_ready_line_and_start_time(node_factory) -> None:
    t0 = time.monotonic()
    node = node_factory()
    elapsed = time.monotonic() - t0
    # Ready in about a second (imports, the arena, the socket; no prefault here); the bound
    # is for a loaded machine and catches a start that does memory-sized work before ready.
    assert elapsed < 5.0, elapsed
    ready = node.ready
    for key in ("event", "node_id", "socket", "address", "directory"):
        assert key in ready, ready
    assert ready["event"] == "ready"
    assert ready["socket"] == node.socket
    assert isinstance(ready["node_id"], str) and len(ready["node_id"]) > 0
    bytes.fromhex(ready["node_id"])


def test_socket_file_mode_0600(node) -> None:
    st_ = os.stat(node.socket)
    assert stat.S_ISSOCK(st_.st_mode)
    assert stat.S_IMODE(st_.st_mode) == 0o600, oct(st_.st_mode)
