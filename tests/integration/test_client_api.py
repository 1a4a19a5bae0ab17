"""The client API end to end against real node processes.

Every test starts its own node (``node`` / ``node_factory`` from conftest) and
talks to it through ``objstore.connect``: round trips of every kind of value,
refs, wait, delete, ownership, the disk fallback, and the command line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import threading
import time
from typing import Any

import numpy as np
import pytest
from conftest import run_cli
from waits import poll, round_trip

import objstore
import objstore.client
from objstore import ObjectRef
from objstore.errors import (
    ObjectFreedError,
    ObjectNotFoundError,
    ObjectStoreError,
)

KiB = 1024
MiB = 1024 * KiB


# ---------------------------------------------------------------------- helpers


async def wait_clients(client: objstore.Client, n: int) -> None:
    """Wait until the node counts exactly ``n`` connected clients (disconnects are async)."""
    await poll(client.stats, lambda s: s["clients"] == n)


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that are not all alike (catches offset mix-ups)."""
    if n == 0:
        return b""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def assert_same_array(got: Any, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert not got.flags.writeable


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "size",
    [0, 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 5 * MiB],
    ids=["empty", "1B", "64KiB-1", "64KiB", "64KiB+1", "5MiB"],
)
async def test_bytes_round_trip(node, size: int) -> None:
    data = pattern(size, seed=size)
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        ref = await a.put(data)
        for client in (a, b):  # the owner (cached) and another client (round trip)
            got = await client.get(ref)
            assert isinstance(got, memoryview)
            assert got.readonly
            assert len(got) == size
            assert bytes(got) == data
            if size:
                with pytest.raises(TypeError):
                    got[0] = 0
            del got


async def test_bytearray_and_memoryview_round_trip(node) -> None:
    ba = bytearray(pattern(100 * KiB, seed=1))
    small_ba = bytearray(b"tiny bytearray")
    backing = np.arange(300_000, dtype=np.uint8)  # wraps mod 256
    strided = memoryview(backing)[::3]
    assert not strided.contiguous
    small_strided = memoryview(backing[:1000])[::7]
    matrix = memoryview(np.arange(12 * 5000, dtype=np.int32).reshape(12, 5000))
    cases: list[tuple[Any, bytes]] = [
        (ba, bytes(ba)),
        (small_ba, bytes(small_ba)),
        (memoryview(pattern(70 * KiB, seed=2)), pattern(70 * KiB, seed=2)),
        (strided, strided.tobytes()),
        (small_strided, small_strided.tobytes()),
        (matrix, matrix.tobytes()),
        (matrix[::2], matrix[::2].tobytes()),
    ]
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        refs = [await a.put(value) for value, _ in cases]
        # The store holds a copy: changing the source afterwards changes nothing.
        ba[:10] = b"\xff" * 10
        small_ba[:4] = b"XXXX"
        for client in (a, b):
            got = await client.get(refs)
            for g, (_, want) in zip(got, cases):
                assert isinstance(g, memoryview) and g.readonly
                assert g.format == "B" and g.ndim == 1
                assert g.tobytes() == want
                with pytest.raises(TypeError):
                    g[0] = 1
            del got, g


ARRAYS: dict[str, Any] = {
    "float64": lambda: np.linspace(-1, 1, 10_000),
    "int8": lambda: np.arange(-128, 128, dtype=np.int8),
    "uint16-3d": lambda: np.arange(4 * 50 * 60, dtype=np.uint16).reshape(4, 50, 60),
    "bool": lambda: np.arange(100_000) % 3 == 0,
    "complex128": lambda: np.arange(5000) * (1 + 2j),
    "float16": lambda: np.arange(1000, dtype=np.float16),
    "big-endian-int32": lambda: np.arange(30_000, dtype=">i4"),
    "structured": lambda: np.array(
        [(i, i * 0.5) for i in range(3000)], dtype=[("a", "<i4"), ("b", "<f8")]
    ),
    "empty": lambda: np.zeros(0, dtype=np.float32),
    "empty-2d": lambda: np.zeros((3, 0), dtype=np.int64),
    "scalar-0d": lambda: np.array(7.5),
    "fortran": lambda: np.asfortranarray(np.arange(300 * 200, dtype=np.float64).reshape(300, 200)),
    "fortran-small": lambda: np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    "object": lambda: np.array(["a", 1, None, {"k": 2}], dtype=object),
    "8MiB": lambda: np.arange(MiB, dtype=np.float64),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(ARRAYS))
