"""SpillManager in process: over a SpillStore (tests/fakes.py) and a real LocalBackend.

Each test plays the node's object service through the SpillStore (puts,
gets, deletes, client pins) and ends with everything checked: the policy,
files and restore queue consistent, no lease, allocation or waiter left in
the store, no task left in the manager, no spill file left on disk.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from _spill import (
    CAPACITY,
    SIZE,
    check_manager,
    data,
    oid,
    spill_files,
    spilling,
    wait_until,
)
from fakes import StepBackend
from tmpfs import tmpfs

from objstore.errors import ObjectLostError, ObjectStoreFullError, OutOfDiskError
from objstore.plasma.api import ObjectState
from objstore.spill.backends import LocalBackend
from objstore.spill.errors import SpillIOError
from objstore.spill.records import HEADER_SIZE
from objstore.spill.urls import SpillURL, split_base

pytestmark = pytest.mark.timeout(60)

SEALED, SPILLED, DELETED = ObjectState.SEALED, ObjectState.SPILLED, ObjectState.DELETED


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))


# --- spilling and restoring ---------------------------------------------------------


async def test_make_room_spills_least_recently_used_and_gets_restore_them(tmp_path: Path) -> None:
    async with spilling(tmp_path) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        assert store.largest_free == 0
        assert await store.get(oid(0)) == data(0)  # now the most recently used
        got = await mgr.make_room(3 * SIZE)
        assert got >= 3 * SIZE and store.largest_free >= 3 * SIZE
        assert store.spilled() == [oid(1), oid(2), oid(3)]
        assert len(spill_files(tmp_path)) == 1  # one fused file
        assert mgr.stats()["spilled_objects"] == 3 and mgr.spilled_bytes == 3 * SIZE
        for o in store.spilled():
            assert SpillURL.parse(mgr.url_of(o)).size > SIZE
        assert {o for o, _ in mgr.copies_snapshot()} == set(store.spilled())
        # Every get restores; room is made by spilling others (memory is full again).
        for i in [*range(16), *range(16)]:
            assert await store.get(oid(i)) == data(i)
        assert mgr.stats()["restored"] >= 3
        check_manager(mgr)
        for i in range(16):
            store.delete(oid(i))
        await wait_until(lambda: not spill_files(tmp_path))
        assert mgr.spilled_bytes == 0 and not mgr.copies and not len(mgr.files)


async def test_a_restored_object_is_freed_again_without_writing(tmp_path: Path) -> None:
    async with spilling(tmp_path) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        await mgr.make_room(SIZE)
        assert store.spilled() == [oid(0)]
        assert await store.get(oid(0)) == data(0)  # restored into the free block
        written = mgr.stats()["files_written"]
        for i in range(1, 16):
            await store.get(oid(i))  # oid(0) is the least recently used again
        await mgr.make_room(SIZE)
        assert store.spilled() == [oid(0)]
        assert mgr.stats()["files_written"] == written  # its copy was still valid
        for i in range(16):
            store.delete(oid(i))


async def test_spilling_over_the_threshold_runs_in_the_background(tmp_path: Path) -> None:
    async with spilling(tmp_path, threshold=0.5) as (store, mgr):
        for i in range(12):
            store.put(oid(i), data(i))
        await wait_until(lambda: not mgr.policy.need() and not mgr.policy.writes_in_flight)
        assert mgr.policy.primary_bytes <= CAPACITY // 2
        assert oid(0) in store.spilled() and oid(11) not in store.spilled()
        for i in range(12):
            assert await store.get(oid(i)) == data(i)
        for i in range(12):
            store.delete(oid(i))


async def test_owners_answering_the_invalidation_are_waited_for(tmp_path: Path) -> None:
    async with spilling(tmp_path, unmap_wait_s=5.0) as (store, mgr):
        store.answer_invalidations = True
        for i in range(16):
            (await store.create(oid(i), data(i))).mapped = True  # the owner maps it
        t0 = time.monotonic()
        assert await mgr.make_room(2 * SIZE) >= 2 * SIZE
        assert time.monotonic() - t0 < 2.0  # freed at the owners' answer, not the deadline
        assert set(store.invalidated) >= {oid(0), oid(1)}
        assert store.spilled() == [oid(0), oid(1)]
        for i in range(16):
            store.delete(oid(i))


# --- defect 6: making room while some candidates are held --------------------------------


async def test_held_candidates_do_not_stop_making_room(tmp_path: Path) -> None:
    """The least recently used are pinned by another client's views: the others go."""
    async with spilling(tmp_path) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        for i in range(4):
            store.pin(oid(i))
        assert await mgr.make_room(4 * SIZE) >= 4 * SIZE
        assert store.largest_free >= 4 * SIZE
        assert not {oid(i) for i in range(4)} & set(store.spilled())
        # Again, with the held ones written already (copies, still held): they are
        # handed out first and given back; the loop goes on to others.
        for i in range(16, 20):
            await store.create(oid(i), data(i))
        assert await mgr.make_room(4 * SIZE) >= 4 * SIZE
        for i in range(4):
            store.unpin(oid(i))
        for i in range(20):
            if oid(i) in store.objects:
                assert await store.get(oid(i)) == data(i)
                store.delete(oid(i))


