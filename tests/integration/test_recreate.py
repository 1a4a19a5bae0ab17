"""put(recreate=fn): a lost object is made again by the process that put it
(docs/lifecycle.md), with real node processes and real spill files."""

from __future__ import annotations

import asyncio
import glob
import os
from pathlib import Path

import numpy as np
import pytest

import objstore
from objstore.errors import ObjectLostError, ObjectReconstructionFailedError
from objstore.locations import LocationState

MiB = 1 << 20
ENV = {
    "OBJSTORE_PLASMA_FALLBACK_MAX_BYTES": "0",
    "OBJSTORE_SPILL_MIN_SPILLING_SIZE": "1",  # one object per spill file
}


def payload(i: int, n: int = 3 * MiB) -> np.ndarray:
    return np.full(n, i % 251, np.uint8)


async def _restart(node_factory, node, client: objstore.Client, timeout: float = 15.0) -> None:
    """SIGKILL the node, start one on the same socket, wait for the client to be back."""
    node.kill()
    async with asyncio.timeout(timeout):
        while client._back is None:  # the loss is noticed
            await asyncio.sleep(0.01)
        node_factory(socket_path=node.socket)
        while client._back is not None or client._transport is None:
            await asyncio.sleep(0.01)


async def test_a_spilled_object_whose_file_is_gone_is_recreated(node_factory, tmp_path) -> None:
    root = tmp_path / "spill"
    node = node_factory("--spill", str(root), memory="16MiB", env=ENV)
    calls: list[int] = []

    async def again() -> np.ndarray:  # async callables are awaited
        calls.append(1)
        return payload(0)

    async with objstore.connect(node.socket) as c:
        first = await c.put(payload(0), name="first", recreate=again)
        rest = [await c.put(payload(i)) for i in range(1, 10)]  # spills `first`
        objects, _ = await c.list_objects()
        url = next(o["spill_url"] for o in objects if o["object_id"] == first.hex())
        assert url, "the first object was not spilled"
        files = [f for f in glob.glob(str(root / "**" / "*"), recursive=True) if os.path.isfile(f)]
        mine = [f for f in files if url.partition("?")[0].endswith(Path(f).name)]
        assert len(mine) == 1, (url, files)
        os.unlink(mine[0])
        got = await c.get(first, timeout=30)
        assert np.array_equal(got, payload(0))
        assert calls == [1]
        # Named: the recreated object has its name again.
        assert np.array_equal(await c.get("first", timeout=10), payload(0))
        await c.delete("first")
        del got, rest
    assert "asking its owner to recreate it" in node.stderr()


async def test_a_node_killed_and_restarted_under_its_owner(node_factory) -> None:
    node = node_factory()
    async with objstore.connect(node.socket) as c:
        ref = await c.put(b"made by a function" * 1000, recreate=lambda: b"made again" * 1000)
        plain = await c.put(b"nobody can make this again")
        named = await c.put(b"config v1", name="config", recreate=lambda: b"config v2")
        await _restart(node_factory, node, c)
        assert bytes(await c.get(ref, timeout=30)) == b"made again" * 1000
        # The owner registers the name again with the recreated object.
        assert bytes(await c.get(named, timeout=30)) == b"config v2"
        assert bytes(await c.get("config", timeout=10)) == b"config v2"
        with pytest.raises(ObjectLostError):
            await c.get(plain, timeout=10)
        # Other processes on the new node read the recreated object too.
        async with objstore.connect(node.socket) as other:
            again = objstore.ObjectRef.from_hex(ref.hex())
            assert bytes(await other.get(again, timeout=10)) == b"made again" * 1000


async def test_a_recreate_that_keeps_failing_gives_up(node_factory) -> None:
    node = node_factory()
    calls: list[int] = []

    def broken() -> bytes:
        calls.append(1)
        raise RuntimeError("the source is gone too")

    async with objstore.connect(node.socket) as c:
        ref = await c.put(b"v" * 100_000, recreate=broken)
        await _restart(node_factory, node, c)
        with pytest.raises(ObjectReconstructionFailedError, match="the source is gone too") as info:
            await c.get(ref, timeout=30)
        assert isinstance(info.value, ObjectLostError)  # old except clauses still catch it
        assert len(calls) == 3  # lifecycle.max_recreations


async def test_recreate_must_be_callable(node) -> None:
    async with objstore.connect(node.socket) as c:
        with pytest.raises(TypeError, match="callable"):
            await c.put(b"x", recreate=42)  # type: ignore[arg-type]


async def _reported(directory: str, ref: objstore.ObjectRef, *plain: objstore.ObjectRef) -> None:
    """Wait until the directory has the objects' rows (reports are batched), the
    recreatable one marked so: a node killed before that takes them along."""
    from objstore.directory.client import DirectoryAdmin

    async with DirectoryAdmin(directory) as d:
        async with asyncio.timeout(15):
            while True:
                rows = await d.lookup([ref._id, *(p._id for p in plain)])
                if rows[0].recreatable and all(r.state == LocationState.PRESENT for r in rows):
                    return
                await asyncio.sleep(0.02)


async def test_a_get_on_another_node_waits_for_the_recreation(cluster_factory) -> None:
    """Every copy is lost (its only node killed, then declared dead: the row says
    LOST), and a get on the head is waiting: it carries on while the owner, back on a new
    node on the same socket, recreates the object, and returns the new value."""
    c = cluster_factory(1, memory="64MiB")
    (a,) = c.nodes
    async with objstore.connect(a.socket) as owner, objstore.connect(c.head.socket) as other:
        ref = await owner.put(b"first" * 1000, recreate=lambda: b"again" * 1000)
        plain = await owner.put(b"nobody can make this again")
        await _reported(c.directory, ref, plain)
        a.kill()
        # Both gets wait (their pulls try the dead node until the directory says).
        waiting = asyncio.create_task(other.get(ref, timeout=60))
        plain_get = asyncio.create_task(other.get(plain, timeout=60))
        from objstore.directory.client import DirectoryAdmin

        async with DirectoryAdmin(c.directory) as d:
            async with asyncio.timeout(20):
                while (await d.lookup([ref._id]))[0].state != LocationState.LOST:
                    await asyncio.sleep(0.05)
        # Not recreatable: failed when the directory found every copy gone.
        with pytest.raises(ObjectLostError):
            await asyncio.wait_for(plain_get, 10)
        await asyncio.sleep(0.5)
        assert not waiting.done()
        c.add_node(socket_path=a.socket, memory="64MiB")
        async with asyncio.timeout(20):
            while owner._back is not None or owner._transport is None:
                await asyncio.sleep(0.01)
        assert bytes(await asyncio.wait_for(waiting, 30)) == b"again" * 1000
    assert "its gets here wait for its owner to recreate it" in c.head.stderr()


async def test_gets_elsewhere_give_up_after_recreate_wait(cluster_factory) -> None:
    """The owner never comes back: the get fails after lifecycle.recreate_wait_s
    with an ObjectLostError that says so, not at its own (longer) timeout."""
    env = {"OBJSTORE_LIFECYCLE_RECREATE_WAIT_S": "1"}
    c = cluster_factory(1, env=env, memory="64MiB")
    (a,) = c.nodes
    async with objstore.connect(a.socket) as owner, objstore.connect(c.head.socket) as other:
        ref = await owner.put(b"first" * 1000, recreate=lambda: b"again" * 1000)
        await _reported(c.directory, ref)
        a.kill()
        waiting = asyncio.create_task(other.get(ref, timeout=60))
        with pytest.raises(ObjectLostError, match="recreate_wait_s"):
            await asyncio.wait_for(waiting, 30)