async def test_numpy_round_trip(node, kind: str) -> None:
    arr = ARRAYS[kind]()
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        ref = await a.put(arr)
        for client in (a, b):
            got = await client.get(ref)
            if arr.dtype == object:
                assert got.dtype == object and got.shape == arr.shape
                assert list(got) == list(arr)
                del got
                continue
            assert_same_array(got, arr)
            if arr.flags.f_contiguous and not arr.flags.c_contiguous:
                assert got.flags.f_contiguous
            if arr.size:
                with pytest.raises(ValueError, match="read-only"):
                    got.flat[0] = got.flat[-1]
            if arr.nbytes >= 64 * KiB:
                # Zero-copy from shared memory, at the 64-byte alignment the format promises.
                assert got.ctypes.data % 64 == 0
            del got


IN_BAND_ARRAYS: dict[str, Any] = {
    "datetime64": lambda: np.arange(200_000).astype("datetime64[s]"),
    "timedelta64": lambda: np.arange(200_000).astype("timedelta64[ms]"),
    "non-contiguous": lambda: np.arange(300_000, dtype=np.int64)[::3],
    "non-contiguous-2d": lambda: np.arange(400 * 400, dtype=np.float32).reshape(400, 400)[:, ::2],
}


@pytest.mark.parametrize("kind", list(IN_BAND_ARRAYS))
async def test_numpy_pickled_in_band_comes_back_read_only(node, kind: str) -> None:
    # numpy pickles these arrays in-band (no PickleBuffer): datetime/timedelta
    # dtypes, and arrays that are neither C- nor F-contiguous.  The contract
    # still says every numpy array comes back as a read-only array.
    arr = IN_BAND_ARRAYS[kind]()
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        ref = await a.put(arr)
        for client in (a, b):
            got = await client.get(ref)
            assert got.dtype == arr.dtype and got.shape == arr.shape
            np.testing.assert_array_equal(got, arr)
            assert not got.flags.writeable, f"{kind} array came back writable"
            del got


