"""A real node and several client *processes*: sharing, pinning, crashes, exits.

Clients run the small scripts in ``_helpers/`` (``python script.py SOCKET ...``);
each prints JSON lines on stdout.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from waits import round_trip

import objstore
from objstore.errors import ObjectNotFoundError, ObjectStoreFullError

pytestmark = pytest.mark.timeout(60)

HELPERS = Path(__file__).parent / "_helpers"
MiB = 1 << 20


def _pattern(nbytes: int, seed: int) -> np.ndarray:
    """Same as ``_helpers/_common.pattern``."""
    words = -(-nbytes // 8)
    arr = (np.arange(words, dtype=np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    return arr.view(np.uint8)[:nbytes].copy()


class Script:
    """A helper script running as a child process, talking JSON lines on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    @classmethod
    async def start(cls, name: str, *args: object, stdin: bool = False) -> Script:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HELPERS / name),
            *map(str, args),
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc, name)

    async def read(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next JSON line (fails with the script's stderr if it exits first)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.proc.stdout.readline()
        if not line:
            err = await self._stderr()
            raise AssertionError(f"{self.name} printed nothing more; stderr:\n{err}")
        return json.loads(line)

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        try:
            async with asyncio.timeout(5):
                return (await self.proc.stderr.read()).decode(errors="replace")
        except TimeoutError:
            return "<stderr not closed>"

    async def finish(self, timeout: float = 15.0) -> tuple[list[dict[str, Any]], str]:
        """Wait for exit 0; returns the remaining JSON lines and the stderr."""
        try:
            async with asyncio.timeout(timeout):
                out, err = await self.proc.communicate()
        except TimeoutError:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout}s") from None
        text = err.decode(errors="replace")
        assert self.proc.returncode == 0, f"{self.name} exited {self.proc.returncode}:\n{text}"
        return [json.loads(x) for x in out.splitlines() if x.strip()], text

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def run_script(name: str, *args: object, timeout: float = 15.0) -> list[dict[str, Any]]:
    lines, _ = await (await Script.start(name, *args)).finish(timeout)
    return lines


async def wait_stats(
    client: objstore.Client, cond: Any, timeout: float = 10.0, what: str = ""
) -> dict[str, Any]:
    """Poll ``client.stats()`` until ``cond(stats)``; fail with the last stats after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        st = await client.stats()
        if cond(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"stats never satisfied {what} within {timeout}s: {st}")
        await asyncio.sleep(0.01)


async def segment_of(client: objstore.Client, ref: objstore.ObjectRef) -> int:
    objects, _ = await client.list_objects()
    for o in objects:
        if o["object_id"] == ref.hex():
            return int(o["segment"])
    raise AssertionError(f"{ref} is not listed")


async def cycle_arena(
    putter: objstore.Client, reader: objstore.Client, size: int, held: int, rounds: int
) -> None:
    """Put, read back (pinned, from ``reader``) and delete ``rounds`` arrays of ``size``
    bytes, each in the arena; afterwards ``used`` must be back to ``held``."""
    for i in range(rounds):
        fill = 10 + i
        fb_before = (await putter.stats())["fallback_used"]
        ref = await putter.put(np.full(size, fill, dtype=np.uint8))
        assert await segment_of(putter, ref) == 0
        assert (await putter.stats())["fallback_used"] == fb_before
        seen = await reader.get(ref, timeout=5.0)
        assert seen.nbytes == size and bool((seen == fill).all())
        del seen
        assert await putter.delete(ref) == 1
        await wait_stats(
            putter,
            lambda s: s["used"] == held,
            what=f"round {i}: only the held object left in the arena",
        )


# --------------------------------------------------------------------------- sharing


@pytest.mark.slow
async def test_producer_and_two_concurrent_consumers(node) -> None:
    n = 12
    procs = [
        await Script.start("producer.py", node.socket, "shared", n),
        await Script.start("consumer.py", node.socket, "shared", n),
        await Script.start("consumer.py", node.socket, "shared", n),
    ]
    try:
        results = await asyncio.gather(*(p.finish(20) for p in procs))
    finally:
        for p in procs:
            p.kill()
    (produced,), _ = results[0]
    assert len(produced["digests"]) == n
    for (consumed,), _ in results[1:]:
        assert consumed["bad"] == []
        assert consumed["digests"] == produced["digests"]
    async with objstore.connect(node.socket) as client:
        st = await wait_stats(
            client,
            lambda s: s["clients"] == 1 and s["pinned_bytes"] == 0,
            what="consumers gone and no pins",
        )
        assert st["objects"] == n  # named objects outlive their producer
        for k in range(n):
            assert await client.delete(f"shared-{k}") == 1
        await wait_stats(
            client, lambda s: s["objects"] == 0 and s["used"] == 0, what="everything freed"
        )


# --------------------------------------------------------------------------- pinning


@pytest.mark.slow
async def test_view_in_other_process_pins_memory_under_pressure(node_factory) -> None:
    """THE key test: a deleted object viewed by another process is never reused."""
    node = node_factory(memory="64MiB")
    x_size = 24 * MiB
    async with objstore.connect(node.socket) as test, objstore.connect(node.socket) as other:
        base = await test.stats()
        assert base["used"] == 0
        # A puts X (named, so it outlives A) and exits.
        await run_script("put_fill.py", node.socket, "X", x_size, 7)
        st = await test.stats()
        x_alloc = st["used"] - base["used"]
        assert x_alloc >= x_size
        # B maps X and holds the view.
        b = await Script.start("holder.py", node.socket, "X", 7, stdin=True)
        try:
            held = await b.read()
            assert held["event"] == "holding" and held["ok"], held
            # A third client deletes X by name: no new gets, but B's view stays valid.
            assert await other.delete("X") == 1
            with pytest.raises(ObjectNotFoundError):
                await test.get("X", timeout=1.0)
            st = await test.stats()
            assert st["used"] == base["used"] + x_alloc, st
            assert st["pinned_bytes"] >= x_size, st

            # Cycle the arena: 10 x 24 MiB (> 3x the capacity) through the free space.
            await cycle_arena(test, other, x_size, base["used"] + x_alloc, 10)

            # A put needing more than the free space must not get X's memory.
            big = np.full(48 * MiB, 3, dtype=np.uint8)
            fb_before = (await test.stats())["fallback_used"]
            try:
                ref = await test.put(big)
            except ObjectStoreFullError:
                ref = None
            if ref is not None:
                assert await segment_of(test, ref) != 0, "a 48 MiB put landed in the arena"
                assert (await test.stats())["fallback_used"] > fb_before
                seen = await other.get(ref, timeout=5.0)
                assert bool((seen == 3).all())
                del seen
                assert await test.delete(ref) == 1
            del big

            await b.send("check 7")
            check = await b.read()
            assert check["ok"], f"X's memory was reused while B held a view: {check}"

            await b.send("drop")
            assert (await b.read())["event"] == "dropped"
            await wait_stats(
                test,
                lambda s: s["used"] == base["used"] and s["pinned_bytes"] == 0,
                what="X freed once B dropped its view",
            )
            # The space is usable again: 56 MiB fits in the 64 MiB arena now.
            fb_before = (await test.stats())["fallback_used"]
            ref = await test.put(np.full(56 * MiB, 9, dtype=np.uint8))
            assert await segment_of(test, ref) == 0
            assert (await test.stats())["fallback_used"] == fb_before
            await b.send("exit")
            lines, _ = await b.finish()
            assert lines[-1]["event"] == "exit"
        finally:
            b.kill()


@pytest.mark.slow
async def test_view_outlives_owner_exit_and_holder_kill_frees_it(node_factory) -> None:
    """An unnamed object outlives its owner while another process holds a ref (and
    a view); that process being SIGKILLed frees it and gives the memory back."""
    node = node_factory(memory="64MiB")
    x_size = 24 * MiB
    async with objstore.connect(node.socket) as test, objstore.connect(node.socket) as other:
        base = await test.stats()
        a = await Script.start("put_fill.py", node.socket, "-", x_size, 7, "wait", stdin=True)
        b = None
        try:
            put = await a.read()
            x_alloc = (await test.stats())["used"] - base["used"]
            b = await Script.start("holder.py", node.socket, put["ref"], 7, stdin=True)
            held = await b.read()
            assert held["event"] == "holding" and held["ok"], held
            await a.send("go")
            await a.finish()
            # The owner left, but B holds a ref: the object stays readable (its
            # owner's death does not take it), and its memory stays put.
            await asyncio.sleep(0.2)
            assert await test.contains(objstore.ObjectRef.from_hex(put["ref"]))
            st = await test.stats()
            assert st["used"] == base["used"] + x_alloc and st["objects"] == 1, st
            await cycle_arena(test, other, x_size, base["used"] + x_alloc, 8)
            await b.send("check 7")
            check = await b.read()
            assert check["ok"], f"memory reused while B held a view: {check}"
            b.proc.send_signal(signal.SIGKILL)
            async with asyncio.timeout(5):
                await b.proc.wait()
            await wait_stats(
                test,
                lambda s: (
                    s["used"] == base["used"]
                    and s["pinned_bytes"] == 0
                    and s["objects"] == 0
                    and s["clients"] == 2
                ),
                what="the killed reader's pin released",
            )
        finally:
            a.kill()
            if b is not None:
                b.kill()


@pytest.mark.slow
async def test_slices_and_derived_arrays_keep_the_pin(node_factory) -> None:
    node = node_factory(memory="32MiB")
    n = 12 * MiB
    async with objstore.connect(node.socket) as owner, objstore.connect(node.socket) as reader:
        base = await reader.stats()
        ref = await owner.put(_pattern(n, 5), name="sliced")
        alloc = (await reader.stats())["used"] - base["used"]
        arr = await reader.get(ref)
        assert isinstance(arr, np.ndarray) and not arr.flags.writeable
        expect = _pattern(n, 5)
        part = arr[10:20]
        shaped = arr.reshape(-1, 4096)
        del arr
        gc.collect()
        await round_trip(reader)  # a release (there must be none) would have reached the node
        assert await owner.delete("sliced") == 1
        st = await reader.stats()
        assert st["used"] == base["used"] + alloc and st["pinned_bytes"] >= n, st
        # Fill all the free space, twice, with other data.
        for fill in (0xAA, 0x55):
            refs = []
            while True:
                st = await owner.stats()
                room = st["largest_free"] - 64 * 1024
                if room < MiB:
                    break
                r = await owner.put(np.full(room, fill, dtype=np.uint8))
                assert await segment_of(owner, r) == 0
                refs.append(r)
            np.testing.assert_array_equal(part, expect[10:20])
            np.testing.assert_array_equal(shaped.reshape(-1), expect)
            await owner.delete(refs)
        # The slice alone still pins it.
        del shaped
        gc.collect()
        await round_trip(reader)
        st = await reader.stats()
        assert st["used"] == base["used"] + alloc, st
        np.testing.assert_array_equal(part, expect[10:20])
        del part
        gc.collect()
        await wait_stats(
            reader,
            lambda s: s["used"] == base["used"] and s["pinned_bytes"] == 0,
            what="memory back once the last slice is gone",
        )
        del expect


async def test_view_outlives_its_client_close(node_factory) -> None:
    """``async with connect() as c: arr = await c.get(...)`` then using ``arr`` after
    the block: the view must still hold the object's bytes (DESIGN: the store never
    reuses the memory before the last reference to the view is gone; Client.close:
    "Views already handed out stay valid"), and the memory returns once it is gone."""
    node = node_factory(memory="64MiB")
    x_size = 24 * MiB
    async with objstore.connect(node.socket) as owner, objstore.connect(node.socket) as other:
        base = await owner.stats()
        await owner.put(np.full(x_size, 7, dtype=np.uint8), name="X")
        x_alloc = (await owner.stats())["used"] - base["used"]
        async with objstore.connect(node.socket) as reader:
            view = await reader.get("X")
        assert bool((view == 7).all())
        # The closed client keeps its connection while its views live, so the node has no
        # close to report: a moment for a wrong free to happen.
        await asyncio.sleep(0.1)
        assert await owner.delete("X") == 1
        st = await owner.stats()
        reused = st["used"] < base["used"] + x_alloc
        if not reused:
            await cycle_arena(owner, other, x_size, base["used"] + x_alloc, 4)
        else:  # the node freed X at once: show what becomes of the view
            for fill in (10, 11, 12):
                ref = await owner.put(np.full(x_size, fill, dtype=np.uint8))
                await owner.delete(ref)
        wrong = int(np.count_nonzero(view != 7))
        assert wrong == 0 and not reused, (
            f"after its client closed, a live view's object was freed (used {st['used']}, "
            f"X took {x_alloc}) and {wrong} of its {x_size} bytes were overwritten by later puts"
        )
        del view
        gc.collect()
        await wait_stats(
            owner,
            lambda s: s["used"] == base["used"] and s["pinned_bytes"] == 0,
            what="X freed once the view is gone",
        )


async def test_owner_view_keeps_memory_after_own_delete(node_factory) -> None:
    node = node_factory(memory="32MiB")
    async with objstore.connect(node.socket) as c:
        base = await c.stats()
        ref = await c.put(_pattern(12 * MiB, 1))
        arr = await c.get(ref)
        view = arr[5:]
        del arr
        assert await c.delete(ref) == 1
        await round_trip(c)
        alloc = (await c.stats())["used"] - base["used"]
        assert alloc >= 12 * MiB
        other = await c.put(np.full(18 * MiB, 0xEE, dtype=np.uint8))
        assert await segment_of(c, other) == 0
        np.testing.assert_array_equal(view, _pattern(12 * MiB, 1)[5:])
        await c.delete(other)
        del view
        gc.collect()
        await wait_stats(c, lambda s: s["used"] == base["used"], what="freed after the last view")


# --------------------------------------------------------------------------- crashes and exits


@pytest.mark.slow
async def test_client_killed_with_unsealed_raw_create(node) -> None:
    size = 96 * MiB
    async with objstore.connect(node.socket) as client:
        base = await client.stats()
        p = await Script.start("raw_create.py", node.socket, size)
        try:
            created = await p.read()
            assert created["event"] == "created" and created["ok"], created
            assert created["segment"] == 0 and created["fds"] == 1
            st = await client.stats()
            assert st["creating"] == 1 and st["used"] >= base["used"] + size, st
            assert st["clients"] == 2
            p.proc.send_signal(signal.SIGKILL)
            async with asyncio.timeout(5):
                await p.proc.wait()
        finally:
            p.kill()
        await wait_stats(
            client,
            lambda s: s["creating"] == 0 and s["used"] == base["used"] and s["clients"] == 1,
            what="the unsealed object aborted",
        )
        ref = await client.put(np.full(100 * MiB, 1, dtype=np.uint8))
        assert await segment_of(client, ref) == 0
        st = await client.stats()
        assert st["fallback_used"] == base["fallback_used"]


@pytest.mark.slow
async def test_client_killed_during_put(node) -> None:
    """``client.put`` of 96 MiB, SIGKILLed while its object is still CREATING (the
    copy takes tens of ms; in the rare case it was sealed first, try again)."""
    size = 96 * MiB
    async with objstore.connect(node.socket) as client:
        base = await client.stats()
        for _attempt in range(3):
            p = await Script.start("put_huge.py", node.socket, size)
            try:
                assert (await p.read(15))["event"] == "putting"
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    st = await client.stats()
                    if st["creating"] >= 1 or st["sealed"] >= 1:
                        break
                else:
                    raise AssertionError("the put never reached the node")
                os.kill(p.proc.pid, signal.SIGKILL)
                async with asyncio.timeout(5):
                    await p.proc.wait()
            finally:
                p.kill()
            await wait_stats(
                client,
                lambda s: s["creating"] == 0 and s["used"] == base["used"] and s["objects"] == 0,
                what="the killed client's object aborted or freed",
            )
            if st["creating"] >= 1:
                break
        else:
            raise AssertionError("never caught the put while its object was CREATING")
        ref = await client.put(np.full(100 * MiB, 2, dtype=np.uint8))
        assert await segment_of(client, ref) == 0


async def test_exited_client_unnamed_objects_are_freed(node) -> None:
    async with objstore.connect(node.socket) as client:
        base = await client.stats()
        (done,) = await run_script("put_many.py", node.socket, 100)
        assert done["stats"]["objects"] == base["objects"] + 100
        assert done["stats"]["used"] > base["used"]
        await wait_stats(
            client,
            lambda s: (
                s["used"] == base["used"] and s["objects"] == base["objects"] and s["clients"] == 1
            ),
            what="the exited client's unnamed objects freed",
        )


@pytest.mark.slow
async def test_exited_client_named_objects_survive(node) -> None:
    (done,) = await run_script("put_many.py", node.socket, 8, "keep")
    lines = await run_script("consumer.py", node.socket, "keep", 8)
    (consumed,) = lines
    assert consumed["bad"] == []
    assert consumed["digests"] == done["digests"]
    async with objstore.connect(node.socket) as client:
        st = await client.stats()
        assert st["objects"] == 8 and st["pinned_bytes"] == 0
        for k in range(8):
            assert await client.delete(f"keep-{k}") == 1
        await wait_stats(client, lambda s: s["used"] == 0 and s["objects"] == 0, what="deleted")


@pytest.mark.slow
async def test_eight_busy_client_processes(node) -> None:
    workers, named = 8, 3
    procs = [await Script.start("worker.py", node.socket, i, workers, 2.0) for i in range(workers)]
    try:
        results = await asyncio.gather(*(p.finish(25) for p in procs))
    finally:
        for p in procs:
            p.kill()
    for (done,), _ in results:
        assert done["bad"] == [], done
        assert done["ops"] > 10, done
    async with objstore.connect(node.socket) as client:
        st = await wait_stats(
            client,
            lambda s: s["clients"] == 1 and s["objects"] == workers * named,
            what="only the named objects left",
        )
        assert st["pinned_bytes"] == 0 and st["creating"] == 0, st
        for i in range(workers):
            for k in range(named):
                got = await client.get(f"w{i}-{k}", timeout=2.0)
                size = (3000, 30_000, 700_000)[k % 3]
                np.testing.assert_array_equal(got, _pattern(size, i * 1000 + k))
                del got
                assert await client.delete(f"w{i}-{k}") == 1
        await wait_stats(
            client,
            lambda s: s["objects"] == 0 and s["used"] == 0 and s["pinned_bytes"] == 0,
            what="everything freed",
        )
