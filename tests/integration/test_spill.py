"""Spilling and restoring with real node processes, real files and a real S3 server (moto).

Nodes here have a small arena and no fallback (``OBJSTORE_PLASMA_FALLBACK_MAX_BYTES=0``),
so every byte beyond memory must go through the spill target.  Fused files are
kept small (``min_spilling_size``) so that several files exist with little data.
"""

from __future__ import annotations

import asyncio
import glob
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from s3_server import s3_server  # noqa: F401  (fixture)
from tmpfs import tmpfs

import objstore

MiB = 1 << 20
SPILL_ENV = {
    "OBJSTORE_PLASMA_FALLBACK_MAX_BYTES": "0",
    "OBJSTORE_SPILL_MIN_SPILLING_SIZE": "4MiB",
}


def payload(i: int, n: int) -> np.ndarray:
    """A distinct array per object (checked byte for byte on the way back)."""
    return np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8)


def spill_files(root: Path) -> list[str]:
    return sorted(glob.glob(str(root / "*" / "*.spill")))


async def stats(client: objstore.Client) -> dict:
    return await client.stats()


async def put_three_times_memory(
    client: objstore.Client, memory: int
) -> list[tuple[objstore.ObjectRef, int, int]]:
    """Objects of mixed sizes (64 KiB .. 6 MiB) adding up to 3x the node's memory."""
    sizes = [64 << 10, 300 << 10, 1 * MiB, 6 * MiB, 2 * MiB]
    out = []
    total = 0
    i = 0
    while total < 3 * memory:
        n = sizes[i % len(sizes)]
        ref = await client.put(payload(i, n))
        out.append((ref, i, n))
        total += n
        i += 1
    return out


async def read_back(
    client: objstore.Client, refs: list[tuple[objstore.ObjectRef, int, int]]
) -> None:
    for ref, i, n in refs:
        got = await client.get(ref, timeout=30)
        assert got.shape == (n,), (i, got.shape)
        assert np.array_equal(got, payload(i, n)), f"object {i} came back different"
        del got


@pytest.mark.slow
async def test_three_times_memory_through_local_files(node_factory, tmp_path) -> None:
    root = tmp_path / "spill"
    node = node_factory("--spill", str(root), memory="32MiB", env=SPILL_ENV)
    async with objstore.connect(node.socket) as c:
        refs = await put_three_times_memory(c, 32 * MiB)
        s = await stats(c)
        assert s["spilled_objects"] > 0 and s["spilled_bytes"] >= 32 * MiB, s
        assert s["spill"] == str(root)
        files = spill_files(root)
        # (A background write may have a file on disk not counted yet.)
        assert 0 < s["spill_files"] <= len(files), (files, s)
        await read_back(c, refs)
        await read_back(c, refs[::-1])  # again, in the other order: spilled again, restored again
        s = await stats(c)
        assert s["restored"] > 0, s
        # Deleting every object deletes every file.
        for ref, _, _ in refs:
            await c.delete(ref)
        deadline = time.monotonic() + 10
        while spill_files(root):
            assert time.monotonic() < deadline, spill_files(root)
            await asyncio.sleep(0.05)
        s = await stats(c)
        assert s["spill_files"] == 0 and s["spilled_objects"] == 0 and s["spilled_bytes"] == 0, s
    assert "spilling failed" not in node.stderr()


@pytest.mark.slow
async def test_many_small_objects_share_fused_files(node_factory, tmp_path) -> None:
    root = tmp_path / "spill"
    env = {
        **SPILL_ENV,
        "OBJSTORE_SPILL_MIN_SPILLING_SIZE": "2MiB",
        "OBJSTORE_SPILL_MAX_FUSED_OBJECT_COUNT": "2000",
    }
    node = node_factory("--spill", str(root), memory="8MiB", env=env)
    async with objstore.connect(node.socket) as c:
        n = 20_000
        refs = [await c.put(i.to_bytes(4, "little") * 256) for i in range(n)]  # 1 KiB each
        s = await stats(c)
        assert s["spilled_objects"] > 5000, s
        files = spill_files(root)
        # Each file holds up to 2,000 objects (or 2 MiB): about a dozen files, not thousands.
        assert len(files) <= 20, len(files)
        for i in range(0, n, 7):
            assert bytes(await c.get(refs[i], timeout=30)) == i.to_bytes(4, "little") * 256