@pytest.mark.slow
async def test_numpy_200mib(node_factory) -> None:
    node = node_factory(memory="512MiB")
    arr = np.arange(200 * MiB // 8, dtype=np.float64)
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        ref = await a.put(arr)
        for client in (a, b):
            got = await client.get(ref)
            assert_same_array(got, arr)
            del got
        st = await a.stats()
        assert st["used"] >= arr.nbytes
        assert st["fallback_used"] == 0


async def test_python_values_round_trip(node) -> None:
    values: list[Any] = [
        {"a": 1, "b": [1, 2, 3], "c": {"nested": (1, "x")}},
        [1, "two", 3.0, None, b"bytes-inside"],
        "a string ☃",
        "",
        12345678901234567890,
        -1,
        None,
        3.25,
        {"big": "x" * (200 * KiB)},
    ]
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        refs = [await a.put(v) for v in values]
        for client in (a, b):
            assert await client.get(refs) == values


async def test_dict_of_numpy_arrays(node) -> None:
    value = {
        "weights": np.random.default_rng(0).standard_normal((512, 256)),
        "bias": np.arange(256, dtype=np.float32),
        "tiny": np.arange(3, dtype=np.int16),
        "mask": np.ones((100, 100), dtype=bool),
        "meta": {"name": "layer", "version": 3},
        "empty": np.zeros(0),
    }
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        ref = await a.put(value)
        for client in (a, b):
            got = await client.get(ref)
            assert set(got) == set(value)
            assert got["meta"] == value["meta"]
            for key in ("weights", "bias", "tiny", "mask", "empty"):
                assert_same_array(got[key], value[key])
            with pytest.raises(ValueError):
                got["weights"][0, 0] = 1.0
            del got


# ---------------------------------------------------------------------- get forms
async def test_get_list_order_and_duplicates(node) -> None:
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        r1 = await a.put(b"one")
        r2 = await a.put(pattern(100 * KiB, seed=5))
        r3 = await a.put({"three": 3})
        want = [b"one", pattern(100 * KiB, seed=5), {"three": 3}]
        order = [r3, r1, r2, r1, r3, r3]
        for client in (a, b):
            got = await client.get(order)
            assert isinstance(got, list) and len(got) == len(order)
            for g, r in zip(got, order):
                w = want[[r1, r2, r3].index(r)]
                assert (bytes(g) if isinstance(g, memoryview) else g) == w
            assert await client.get([]) == []
            assert await client.get((r2, r1)) is not None  # tuples work too
            del got, g


@pytest.mark.slow
async def test_get_10000_small_refs_in_one_call(node) -> None:
    n = 10_000
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        refs = await asyncio.gather(*(a.put(i) for i in range(n)))
        assert len(set(refs)) == n
        assert await a.get(refs) == list(range(n))
        t0 = time.monotonic()
        got = await b.get(refs)
        elapsed = time.monotonic() - t0
        assert got == list(range(n))
        # One batched request, not 10,000 round trips (~0.1 s here; generous for a loaded machine).
        assert elapsed < 10.0
        assert (await b.get(refs[::-1] + refs[:10])) == list(range(n))[::-1] + list(range(10))


async def test_get_by_name_and_await_ref(node) -> None:
    async with objstore.connect(node.socket) as a:
        ref = await a.put(b"named value", name="greeting")
        assert bytes(await a.get("greeting")) == b"named value"
        assert bytes(await ref) == b"named value"
        big = await a.put(pattern(200 * KiB, seed=9), name="big one")
        async with objstore.connect(node.socket) as b:
            assert bytes(await b.get("greeting")) == b"named value"
            assert bytes(await b.get("big one")) == pattern(200 * KiB, seed=9)
            # Inside b's block `await ref` goes through b.
            assert bytes(await big) == pattern(200 * KiB, seed=9)
        # Back in a's block.
        assert bytes(await ref) == b"named value"
    with pytest.raises(ObjectStoreError, match="async with"):
        await ref


async def test_await_ref_outside_context(node) -> None:
    client = await objstore.connect(node.socket)
    try:
        ref = await client.put(1)
        assert await client.get(ref) == 1
        with pytest.raises(ObjectStoreError, match=r"objstore\.connect"):
            await ref
    finally:
        await client.close()


async def test_get_waits_for_object_sealed_later(node, monkeypatch) -> None:
    # Ids are random per put; to make a get that waits for an id before it is
    # put, the test fixes the id the client will draw next.
    small_id, big_id = os.urandom(20), os.urandom(20)
    small_ref, big_ref = ObjectRef(small_id), ObjectRef(big_id)
    big = pattern(3 * MiB, seed=3)
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        get_small = asyncio.create_task(b.get(small_ref, timeout=5))
        get_both = asyncio.create_task(b.get([big_ref, small_ref], timeout=5))
        waiting = asyncio.create_task(b.wait([small_ref, big_ref], num_returns=2, timeout=5))
        await round_trip(b)  # the node has all three: none was answered at once
        assert not get_small.done() and not get_both.done() and not waiting.done()
        assert not await b.contains(small_ref)

        monkeypatch.setattr(objstore.client, "new_object_id", lambda: small_id)
        assert await a.put(b"late") == small_ref
        assert bytes(await asyncio.wait_for(get_small, 5)) == b"late"
        await round_trip(b)  # what the seal of the small one sent b came before this
        assert not get_both.done() and not waiting.done()

        monkeypatch.setattr(objstore.client, "new_object_id", lambda: big_id)
        assert await a.put(big) == big_ref
        got_big, got_small = await asyncio.wait_for(get_both, 5)
        assert bytes(got_big) == big and bytes(got_small) == b"late"
        ready, pending = await asyncio.wait_for(waiting, 5)
        assert ready == [small_ref, big_ref] and pending == []
        del got_big, got_small


async def test_cancelled_get_releases_pins(node, monkeypatch) -> None:
    oid = os.urandom(20)
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        getter = asyncio.create_task(b.get(ObjectRef(oid)))
        await round_trip(b)  # the node has the get, and it waits
        assert not getter.done()
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        # The node still answers the abandoned get once the object is sealed;
        # the client must give the pin back.
        monkeypatch.setattr(objstore.client, "new_object_id", lambda: oid)
        ref = await a.put(pattern(1 * MiB, seed=21))
        monkeypatch.undo()
        await poll(a.stats, lambda s: s["pinned_bytes"] == 0)
        assert bytes(await b.get(ref)) == pattern(1 * MiB, seed=21)
        assert await a.delete(ref) == 1
        await poll(a.stats, lambda s: s["objects"] == 0 and s["used"] == 0)


async def test_cancelled_put_during_create_is_aborted(node) -> None:
    async with objstore.connect(node.socket) as a:
        task = asyncio.create_task(a.put(pattern(8 * MiB, seed=22)))
        await asyncio.sleep(0)  # the create request is sent; its reply is not read yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The half-made object must not stay reserved while the client lives on.
        await poll(a.stats, lambda s: s["creating"] == 0 and s["used"] == 0 and s["objects"] == 0)
        ref = await a.put(pattern(8 * MiB, seed=23))
        assert bytes(await a.get(ref)) == pattern(8 * MiB, seed=23)


async def test_cancelled_put_during_copy_does_not_corrupt_other_objects(node, monkeypatch) -> None:
    # Make the copy threads of one put slow (gated), cancel that put mid-copy,
    # and check that its late writes never land in memory given to another object.
    real_copyto = np.copyto
    gate = threading.Event()
    started = threading.Event()
    lock = threading.Lock()
    counts = {"gating": True, "entered": 0, "finished": 0}

    def gated_copyto(*args: Any, **kw: Any) -> Any:
        with lock:
            gating = counts["gating"]
            if gating:
                counts["entered"] += 1
        if not gating:
            return real_copyto(*args, **kw)
        started.set()
        gate.wait(5)
        try:
            return real_copyto(*args, **kw)
        finally:
            with lock:
                counts["finished"] += 1

    monkeypatch.setattr(np, "copyto", gated_copyto)
    size = 8 * MiB
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        task = asyncio.create_task(a.put(b"\x01" * size))
        assert await asyncio.to_thread(started.wait, 5)
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.1)
        with lock:
            counts["gating"] = False
        ref = await b.put(b"\x02" * size)
        gate.set()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await task
            while True:
                with lock:
                    if counts["finished"] == counts["entered"]:
                        break
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        got = np.frombuffer(await b.get(ref), np.uint8)
        bad = int(np.count_nonzero(got != 2))
        assert bad == 0, f"{bad} bytes of another client's object were overwritten"
        del got
        st = await poll(a.stats, lambda s: s["creating"] == 0)
        assert st["objects"] == 1


