"""Defects found by a review and by trying objstore as a new user would, each shown
with real node processes (every test here failed before its fix)."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import objstore

KiB = 1 << 10
MiB = 1 << 20
HELPERS = Path(__file__).parent / "_helpers"


def pattern(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise AssertionError("no VmRSS")


# ----------------------------------------------------------------------------- transfer


class IdleClosingProxy:
    """A TCP proxy that closes a link idle for ``idle`` seconds, as a NAT or a
    server's idle timeout does to a pooled connection."""

    def __init__(self, target: tuple[str, int], idle: float) -> None:
        self.target = target
        self.idle = idle
        self.closed_idle = 0
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", port)

    async def _link(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.target)
        last = [time.monotonic()]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with_error = (ConnectionError, OSError)
            try:
                while data := await src.read(1 << 16):
                    last[0] = time.monotonic()
                    dst.write(data)
                    await dst.drain()
            except with_error:
                pass

        async def reaper() -> None:
            while time.monotonic() - last[0] < self.idle:
                await asyncio.sleep(self.idle / 4)
            self.closed_idle += 1

        tasks = [asyncio.ensure_future(c) for c in (pipe(r, uw), pipe(ur, w), reaper())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for x in (w, uw):
            x.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_pooled_socket_closed_while_idle_is_not_used(cluster_factory) -> None:
    """Defect 1: the first pull after an idle spell used a socket the other end had
    closed, failed with 'peer closed', and marked the only source failed."""
    env = {"OBJSTORE_TRANSFER_PULL_TIMEOUT_S": "3"}
    c = cluster_factory(0, env=env, memory="64MiB")
    real, front = _free_port(), _free_port()
    proxy = IdleClosingProxy(("127.0.0.1", real), idle=0.5)
    await proxy.start(front)
    a = c.add_node(
        "--port", str(real), env={**env, "OBJSTORE_NODE_ADVERTISE": f"127.0.0.1:{front}"}
    )
    try:
        async with objstore.connect(a.socket) as ca, objstore.connect(c.head.socket) as ch:
            first = await ca.put(pattern(300 * KiB, 1))
            second = await ca.put(pattern(300 * KiB, 2))
            assert bytes(await ch.get(first, timeout=20)) == pattern(300 * KiB, 1)
            async with asyncio.timeout(10):
                while not proxy.closed_idle:  # the pooled links were closed while idle
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # the closes have reached the head
            assert bytes(await ch.get(second, timeout=20)) == pattern(300 * KiB, 2)
    finally:
        await proxy.close()
    assert "pull from a source failed" not in c.head.stderr(), c.head.stderr()[-3000:]


async def test_waiting_for_local_room_does_not_fail_the_source(cluster_factory) -> None:
    """Defect 2: a pull that waited for room here longer than the per-source timeout
    marked a healthy source failed."""
    env = {"OBJSTORE_TRANSFER_PULL_TIMEOUT_S": "1", "OBJSTORE_PLASMA_FALLBACK_MAX_BYTES": "0"}
    c = cluster_factory(0, env=env, memory="64MiB")
    src = c.add_node(env=env, memory="64MiB")
    async with objstore.connect(src.socket) as cs, objstore.connect(c.head.socket) as ch:
        ref = await cs.put(pattern(24 * MiB, 3))
        # The head's memory is full of objects a view holds.
        held = [await ch.put(np.ones(12 * MiB, dtype=np.uint8)) for _ in range(4)]
        async with objstore.connect(c.head.socket) as reader:
            views = [await reader.get(r) for r in held]
            pending = asyncio.ensure_future(ch.get(ref, timeout=30))
            await asyncio.sleep(2.5)  # longer than two per-source timeouts
            assert not pending.done()
            for r in held:
                await ch.delete(r)
            del views
            gc.collect()
            assert bytes(await pending) == pattern(24 * MiB, 3)
    assert "pull from a source failed" not in c.head.stderr(), c.head.stderr()[-3000:]


# ----------------------------------------------------------------------------- names


async def test_delete_by_name_where_only_a_copy_is_frees_the_copy(cluster) -> None:
    """Defect 5: node 2 got a named object (a secondary copy), deleted it by name: the
    head said deleted, but node 2 still served the old bytes by ref."""
    n2 = cluster.nodes[0]
    async with objstore.connect(cluster.head.socket) as ch, objstore.connect(n2.socket) as c2:
        ref = await ch.put(pattern(200 * KiB, 5), name="weights")
        assert bytes(await c2.get("weights", timeout=20)) == pattern(200 * KiB, 5)
        assert await c2.contains(ref)
        assert await c2.delete("weights") == 1
        assert not await c2.contains(ref)
        with pytest.raises(objstore.ObjectNotFoundError):
            await c2.get(ref, timeout=5)
        objects, _ = await c2.list_objects(100)
        assert ref.binary not in {o["object_id"] for o in objects}
        # The head hears of the delete from the directory (a free), a moment later.
        async with asyncio.timeout(10):
            while await ch.contains(ref):
                await asyncio.sleep(0.05)
        with pytest.raises(objstore.ObjectNotFoundError):
            await ch.get("weights", timeout=5)


# ----------------------------------------------------------------------------- spilling


async def test_spilled_objects_come_back_while_others_are_held(node_factory, tmp_path) -> None:
    """Defect 6: with part of memory pinned by another client's views, gets of spilled
    objects failed with ObjectStoreFullError although unpinned primaries could be
    spilled; puts did too once held objects were deleted."""
    n = node_factory(
        "--spill",
        str(tmp_path / "spill"),
        memory="128MiB",
        env={"OBJSTORE_PLASMA_FALLBACK_MAX_BYTES": "0", "OBJSTORE_SPILL_MIN_SPILLING_SIZE": "8MiB"},
    )
    size = 8 * MiB
    async with objstore.connect(n.socket) as owner, objstore.connect(n.socket) as reader:
        pinned = [await owner.put(np.full(size, 200 + i, dtype=np.uint8)) for i in range(6)]
        views = [await reader.get(r) for r in pinned]  # 48 MiB held by another client
        refs = [await owner.put(np.full(size, i, dtype=np.uint8)) for i in range(48)]
        for i, r in enumerate(refs):
            arr = await owner.get(r, timeout=60)
            assert arr[0] == i and arr[-1] == i
            del arr
        # Two held objects deleted while still held: they must not stop spilling.
        await owner.delete(pinned[0])
        await owner.delete(pinned[1])
        more = [await owner.put(np.full(size, 100 + i, dtype=np.uint8)) for i in range(48)]
        for i, r in enumerate(more):
            arr = await owner.get(r, timeout=60)
            assert arr[0] == 100 + i
            del arr
        assert all(v[0] == 200 + i for i, v in enumerate(views))


# ----------------------------------------------------------------------------- metadata


def _big_metadata(socket_path: str, size: int, count: int) -> list[str]:
    """Run the helper: ``count`` creates with ``size`` bytes of metadata; its lines."""
    out = subprocess.run(
        [sys.executable, str(HELPERS / "big_metadata.py"), socket_path, str(size), str(count)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(HELPERS)},
    )
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line]


def test_large_metadata_is_refused_and_costs_the_node_nothing(node) -> None:
    """Defect 7: creates with 16 MiB of metadata each grew the node's heap by what
    they carried, and it stayed grown after they were deleted."""
    before = _rss(node.pid)
    replies = _big_metadata(node.socket, 16 * MiB, 6)
    assert len(replies) == 6 and all("max_metadata_bytes" in r for r in replies), replies
    assert _rss(node.pid) - before < 64 * MiB


def test_big_metadata_helper_speaks_the_protocol(node) -> None:
    """The helper above, with metadata under the limit: the create succeeds."""
    assert _big_metadata(node.socket, KiB, 1) == ["ok"]