@pytest.mark.slow
async def test_spill_files_of_an_earlier_run_are_removed_at_start(node_factory, tmp_path) -> None:
    root = tmp_path / "spill"
    sock = str(tmp_path / "n.sock")
    node = node_factory("--spill", str(root), memory="16MiB", env=SPILL_ENV, socket_path=sock)
    async with objstore.connect(node.socket, reconnect=False) as c:
        refs = [await c.put(payload(i, 2 * MiB)) for i in range(12)]  # held: they spill
        assert spill_files(root)
        node.kill()  # no clean shutdown: the files stay
        del refs
    left = spill_files(root)
    assert left
    # Another node's files in the same target are not touched.
    other = root / "another-node"
    other.mkdir()
    (other / "x-00000001.spill").write_bytes(b"x")
    again = node_factory("--spill", str(root), memory="16MiB", env=SPILL_ENV, socket_path=sock)
    assert not any(os.path.exists(f) for f in left)
    assert (other / "x-00000001.spill").exists()
    assert "spill files of an earlier run removed" in again.stderr()


async def test_clean_shutdown_deletes_spill_files(node_factory, tmp_path) -> None:
    root = tmp_path / "spill"
    node = node_factory("--spill", str(root), memory="16MiB", env=SPILL_ENV)
    async with objstore.connect(node.socket) as c:
        refs = [await c.put(payload(i, 2 * MiB)) for i in range(12)]  # held: they spill
        assert spill_files(root)
        del refs
    assert node.stop() == 0
    assert spill_files(root) == []


async def test_a_corrupted_or_truncated_spill_file_loses_that_object_only(
    node_factory, tmp_path
) -> None:
    root = tmp_path / "spill"
    env = {**SPILL_ENV, "OBJSTORE_SPILL_MIN_SPILLING_SIZE": "1"}  # one object per file
    node = node_factory("--spill", str(root), memory="16MiB", env=env)
    async with objstore.connect(node.socket) as c:
        refs = [await c.put(payload(i, 3 * MiB)) for i in range(10)]
        files = spill_files(root)
        assert len(files) >= 4
        # Flip a byte in the middle of the first file, truncate the second.
        damage(files[0], files[1])
        objects, _ = await c.list_objects()
        damaged = {
            o["object_id"]
            for o in objects
            if o["state"] == "SPILLED"
            and o["spill_url"]
            .partition("?")[0]
            .endswith((Path(files[0]).name, Path(files[1]).name))
        }
        assert damaged
        lost = set()
        for i, ref in enumerate(refs):
            try:
                got = await c.get(ref, timeout=30)
            except objstore.ObjectLostError as exc:
                assert ref.hex() in str(exc) and "spill copy" in str(exc), str(exc)
                lost.add(ref.hex())
                continue
            assert np.array_equal(got, payload(i, 3 * MiB)), f"object {i} came back different"
            del got
        # Exactly the objects whose records were damaged are lost (a flipped
        # byte in the first record of a file, a truncated second file).
        assert lost and lost <= damaged, (lost, damaged)
    assert "restore failed" in node.stderr()


def damage(flip: str, truncate: str) -> None:
    with open(flip, "r+b") as f:
        f.seek(2 * MiB)
        b = f.read(1)
        f.seek(2 * MiB)
        f.write(bytes([b[0] ^ 0xFF]))
    with open(truncate, "r+b") as f:
        f.truncate(MiB)


@pytest.mark.slow
async def test_a_full_disk_fails_the_put_that_needed_room_and_nothing_else(
    node_factory, tmp_path
) -> None:
    with tmpfs(tmp_path / "small", "12m") as root:
        node = node_factory("--spill", str(root), memory="16MiB", env=SPILL_ENV)
        async with objstore.connect(node.socket) as c:
            kept = []
            with pytest.raises(objstore.OutOfDiskError) as info:
                for i in range(30):  # 60 MiB into 16 MiB of memory and 12 MiB of disk
                    kept.append((await c.put(payload(i, 2 * MiB)), i))
            assert "spilling failed" in str(info.value), str(info.value)
            # What is in memory reads back at once; then it is deleted to make
            # room, and what was spilled before the disk filled comes back.
            objects, _ = await c.list_objects()
            in_memory = {o["object_id"] for o in objects if o["state"] == "SEALED"}
            spilled = [(ref, i) for ref, i in kept if ref.hex() not in in_memory]
            assert spilled and len(spilled) < len(kept)
            for ref, i in kept:
                if ref.hex() in in_memory:
                    got = await c.get(ref, timeout=30)
                    assert np.array_equal(got, payload(i, 2 * MiB))
                    del got
                    await c.delete(ref)
            for ref, i in spilled:
                got = await c.get(ref, timeout=30)
                assert np.array_equal(got, payload(i, 2 * MiB)), f"object {i} came back different"
                del got
            # Freeing room makes puts work again.
            for ref, _ in spilled:
                await c.delete(ref)
            ref = await c.put(payload(99, 2 * MiB))
            assert np.array_equal(await c.get(ref, timeout=30), payload(99, 2 * MiB))
        # Logged once per streak, not once per attempt.
        assert node.stderr().count("spilling failed; objects stay in memory") <= 2, node.stderr()[
            -3000:
        ]
        node.stop()