async def test_concurrent_puts_and_gets(node) -> None:
    async with (
        objstore.connect(node.socket) as a,
        objstore.connect(node.socket) as b,
        objstore.connect(node.socket) as c,
    ):
        clients = [a, b, c]
        sizes = [10, 30 * KiB, 100 * KiB, 1 * MiB, 5 * MiB + 3]

        async def producer(k: int, client: objstore.Client) -> list[tuple[ObjectRef, bytes]]:
            datas = [pattern(sizes[i % len(sizes)], seed=100 * k + i) for i in range(15)]
            refs = await asyncio.gather(*(client.put(d) for d in datas))
            return list(zip(refs, datas))

        made = await asyncio.gather(*(producer(k, cl) for k, cl in enumerate(clients)))
        everything = [item for part in made for item in part]
        for client in clients:
            got = await client.get([r for r, _ in everything])
            for g, (_, want) in zip(got, everything):
                assert bytes(g) == want
            del got, g
        st = await a.stats()
        assert st["objects"] == len(everything) and st["creating"] == 0


# ---------------------------------------------------------------------- ObjectRef
async def test_object_ref_identity(node) -> None:
    async with objstore.connect(node.socket) as a:
        ref = await a.put(b"x")
        ref2 = await a.put(b"x")
    h = ref.hex()
    assert isinstance(h, str) and len(h) == 40 and int(h, 16) >= 0
    assert h == h.lower()
    back = ObjectRef.from_hex(h)
    assert back == ref and hash(back) == hash(ref) and back is not ref
    assert ObjectRef.from_hex(h.upper()) == ref
    assert back.binary == ref.binary and len(ref.binary) == 20
    assert ref != ref2 and ref2 != ref
    assert ref != h and ref != ref.binary and ref != None
    assert len({ref, back, ref2}) == 2
    assert {ref: 1}[back] == 1
    assert repr(ref) == f"ObjectRef({h})"
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        p = pickle.loads(pickle.dumps(ref, protocol=proto))
        assert p == ref and p.hex() == h and hash(p) == hash(ref)
    assert len(pickle.dumps(ref)) < 100