async def test_a_get_restores_while_held_objects_fill_the_least_recently_used(
    tmp_path: Path,
) -> None:
    """The scenario of the issue, scaled down: gets one at a time, views dropped."""
    async with spilling(tmp_path) as (store, mgr):
        n = 3 * 16  # three times memory
        for i in range(6):
            await store.create(oid(i), data(i))
            store.pin(oid(i))  # another client's views
        for i in range(6, n):
            await store.create(oid(i), data(i))
        for i in range(6, n):
            assert await store.get(oid(i)) == data(i)
        # Two of the pinned ones are deleted while still held: no candidates any more.
        store.delete(oid(0))
        store.delete(oid(1))
        assert oid(0) not in mgr.policy and store.objects[oid(0)].state is DELETED
        for i in range(n, n + 16):
            await store.create(oid(i), data(i))
        for i in range(6):
            store.unpin(oid(i))
        assert oid(0) not in store.objects and oid(1) not in store.objects
        for i in range(2, n + 16):
            store.delete(oid(i))


async def test_a_deleted_but_held_object_is_no_candidate(tmp_path: Path) -> None:
    async with spilling(tmp_path) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        store.pin(oid(0))
        store.pin(oid(1))
        store.delete(oid(0))
        store.delete(oid(1))
        assert oid(0) not in mgr.policy and oid(1) not in mgr.policy
        assert await mgr.make_room(2 * SIZE) >= 2 * SIZE
        assert store.spilled() == [oid(2), oid(3)]
        assert oid(0) not in mgr.copies
        store.unpin(oid(0))
        store.unpin(oid(1))
        assert oid(0) not in store.objects
        for i in range(2, 16):
            store.delete(oid(i))


@pytest.mark.parametrize("written", [False, True])
async def test_an_object_found_gone_does_not_end_making_room(tmp_path: Path, written: bool) -> None:
    """A store that dropped candidates without telling: they are skipped, others go."""
    async with spilling(tmp_path) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        for i in range(4):
            store.pin(oid(i))
        if written:  # they have copies already: they come back as free-only
            assert await mgr.make_room(4 * SIZE) >= 4 * SIZE
            for i in range(16, 20):
                await store.create(oid(i), data(i))
            for o, e in list(store.objects.items()):
                if e.state is SEALED and o not in {oid(i) for i in range(4)}:
                    await store.get(o)  # the held ones are the least recently used again
        for i in range(4):
            store.delete(oid(i), tell=False)  # held: DELETED, and the manager not told
        assert await mgr.make_room(4 * SIZE) >= 4 * SIZE
        for i in range(4):
            assert oid(i) not in mgr.policy
            store.unpin(oid(i))
        for o in list(store.objects):
            store.delete(o)


async def test_everything_held_gives_up_after_the_unmap_wait(tmp_path: Path) -> None:
    async with spilling(tmp_path, unmap_wait_s=0.3) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
            store.pin(oid(i))
        t0 = time.monotonic()
        assert await mgr.make_room(SIZE) == 0
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(ObjectStoreFullError):
            await store.create(oid(99), data(99))
        for i in range(16):
            store.unpin(oid(i))
        assert await mgr.make_room(SIZE) >= SIZE  # released: now they go
        for i in range(16):
            store.delete(oid(i))


async def test_a_restore_makes_room_by_spilling_others(tmp_path: Path) -> None:
    async with spilling(tmp_path) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        await mgr.make_room(2 * SIZE)
        for i in (16, 17):
            await store.create(oid(i), data(i))
        assert store.largest_free == 0 and store.spilled() == [oid(0), oid(1)]
        assert await store.get(oid(0)) == data(0)
        assert await store.get(oid(1)) == data(1)
        assert len(store.spilled()) == 2  # two others made the room
        for i in range(18):
            store.delete(oid(i))


async def test_a_restore_without_room_fails_its_get_with_store_full(tmp_path: Path) -> None:
    async with spilling(tmp_path, make_room_timeout_s=0.5, unmap_wait_s=0.1) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        await mgr.make_room(SIZE)
        await store.create(oid(16), data(16))
        for i in range(1, 17):
            store.pin(oid(i))
        with pytest.raises(ObjectStoreFullError, match="no room to restore"):
            await store.get(oid(0))
        for i in range(1, 17):
            store.unpin(oid(i))
        assert await store.get(oid(0)) == data(0)  # asked again, with room to make
        for i in range(17):
            store.delete(oid(i))