@pytest.mark.slow
async def test_three_times_memory_through_s3(node_factory, s3_server) -> None:  # noqa: F811
    bucket = s3_server.create_bucket()
    env = {**SPILL_ENV, **s3_server.env()}
    node = node_factory("--spill", f"s3://{bucket}/spills", memory="32MiB", env=env)
    s3 = s3_server.client()

    def keys() -> list[str]:
        out = s3.list_objects_v2(Bucket=bucket, Prefix="spills/")
        return [o["Key"] for o in out.get("Contents", [])]

    async with objstore.connect(node.socket) as c:
        refs = await put_three_times_memory(c, 32 * MiB)
        s = await stats(c)
        assert s["spilled_objects"] > 0, s
        assert len(keys()) == s["spill_files"] > 0
        await read_back(c, refs)
        for ref, _, _ in refs:
            await c.delete(ref)
        deadline = time.monotonic() + 15
        while keys():
            assert time.monotonic() < deadline, keys()
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_s3_refusing_requests_fails_puts_cleanly(node_factory, s3_server) -> None:  # noqa: F811
    bucket = s3_server.create_bucket()
    env = {**SPILL_ENV, **s3_server.env()}
    node = node_factory("--spill", f"s3://{bucket}/spills", memory="16MiB", env=env)
    async with objstore.connect(node.socket) as c:
        refs = [(await c.put(payload(i, 2 * MiB)), i) for i in range(4)]
        # The bucket goes away: every write is refused from now on.
        s3 = s3_server.client()
        for page in [s3.list_objects_v2(Bucket=bucket)]:
            for o in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=o["Key"])
        s3.delete_bucket(Bucket=bucket)
        with pytest.raises(
            (objstore.ObjectStoreFullError, objstore.OutOfDiskError, objstore.ObjectStoreError)
        ):
            for i in range(4, 40):
                refs.append((await c.put(payload(i, 2 * MiB)), i))
        # The objects still in memory are intact.
        s = await stats(c)
        assert s["used"] > 0
    assert node.stderr().count("spilling failed; objects stay in memory") <= 2, node.stderr()[
        -3000:
    ]


@pytest.mark.slow
async def test_another_node_reads_an_object_spilled_on_its_primary(
    cluster_factory, tmp_path
) -> None:
    root = tmp_path / "spill"
    c = cluster_factory(0, env=SPILL_ENV, memory="64MiB")
    a = c.add_node("--spill", str(root), env=SPILL_ENV, memory="16MiB")
    b = c.add_node(env=SPILL_ENV, memory="64MiB")
    async with objstore.connect(a.socket) as ca, objstore.connect(b.socket) as cb:
        refs = [await ca.put(payload(i, 2 * MiB)) for i in range(20)]  # 40 MiB into 16
        assert (await ca.stats())["spilled_objects"] > 5
        for i, ref in enumerate(refs):
            got = await cb.get(ref, timeout=30)
            assert np.array_equal(got, payload(i, 2 * MiB)), f"object {i} came back different"
            del got


@pytest.mark.slow
async def test_an_s3_spill_copy_outlives_its_node(cluster_factory, s3_server) -> None:  # noqa: F811
    """A node spills to S3 and dies; another node reads the objects from S3 itself."""
    bucket = s3_server.create_bucket()
    env = {**SPILL_ENV, **s3_server.env()}
    c = cluster_factory(0, env=env, memory="64MiB")
    a = c.add_node("--spill", f"s3://{bucket}/spills", env=env, memory="16MiB")
    async with objstore.connect(a.socket) as ca:
        refs = [await ca.put(payload(i, 2 * MiB)) for i in range(16)]  # 32 MiB into 16
        objects, _ = await ca.list_objects()
        spilled = {o["object_id"] for o in objects if o["state"] == "SPILLED"}
        assert len(spilled) >= 4
        # The directory has heard of every spill URL before the node goes.
        from objstore.directory.client import DirectoryAdmin

        deadline = time.monotonic() + 10
        async with DirectoryAdmin(c.directory) as d:
            while True:
                rows = await d.lookup([r._id for r in refs if r.hex() in spilled])
                if all(r.spilled_url.startswith("s3://") for r in rows):
                    break
                assert time.monotonic() < deadline, rows
                await asyncio.sleep(0.1)
        a.kill()
    async with objstore.connect(c.head.socket) as ch:
        for i, ref in enumerate(refs):
            if ref.hex() not in spilled:
                continue
            got = await ch.get(ref, timeout=30)
            assert np.array_equal(got, payload(i, 2 * MiB)), f"object {i} came back different"
            del got
        # One that was only in the dead node's memory is lost.  (A background
        # spill may have written it after the listing: the directory, which
        # hears nothing from the dead node any more, says which.)
        async with DirectoryAdmin(c.directory) as d:
            rows = await d.lookup([r._id for r in refs if r.hex() not in spilled])
        only_in_memory = [r for r in rows if not r.spilled_url]
        if only_in_memory:
            with pytest.raises(objstore.ObjectLostError):
                await ch.get(objstore.ObjectRef(only_in_memory[0].object_id), timeout=30)