async def test_refs_inside_stored_values(node) -> None:
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        inner = await a.put(pattern(100 * KiB, seed=4))
        outer = await a.put({"child": inner, "refs": [inner, inner]})
        got = await b.get(outer)
        assert got["child"] == inner and got["refs"] == [inner, inner]
        assert bytes(await b.get(got["child"])) == pattern(100 * KiB, seed=4)


# ---------------------------------------------------------------------- wait
async def test_wait_all_ready_and_num_returns(node) -> None:
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        refs = [await a.put(i) for i in range(5)]
        refs.append(await a.put(pattern(100 * KiB)))
        for client in (a, b):
            ready, pending = await client.wait(refs, num_returns=len(refs), timeout=5)
            assert ready == refs and pending == []
            ready, pending = await client.wait(refs, timeout=5)  # num_returns=1
            assert len(ready) >= 1
            assert set(ready).isdisjoint(pending) and set(ready) | set(pending) == set(refs)
            for k in range(len(refs) + 1):
                ready, pending = await client.wait(refs, num_returns=k, timeout=5)
                assert len(ready) >= k
                assert set(ready).isdisjoint(pending)
                assert sorted(ready + pending, key=refs.index) == refs
                # Both lists keep the order of the input.
                assert ready == [r for r in refs if r in ready]
                assert pending == [r for r in refs if r in pending]


@pytest.mark.slow
async def test_wait_timeout_returns_pending(node) -> None:
    never = ObjectRef(os.urandom(20))
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        r1 = await a.put(b"here")
        r2 = await a.put(pattern(100 * KiB))
        for client in (a, b):
            t0 = time.monotonic()
            ready, pending = await client.wait([r1, never, r2], num_returns=3, timeout=0.3)
            elapsed = time.monotonic() - t0
            assert ready == [r1, r2] and pending == [never]
            # Ends at its timeout: not before, and not much later even on a loaded machine.
            assert 0.25 <= elapsed < 5.0
            # One ready object satisfies num_returns=1 at once (not at the 30 s timeout), the
            # missing one is pending.
            t0 = time.monotonic()
            ready, pending = await client.wait([never, r1], num_returns=1, timeout=30)
            assert ready == [r1] and pending == [never]
            assert time.monotonic() - t0 < 10.0
            # timeout=0 polls.
            ready, pending = await client.wait([never], num_returns=1, timeout=0)
            assert ready == [] and pending == [never]


async def test_wait_counts_a_freed_object_as_ready(node) -> None:
    """Ready, as in Ray: its get would not wait (it raises).  Pending, it would
    end a wait for one ready object early with none ready."""
    never = ObjectRef(os.urandom(20))
    async with objstore.connect(node.socket) as a:
        gone = await a.put(b"soon deleted")
        await a.delete(gone)
        ready, pending = await a.wait([never, gone], num_returns=1, timeout=20)
        assert ready == [gone] and pending == [never]
        with pytest.raises(ObjectFreedError):
            await a.get(gone, timeout=5)


