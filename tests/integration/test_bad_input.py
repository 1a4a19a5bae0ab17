"""Bad input gets a precise exception with a useful message, and nothing else breaks.

Every test checks the exception type and its message, then that the node (and
any other client) still serves puts and gets.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import objstore
from objstore import ObjectRef
from objstore.errors import (
    GetTimeoutError,
    NodeUnavailableError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStoreError,
    ObjectStoreFullError,
    SerializationError,
)

KiB = 1024
MiB = 1024 * KiB


async def still_works(*clients: objstore.Client) -> None:
    """Every client can still put and get, small and large, and see the others' objects."""
    refs = []
    for i, c in enumerate(clients):
        refs.append((await c.put(f"small {i}".encode()), f"small {i}".encode()))
        big = bytes([i % 256]) * (200 * KiB)
        refs.append((await c.put(big), big))
    for c in clients:
        for ref, want in refs:
            assert bytes(await c.get(ref, timeout=5)) == want


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A short directory for socket paths (107-byte limit), removed afterwards."""
    d = tempfile.mkdtemp(prefix="osb-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------- values
async def test_unpicklable_values(node) -> None:
    sock = socket.socket()
    try:
        async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
            cases = [
                (lambda: 1, "function"),
                (sock, "socket"),
                ({"nested": [1, lambda: 2]}, "dict"),
                (np.array([sock], dtype=object), "ndarray"),
            ]
            for value, what in cases:
                with pytest.raises(SerializationError) as info:
                    await a.put(value)
                assert isinstance(info.value, ObjectStoreError)
                assert isinstance(info.value, TypeError)
                msg = str(info.value)
                assert "cannot serialize" in msg and what in msg, msg
            st = await a.stats()
            assert st["objects"] == 0 and st["creating"] == 0
            await still_works(a, b)
    finally:
        sock.close()


@pytest.mark.slow
async def test_object_larger_than_memory_and_fallback(node_factory) -> None:
    node = node_factory(memory="16MiB", env={"OBJSTORE_PLASMA_FALLBACK_MAX_BYTES": "32MiB"})
    size = 48 * MiB
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        with pytest.raises(ObjectStoreFullError) as info:
            await a.put(b"\x01" * size)
        assert isinstance(info.value, MemoryError)
        msg = str(info.value)
        assert str(size) in msg or "48.0 MiB" in msg, msg  # the requested size
        assert "16.0 MiB" in msg, msg  # the capacity
        assert "32.0 MiB" in msg, msg  # the fallback's limit
        st = await a.stats()
        assert st["objects"] == 0 and st["used"] == 0 and st["fallback_used"] == 0

        # Fits in the fallback alone, then the fallback is full too.
        first = await a.put(b"\x02" * (24 * MiB))
        assert (await a.stats())["fallback_used"] >= 24 * MiB
        with pytest.raises(ObjectStoreFullError) as info:
            await b.put(b"\x03" * (24 * MiB))
        assert str(24 * MiB) in str(info.value) or "24.0 MiB" in str(info.value)
        await still_works(a, b)
        # Room comes back with a delete.
        assert await a.delete(first) == 1
        second = await b.put(b"\x03" * (24 * MiB))
        got = await a.get(second)
        assert len(got) == 24 * MiB and got[0] == 3 and got[-1] == 3
        del got


# ---------------------------------------------------------------------- refs
def test_object_ref_from_bad_hex() -> None:
    with pytest.raises(ValueError, match="40"):
        ObjectRef.from_hex("zz")
    with pytest.raises(ValueError, match="40"):
        ObjectRef.from_hex("ab" * 21)
    with pytest.raises(ValueError, match="40"):
        ObjectRef.from_hex("")
    with pytest.raises(ValueError, match="hex"):
        ObjectRef.from_hex("zz" * 20)
    with pytest.raises(ValueError):
        ObjectRef.from_hex(" " * 2 + "ab" * 19)  # 40 characters, 19 bytes
    for bad in (None, 123, b"ab" * 20, ["ab" * 20]):
        with pytest.raises(TypeError, match="str"):
            ObjectRef.from_hex(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="20-byte"):
        ObjectRef(b"short")
    with pytest.raises(ValueError, match="20-byte"):
        ObjectRef("a" * 20)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- names
async def test_name_collision(node) -> None:
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        first = await a.put(b"original", name="shared")
        big_first = await a.put(b"\x07" * (1 * MiB), name="big-name")
        for client, value in ((a, b"again"), (b, b"other client"), (b, b"\x08" * (1 * MiB))):
            with pytest.raises(ObjectExistsError) as info:
                await client.put(value, name="shared")
            assert "'shared'" in str(info.value)
            assert first.hex() in str(info.value)
            assert isinstance(info.value, ValueError)
        with pytest.raises(ObjectExistsError, match="'big-name'"):
            await b.put(b"\x09" * (2 * MiB), name="big-name")
        assert bytes(await b.get("shared")) == b"original"
        assert bytes(await b.get("big-name")) == b"\x07" * MiB
        assert await b.get(big_first) is not None
        st = await a.stats()
        assert st["objects"] == 2 and st["creating"] == 0
        await still_works(a, b)


async def test_bad_names(node) -> None:
    async with objstore.connect(node.socket) as a:
        for bad in ("", 5, b"bytes", ["x"]):
            with pytest.raises(ValueError, match="name"):
                await a.put(b"value", name=bad)  # type: ignore[arg-type]
        with pytest.raises(ObjectNotFoundError, match="'no such name'"):
            await a.get("no such name")
        assert (await a.stats())["objects"] == 0
        await still_works(a)


async def test_get_empty_name(node) -> None:
    # put() rejects "" as a name with ValueError; get("") must not fail with an
    # internal error either (ValueError, or ObjectNotFoundError naming it).
    async with objstore.connect(node.socket) as a:
        with pytest.raises((ValueError, ObjectNotFoundError), match="name"):
            await a.get("")
        await still_works(a)


# ---------------------------------------------------------------------- get / wait / delete arguments
async def test_get_bad_arguments(node) -> None:
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        ref = await a.put(b"value")
        for client in (a, b):
            with pytest.raises(ValueError, match="timeout"):
                await client.get(ref, timeout=-1)
            with pytest.raises(ValueError, match="timeout"):
                await client.get([ref], timeout=-0.5)
            for bad in (123, b"\x00" * 20, None, {ref}, 1.5):
                with pytest.raises(TypeError, match="ObjectRef"):
                    await client.get(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="ObjectRef"):
                await client.get([ref, "name"])  # type: ignore[list-item]
            with pytest.raises(TypeError, match="ObjectRef"):
                await client.get([ref.hex()])  # type: ignore[list-item]
        await still_works(a, b)


@pytest.mark.slow
async def test_get_unknown_ref_times_out(node) -> None:
    unknown = ObjectRef(os.urandom(20))
    async with objstore.connect(node.socket) as a:
        known = await a.put(b"known")
        for refs in (unknown, [known, unknown]):
            t0 = time.monotonic()
            with pytest.raises(GetTimeoutError) as info:
                await a.get(refs, timeout=0.2)
            elapsed = time.monotonic() - t0
            # Ends at its timeout: not before, and not much later even on a loaded machine.
            assert 0.15 <= elapsed < 5.0
            assert isinstance(info.value, TimeoutError)
            assert isinstance(info.value, ObjectStoreError)
            assert unknown.hex() in str(info.value)
            assert known.hex() not in str(info.value)
        with pytest.raises(GetTimeoutError):
            await a.get(unknown, timeout=0)
        # A timed-out get leaves nothing behind on the node.
        st = await a.stats()
        assert st["objects"] == 1 and st["pinned_bytes"] == 0
        await still_works(a)


async def test_wait_bad_arguments(node) -> None:
    async with objstore.connect(node.socket) as a:
        ref = await a.put(b"v")
        with pytest.raises(ValueError, match="distinct"):
            await a.wait([ref, ref])
        with pytest.raises(ValueError, match="num_returns"):
            await a.wait([ref], num_returns=2)
        with pytest.raises(ValueError, match="num_returns"):
            await a.wait([ref], num_returns=-1)
        with pytest.raises(ValueError, match="timeout"):
            await a.wait([ref], timeout=-1)
        with pytest.raises(TypeError, match="ObjectRef"):
            await a.wait([ref.hex()])  # type: ignore[list-item]
        await still_works(a)


async def test_delete_and_contains_bad_arguments(node) -> None:
    async with objstore.connect(node.socket) as a:
        ref = await a.put(b"v")
        # Like get and wait: a TypeError that says what is expected.
        for bad in (123, [123], [ref, ref.hex()], None, b"\x00" * 20):
            with pytest.raises(TypeError, match="ObjectRef"):
                await a.delete(bad)  # type: ignore[arg-type]
        for bad in (123, ref.hex(), None, [ref]):
            with pytest.raises(TypeError, match="ObjectRef"):
                await a.contains(bad)  # type: ignore[arg-type]
        assert (await a.stats())["objects"] == 1
        assert await a.contains(ref)
        with pytest.raises(ObjectNotFoundError, match="'nobody'"):
            await a.delete("nobody")
        await still_works(a)


# ---------------------------------------------------------------------- node start errors
async def start_fails(node_factory, *flags: str, **kw: object) -> str:
    """Start a node that must fail; returns its stderr."""
    n = node_factory(*flags, expect_ready=False, **kw)
    code = await asyncio.to_thread(n.proc.wait, 10)
    err = n.stderr()
    assert code != 0, err
    assert "Traceback" not in err, err
    assert n.proc.stdout is not None and n.proc.stdout.read() == b""  # no ready line
    return err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "kw", "expect"),
    [
        # argparse takes "-1GiB" for a flag: the message still names --memory.
        ((), {"memory": "-1GiB"}, ["--memory"]),
        (("--memory=-1GiB",), {}, ["--memory", "negative"]),
        ((), {"memory": "0"}, ["--memory", "more than 0"]),
        ((), {"memory": "100TiB"}, ["memory", "100.0 TiB", "more than this machine"]),
        ((), {"memory": "banana"}, ["--memory", "banana"]),
        ((), {"memory": "12 parsecs"}, ["--memory", "parsecs"]),
        ((), {"env": {"OBJSTORE_PLASMA_MEMORY": "banana"}}, ["plasma.memory", "banana"]),
        ((), {"env": {"OBJSTORE_PLASMA_FALLBACK_MAX_BYTES": "-5"}}, ["plasma.fallback_max_bytes"]),
        (("--prefault", "lots"), {}, ["--prefault", "lots"]),
    ],
    ids=[
        "memory-negative",
        "memory-negative-eq",
        "memory-zero",
        "memory-too-big",
        "memory-banana",
        "memory-unit",
        "env-memory-banana",
        "env-fallback-negative",
        "prefault-bad",
    ],
)
async def test_node_bad_settings(node_factory, flags, kw, expect) -> None:
    err = await start_fails(node_factory, *flags, **kw)
    for text in expect:
        assert text in err, err


async def test_node_socket_in_missing_directory(node_factory, short_tmp) -> None:
    path = os.path.join(short_tmp, "no", "such", "dir", "node.sock")
    err = await start_fails(node_factory, socket_path=path)
    assert "plasma.socket" in err and os.path.dirname(path) in err and "does not exist" in err


async def test_node_socket_path_is_a_regular_file(node_factory, short_tmp) -> None:
    path = Path(short_tmp, "file.sock")
    path.write_text("not a socket")
    err = await start_fails(node_factory, socket_path=str(path))
    assert "plasma.socket" in err and str(path) in err and "not a socket" in err
    assert path.read_text() == "not a socket"  # left alone


@pytest.mark.slow
async def test_node_socket_already_served(node_factory) -> None:
    first = node_factory()
    async with objstore.connect(first.socket) as a:
        ref = await a.put(b"\x05" * (100 * KiB))
        err = await start_fails(node_factory, socket_path=first.socket)
        assert "plasma.socket" in err and first.socket in err and "already serves" in err
        # The first node is untouched: its socket file is still there and it serves.
        assert os.path.exists(first.socket)
        assert first.proc.poll() is None
        async with objstore.connect(first.socket) as b:
            assert bytes(await b.get(ref)) == b"\x05" * (100 * KiB)
            await still_works(a, b)


async def test_node_starts_over_stale_socket(node_factory, short_tmp) -> None:
    path = os.path.join(short_tmp, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    assert os.path.exists(path)
    n = node_factory(socket_path=path)
    assert n.ready["socket"] == path
    async with objstore.connect(path) as a, objstore.connect(path) as b:
        await still_works(a, b)


# ---------------------------------------------------------------------- connection errors
async def test_connect_where_no_node_listens(tmp_path, short_tmp) -> None:
    missing = str(tmp_path / "missing.sock")
    with pytest.raises(NodeUnavailableError) as info:
        async with objstore.connect(missing):
            pass
    assert missing in str(info.value) and isinstance(info.value, ConnectionError)

    stale = os.path.join(short_tmp, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    t0 = time.monotonic()
    with pytest.raises(NodeUnavailableError) as info:
        await objstore.connect(stale)
    assert stale in str(info.value)
    # Refused at once, not retried until the client's 60 s request timeout.
    assert time.monotonic() - t0 < 10.0

    with pytest.raises(NodeUnavailableError) as info:
        await objstore.connect(str(tmp_path))  # a directory, not a socket
    assert str(tmp_path) in str(info.value)


async def test_client_after_node_stopped(node) -> None:
    # reconnect=False: every call after the loss fails (with reconnect, calls wait
    # for a node on the socket again: tests/integration/test_reconnect.py).
    async with objstore.connect(node.socket, reconnect=False) as a:
        ref = await a.put(np.arange(100_000, dtype=np.int64))
        view = await a.get(ref)
        pending_get = asyncio.create_task(a.get(ObjectRef(os.urandom(20))))
        pending_wait = asyncio.create_task(a.wait([ObjectRef(os.urandom(20))]))
        await asyncio.sleep(0.1)
        assert await asyncio.to_thread(node.stop) == 0

        async with asyncio.timeout(5):
            for task in (pending_get, pending_wait):
                with pytest.raises(NodeUnavailableError) as info:
                    await task
                assert node.socket in str(info.value)
            with pytest.raises(NodeUnavailableError):
                await a.put(b"after")
            with pytest.raises(NodeUnavailableError):
                await a.put(b"\x00" * MiB)
            with pytest.raises(NodeUnavailableError):
                await a.get(ref)
            with pytest.raises(NodeUnavailableError):
                await a.stats()
            with pytest.raises(NodeUnavailableError):
                await a.delete(ref)
        # A view handed out before keeps reading the (still mapped) memory.
        np.testing.assert_array_equal(view, np.arange(100_000, dtype=np.int64))
        del view
    with pytest.raises(NodeUnavailableError, match="no node is serving"):
        await objstore.connect(node.socket)