@pytest.mark.slow
async def test_spill_urls_come_back_after_a_directory_restart(
    cluster_factory, node_factory, tmp_path
) -> None:
    """A directory restarted without a state dir hears the spill URLs in the nodes' full reports."""
    from objstore.auth import generate_token, write_token_file
    from objstore.directory.client import DirectoryAdmin

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # No --state-dir to keep the cluster token in: the restarted head is given
    # the same one (a fresh token would lock the members out, as it should).
    token = tmp_path / "token"
    write_token_file(str(token), generate_token())
    args = ["--directory-port", str(port), "--token-file", str(token)]
    c = cluster_factory(0, *args, env=SPILL_ENV, memory="64MiB")
    a = c.add_node("--spill", str(tmp_path / "spill"), env=SPILL_ENV, memory="16MiB")
    async with objstore.connect(a.socket) as ca:
        refs = [await ca.put(payload(i, 2 * MiB)) for i in range(16)]
        objects, _ = await ca.list_objects()
        spilled = [
            r
            for r in refs
            if any(o["object_id"] == r.hex() and o["state"] == "SPILLED" for o in objects)
        ]
        assert spilled
        assert c.head.stop() == 0
        head2 = node_factory(
            *args, env={**SPILL_ENV, "OBJSTORE_DIRECTORY_HEARTBEAT_S": "0.25"}, memory="64MiB"
        )
        assert head2.ready["directory"] == c.directory
        deadline = time.monotonic() + 15
        async with DirectoryAdmin(c.directory) as d:
            while True:
                try:
                    rows = await d.lookup([r._id for r in spilled])
                except objstore.ObjectStoreError:
                    rows = []
                if rows and all(r.spilled_url.startswith("file://") for r in rows):
                    break
                assert time.monotonic() < deadline, rows
                await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_a_damaged_record_loses_only_its_own_object_in_a_fused_file(
    node_factory, tmp_path
) -> None:
    root = tmp_path / "spill"
    env = {**SPILL_ENV, "OBJSTORE_SPILL_MIN_SPILLING_SIZE": "6MiB"}
    node = node_factory("--spill", str(root), memory="32MiB", env=env)
    async with objstore.connect(node.socket) as c:
        refs = [await c.put(payload(i, MiB)) for i in range(80)]
        objects, _ = await c.list_objects()
        urls = {o["object_id"]: o["spill_url"] for o in objects if o["state"] == "SPILLED"}
        by_file: dict[str, list[tuple[int, int, str]]] = {}
        for oid, url in urls.items():
            base, _, query = url.partition("?")
            q = dict(kv.split("=") for kv in query.split("&"))
            by_file.setdefault(base, []).append((int(q["offset"]), int(q["size"]), oid))
        fused = [sorted(v) for v in by_file.values() if len(v) >= 3]
        assert len(fused) >= 2, by_file
        flipped, cut = fused[0], fused[1]
        flip_file = next(b for b, v in by_file.items() if sorted(v) == flipped)
        cut_file = next(b for b, v in by_file.items() if sorted(v) == cut)
        # A byte in the middle of the second record of one file; the other file
        # cut inside its second record.
        off, size, _ = flipped[1]
        cut_at = cut[1][0] + cut[1][1] // 2
        damage_at(flip_file.removeprefix("file://"), off + size // 2)
        os.truncate(cut_file.removeprefix("file://"), cut_at)
        expect_lost = {flipped[1][2]} | {oid for o, s, oid in cut if o + s > cut_at}
        # The objects of both files at once (their records are restored
        # together), then the others.
        together = {oid for _, _, oid in flipped + cut}
        first = [(i, r) for i, r in enumerate(refs) if r.hex() in together]
        rest = [(i, r) for i, r in enumerate(refs) if r.hex() not in together]
        results = await asyncio.gather(
            *(c.get(r, timeout=30) for _, r in first), return_exceptions=True
        )
        lost = set()
        for (i, ref), got in zip(first, results, strict=True):
            if isinstance(got, objstore.ObjectLostError):
                lost.add(ref.hex())
            else:
                assert not isinstance(got, BaseException), got
                assert np.array_equal(got, payload(i, MiB)), f"object {i} came back different"
        del results, got
        for i, ref in rest:
            got = await c.get(ref, timeout=30)
            assert np.array_equal(got, payload(i, MiB)), f"object {i} came back different"
            del got
        assert lost == expect_lost, (lost, expect_lost)


def damage_at(path: str, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))