async def test_wait_num_returns_zero(node) -> None:
    never = ObjectRef(os.urandom(20))
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        r1 = await a.put(b"here")
        for client in (a, b):
            # Nothing to wait for: returns at once even with no timeout.
            ready, pending = await asyncio.wait_for(client.wait([never, r1], num_returns=0), 2)
            assert never in pending and never not in ready
            assert sorted(ready + pending, key=[never, r1].index) == [never, r1]
            assert await asyncio.wait_for(client.wait([], num_returns=0), 2) == ([], [])


# ---------------------------------------------------------------------- delete
async def test_delete_by_ref_list_and_name(node) -> None:
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        r1 = await a.put(b"one")
        r2 = await a.put(pattern(200 * KiB))
        r3 = await a.put({"three": 3})
        r4 = await a.put(b"four", name="four")
        assert (await a.stats())["objects"] == 4

        assert await a.delete(r1) == 1
        assert await a.delete(r1) == 0  # already gone
        assert await a.delete([r2, r3, r2]) == 2
        assert await a.delete("four") == 1
        for client in (a, b):
            for r in (r1, r2, r3, r4):
                with pytest.raises(ObjectNotFoundError, match="deleted"):
                    await client.get(r, timeout=1)
                assert not await client.contains(r)
            with pytest.raises(ObjectNotFoundError, match="four"):
                await client.get("four")
        await poll(a.stats, lambda s: s["objects"] == 0 and s["used"] == 0)
        # The name is free again.
        r5 = await b.put(b"again", name="four")
        assert bytes(await a.get("four")) == b"again"
        assert await a.get(r5) is not None


async def test_delete_empty_list(node) -> None:
    async with objstore.connect(node.socket) as a:
        ref = await a.put(b"kept")
        assert await a.delete([]) == 0
        assert await a.delete(()) == 0
        # Nothing was deleted and the connection is still good.
        assert bytes(await a.get(ref)) == b"kept"
        assert (await a.stats())["objects"] == 1
        ref2 = await a.put(pattern(100 * KiB))
        assert bytes(await a.get(ref2)) == pattern(100 * KiB)


async def test_delete_by_another_client(node) -> None:
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        small = await a.put(b"owned by a")
        big = await a.put(pattern(300 * KiB, seed=31))
        assert bytes(await a.get(big)) == pattern(300 * KiB, seed=31)  # a maps it
        assert await b.delete([small, big]) == 2
        # The node tells a (the owner) before it answers b; one round trip of
        # a's own makes sure a has read that.
        await a.stats()
        for client in (a, b):
            for r in (small, big):
                with pytest.raises(ObjectNotFoundError):
                    await client.get(r)
        await poll(a.stats, lambda s: s["objects"] == 0 and s["used"] == 0)


@pytest.mark.slow
async def test_delete_while_another_client_holds_a_view(node) -> None:
    data = pattern(2 * MiB, seed=11)
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        baseline = (await a.stats())["used"]
        ref = await a.put(data)
        view = await b.get(ref)
        own_view = await a.get(ref)
        assert bytes(view) == data
        st = await a.stats()
        assert st["used"] >= baseline + len(data)
        assert st["pinned_bytes"] >= len(data)

        assert await a.delete(ref) == 1
        with pytest.raises(ObjectNotFoundError):
            await a.get(ref)
        # The invalidation reaches b before the reply to any later request of b's.
        await b.stats()
        with pytest.raises(ObjectNotFoundError):
            await b.get(ref)
        assert not await b.contains(ref)
        # Zero-copy views handed out before the delete still read the right bytes.
        assert bytes(view) == data and bytes(own_view) == data
        # The memory is held until the views are gone.
        assert (await a.stats())["used"] >= baseline + len(data)
        del view
        gc.collect()
        await round_trip(b)  # b's release has reached the node
        assert (await a.stats())["used"] >= baseline + len(data)  # a's own view still holds it
        assert bytes(own_view) == data
        del own_view
        gc.collect()
        st = await poll(a.stats, lambda s: s["used"] == baseline)
        assert st["pinned_bytes"] == 0 and st["objects"] == 0