# --- damage and errors ---------------------------------------------------------------------


async def test_a_damaged_record_loses_exactly_its_object(tmp_path: Path) -> None:
    async with spilling(tmp_path, min_spilling_size=4 * SIZE) as (store, mgr):
        for i in range(4):
            await store.create(oid(i), data(i))
        await mgr.make_room(CAPACITY)
        assert len(store.spilled()) == 4 and len(spill_files(tmp_path)) == 1
        url = SpillURL.parse(mgr.url_of(oid(1)))
        path = split_base(url.base)[2]
        # A byte of its payload (after the header and the one byte of metadata).
        await asyncio.to_thread(flip_byte, path, url.offset + HEADER_SIZE + 1 + 1000)
        results = await asyncio.gather(
            *(store.get(oid(i)) for i in range(4)), return_exceptions=True
        )
        assert isinstance(results[1], ObjectLostError), results[1]
        assert "damaged" in str(results[1]) and "CRC" in str(results[1])
        assert [results[i] for i in (0, 2, 3)] == [data(0), data(2), data(3)]
        assert mgr.stats()["restore_errors"] == 1
        assert store.objects[oid(1)].state is SPILLED  # still there, for a delete
        for i in range(4):
            store.delete(oid(i))


async def test_a_missing_file_loses_its_objects(tmp_path: Path) -> None:
    async with spilling(tmp_path) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        await mgr.make_room(2 * SIZE)
        (path,) = spill_files(tmp_path)
        os.unlink(path)
        for i in (0, 1):
            with pytest.raises(ObjectLostError, match="is missing"):
                await store.get(oid(i))
        for i in range(16):
            store.delete(oid(i))


async def test_a_transient_read_error_is_retried(tmp_path: Path) -> None:
    backend = StepBackend(LocalBackend([str(tmp_path)], "node"))
    async with spilling(tmp_path, backend) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        await mgr.make_room(SIZE)
        backend.fail["read:before"] = SpillIOError("flaky")
        assert await store.get(oid(0)) == data(0)
        assert backend.steps.count("read:before") == 2
        for i in range(16):
            store.delete(oid(i))


async def test_deleted_while_its_file_is_written(tmp_path: Path) -> None:
    backend = StepBackend(LocalBackend([str(tmp_path)], "node"))
    async with spilling(tmp_path, backend) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        backend.pause_at = "write:before"
        task = asyncio.create_task(mgr.make_room(4 * SIZE))
        await backend.paused.wait()
        store.delete(oid(1))  # leased by the write: it stays until the write lets go
        assert store.objects[oid(1)].state is DELETED and oid(1) not in mgr.policy
        backend.resume.set()
        assert await task >= 3 * SIZE
        assert oid(1) not in store.objects and oid(1) not in mgr.copies
        assert store.spilled() == [oid(0), oid(2), oid(3)]
        (base,) = mgr.files.files()
        assert mgr.files.live(base) == 3
        for i in (0, 2, 3):
            assert await store.get(oid(i)) == data(i)
        for o in list(store.objects):
            store.delete(o)
        await wait_until(lambda: not spill_files(tmp_path))


async def test_a_write_failure_leaves_objects_in_memory_and_backs_off(tmp_path: Path) -> None:
    backend = StepBackend(LocalBackend([str(tmp_path)], "node"))
    async with spilling(tmp_path, backend) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        backend.fail["write:before"] = SpillIOError("refused")
        assert await mgr.make_room(SIZE) == 0
        assert isinstance(mgr.last_error, SpillIOError)
        assert not store.spilled() and mgr.stats()["write_errors"] == 1
        t0 = time.monotonic()
        assert await mgr.make_room(SIZE) >= SIZE  # after the backoff, it works again
        assert time.monotonic() - t0 >= 0.02
        assert mgr.last_error is None
        for i in range(16):
            store.delete(oid(i))


async def test_a_full_disk_fails_making_room_with_out_of_disk(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "128k") as disk:
        async with spilling(disk) as (store, mgr):
            for i in range(16):
                await store.create(oid(i), data(i))
            assert await mgr.make_room(4 * SIZE) == 0
            assert isinstance(mgr.last_error, OutOfDiskError)
            assert not store.spilled() and not spill_files(disk)
            await store.create(oid(99), data(99))  # one object still fits on the disk
            assert mgr.last_error is None and len(spill_files(disk)) == 1
            with pytest.raises(ObjectStoreFullError):
                await store.create(oid(100), data(100, 4 * SIZE))
            assert isinstance(mgr.last_error, OutOfDiskError)
            assert mgr.stats()["write_errors"] == 2
            for o in list(store.objects):
                store.delete(o)