async def test_views_released_on_gc(node) -> None:
    data = pattern(1 * MiB, seed=12)
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        ref = await a.put(data)
        views = [await b.get(ref) for _ in range(3)]
        arr_ref = await a.put(np.arange(MiB // 8, dtype=np.float64))
        arr = await b.get(arr_ref)
        piece = arr[10:20]  # a slice keeps the whole object pinned
        del arr
        st = await a.stats()
        assert st["pinned_bytes"] >= len(data) + MiB
        del views
        gc.collect()
        await poll(a.stats, lambda s: MiB <= s["pinned_bytes"] < MiB + len(data))
        np.testing.assert_array_equal(piece, np.arange(10, 20, dtype=np.float64))
        del piece
        gc.collect()
        await poll(a.stats, lambda s: s["pinned_bytes"] == 0)


# ---------------------------------------------------------------------- ownership
async def test_named_objects_outlive_their_creator(node) -> None:
    """A named object outlives its putter; unnamed ones live while a ref to them
    is alive anywhere (here: this process, through b), and go with the last one."""
    big = pattern(1 * MiB, seed=13)
    async with objstore.connect(node.socket) as b:
        baseline = (await b.stats())["used"]
        async with objstore.connect(node.socket) as a:
            unnamed_small = await a.put(b"short-lived")
            unnamed_big = await a.put(big)
            named = await a.put(pattern(100 * KiB, seed=14), name="keeper")
            held = await b.get(unnamed_big)  # b keeps a zero-copy view
        await wait_clients(b, 1)

        assert bytes(await b.get("keeper")) == pattern(100 * KiB, seed=14)
        assert bytes(await b.get(named)) == pattern(100 * KiB, seed=14)
        # The refs are still alive in this process (b counts them): both live on.
        assert bytes(await b.get(unnamed_small)) == b"short-lived"
        assert bytes(held) == big
        small_hex = unnamed_small.hex()
        del unnamed_small, unnamed_big, named
        gc.collect()
        # The view still pins the big one; the small one goes at once.
        await poll(b.list_objects, lambda r: r[1] == 2)
        t0 = time.monotonic()
        with pytest.raises(ObjectFreedError, match="freed"):
            await b.get(ObjectRef.from_hex(small_hex), timeout=30)
        assert time.monotonic() - t0 < 10.0  # at once, not at the get's timeout
        assert bytes(held) == big
        del held
        gc.collect()
        await poll(b.list_objects, lambda r: r[1] == 1)
        objects, _ = await b.list_objects()
        assert objects[0]["name"] == "keeper"
        assert (await b.stats())["used"] > baseline
        assert await b.delete("keeper") == 1
        await poll(b.stats, lambda s: s["used"] == baseline and s["objects"] == 0)


# ---------------------------------------------------------------------- stats and listing
async def test_stats_and_list_objects(node) -> None:
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        # The node registers a connection just after its handshake: poll.
        await wait_clients(a, 2)
        st = await a.stats()
        assert st["capacity"] == 128 * MiB
        assert st["used"] == 0 and st["objects"] == 0 and st["fallback_used"] == 0
        assert st["node_id"] == node.ready["node_id"]

        r1 = await a.put(b"x" * 1000)
        r2 = await a.put(pattern(3 * MiB), name="three")
        r3 = await b.put({"k": "v"})
        st = await a.stats()
        assert st["objects"] == 3 and st["sealed"] == 3 and st["creating"] == 0
        assert st["puts"] >= 3
        assert st["used"] >= 1000 + 3 * MiB
        assert st["largest_free"] <= st["capacity"] - st["used"]

        objects, total = await a.list_objects()
        assert total == 3 and len(objects) == 3
        by_id = {o["object_id"]: o for o in objects}
        assert set(by_id) == {r1.hex(), r2.hex(), r3.hex()}
        assert by_id[r1.hex()]["size"] == 1000
        assert by_id[r2.hex()]["size"] == 3 * MiB
        assert by_id[r2.hex()]["name"] == "three" and by_id[r1.hex()]["name"] == ""
        assert by_id[r1.hex()]["format"] == "objstore/raw"
        assert by_id[r3.hex()]["format"] == "objstore/pickle5"
        for o in objects:
            assert o["state"] == "SEALED" and o["primary"] and o["segment"] == 0

        objects, total = await a.list_objects(2)
        assert total == 3 and len(objects) == 2
        await a.delete([r1, r2])
        await b.delete(r3)
        await poll(a.stats, lambda s: s["objects"] == 0 and s["used"] == 0)


@pytest.mark.slow
async def test_fallback_segment(node_factory) -> None:
    node = node_factory(memory="16MiB")
    data = pattern(40 * MiB, seed=15)
    async with objstore.connect(node.socket) as a, objstore.connect(node.socket) as b:
        ref = await a.put(data)
        st = await a.stats()
        assert st["fallback_used"] >= len(data)
        assert st["used"] == 0
        objects, _ = await a.list_objects()
        assert objects[0]["segment"] != 0
        # Small objects still go to the arena meanwhile.
        small = await a.put(pattern(100 * KiB, seed=16))
        assert (await b.get(small)).tobytes() == pattern(100 * KiB, seed=16)

        got = await b.get(ref)
        assert got.readonly and len(got) == len(data)
        assert got.tobytes() == data
        assert (await a.get(ref)).tobytes() == data
        del got
        gc.collect()
        assert await a.delete(ref) == 1
        st = await poll(a.stats, lambda s: s["fallback_used"] == 0)
        assert st["objects"] == 1
        with pytest.raises(ObjectNotFoundError):
            await b.get(ref)
        # The fallback can be used again.
        ref2 = await b.put(data)
        assert (await a.get(ref2)).tobytes() == data
        assert (await a.stats())["fallback_used"] >= len(data)


# ---------------------------------------------------------------------- command line
@pytest.mark.slow
async def test_cli_status_and_memory(node) -> None:
    async with objstore.connect(node.socket) as a:
        r1 = await a.put(pattern(3 * MiB), name="cli-object")
        r2 = await a.put(b"small")

        code, out, err = await run_cli("status", "--socket", node.socket)
        assert code == 0, err
        assert node.ready["node_id"] in out and node.socket in out
        assert "objects" in out and "2 (2 sealed" in out
        assert "128.0 MiB" in out  # capacity
        assert "Traceback" not in err

        code, out, err = await run_cli("status", "--socket", node.socket, "--json")
        assert code == 0, err
        status = json.loads(out)
        assert status["objects"] == 2 and status["capacity"] == 128 * MiB
        assert status["node_id"] == node.ready["node_id"] and status["socket"] == node.socket
        assert status["clients"] >= 2  # this test's client and the command's own

        code, out, err = await run_cli("memory", "--socket", node.socket, "--json")
        assert code == 0, err
        mem = json.loads(out)
        assert mem["node_id"] == node.ready["node_id"] and mem["total"] == 2
        by_id = {o["object_id"]: o for o in mem["objects"]}
        assert by_id[r1.hex()]["size"] == 3 * MiB and by_id[r1.hex()]["name"] == "cli-object"
        assert by_id[r2.hex()]["size"] == 5 and by_id[r2.hex()]["state"] == "SEALED"

        code, out, err = await run_cli("memory", "--socket", node.socket)
        assert code == 0, err
        assert r1.hex() in out and r2.hex() in out and "cli-object" in out

        code, out, err = await run_cli("memory", "--socket", node.socket, "--limit", "1")
        assert code == 0, err
        assert "1 more" in out


async def test_cli_missing_socket(tmp_path) -> None:
    missing = str(tmp_path / "nowhere.sock")
    for command in ("status", "memory"):
        code, out, err = await run_cli(command, "--socket", missing, "--json")
        assert code == 1
        assert missing in err and "no node is serving" in err
        assert "Traceback" not in err
        assert out == ""
