"""In-process tests for the node's object table (objstore.plasma.store)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from objstore.config import Config, MiB
from objstore.errors import (
    ObjectExistsError,
    ObjectLostError,
    ObjectNotFoundError,
    ObjectStoreError,
    ObjectStoreFullError,
)
from objstore.ids import new_object_id
from objstore.plasma.allocator import Allocator
from objstore.plasma.lifecycle import ObjectState
from objstore.plasma.store import ClientState, NullEvents, ObjectEntry, PlasmaStore, _Waiter

KiB = 1024
ARENA = 4 * MiB
FALLBACK_MAX = 8 * MiB


def _config(fallback_dir: str) -> Config:
    return Config.for_test(
        plasma={"memory": ARENA, "fallback_dir": fallback_dir, "fallback_max_bytes": FALLBACK_MAX}
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PlasmaStore]:
    s = PlasmaStore(_config(str(tmp_path)))
    try:
        yield s
    finally:
        s.close()


class Client(ClientState):
    """A ClientState that records the ids it is told are invalid."""

    __slots__ = ("invalidated",)

    def __init__(self, client_id: int) -> None:
        self.invalidated: list[bytes] = []
        super().__init__(client_id, self.invalidated.extend, pid=1000 + client_id)


def check_consistent(store: PlasmaStore) -> None:
    """Everything the store counts agrees with its object table."""
    store.check()
    objs = store.table.objects
    creating = sum(1 for e in objs.values() if e.state is ObjectState.CREATING)
    sealed = sum(1 for e in objs.values() if e.state is ObjectState.SEALED)
    deleted = sum(1 for e in objs.values() if e.state is ObjectState.DELETED)
    assert creating + sealed + deleted == len(objs)
    arena_used = sum(Allocator.allocated_size(e.size) for e in objs.values() if e.segment == 0)
    assert store.memory.allocator.used == arena_used
    pinned = sum(e.size for e in objs.values() if e.pinners)
    segments = store.memory.segments
    fallback = sum(segments[e.segment].size for e in objs.values() if e.segment > 0)
    assert store.fallback_used == fallback
    assert set(segments) == {0} | {e.segment for e in objs.values() if e.segment > 0}
    stats = store.stats()
    assert stats["objects"] == len(objs)
    assert stats["creating"] == creating
    assert stats["sealed"] == sealed
    assert stats["pinned_bytes"] == pinned
    assert stats["used"] == arena_used
    assert stats["fallback_used"] == fallback
    assert store.memory.eviction.evictable_bytes == sum(store.memory.eviction._lru.values())


class _Hook(NullEvents):
    """Store events whose make_room is a test's function."""

    def __init__(self, hook: Callable[[int], Awaitable[int]]) -> None:
        self.hook = hook

    async def make_room(self, nbytes: int) -> int:
        return await self.hook(nbytes)


def make(
    store: PlasmaStore,
    client: ClientState | None,
    size: int,
    name: str = "",
    seal: bool = True,
    primary: bool = True,
    meta: bytes = b"m",
) -> bytes:
    oid = new_object_id()
    entry = store.create_now(oid, size, meta, client, name=name, primary=primary)
    assert entry is not None, f"no room for {size} bytes"
    if seal:
        store.seal(oid, client)
    return oid


# ---------------------------------------------------------------- create / seal / get


def test_create_seal_get(store: PlasmaStore) -> None:
    c = Client(1)
    oid = new_object_id()
    entry = store.create_now(oid, 1000, b"meta", c)
    assert entry is not None
    assert entry.state is ObjectState.CREATING
    assert entry.owner is c and entry.primary and entry.segment == 0
    assert entry.offset % 64 == 0
    assert store.readable(oid) is None  # invisible while CREATING
    assert not store.contains(oid)
    assert c.owned == [oid]
    check_consistent(store)
    with store.view(entry) as v:
        v[:4] = b"abcd"
    assert store.seal(oid, c) is entry
    assert entry.state is ObjectState.SEALED
    assert store.readable(oid) is entry
    assert store.contains(oid)
    assert (entry.segment, entry.size, entry.meta) == (0, 1000, b"meta")
    with store.view(entry) as v:
        assert bytes(v[:4]) == b"abcd"
    assert store.stats()["puts"] == 1
    check_consistent(store)


def test_get_unknown_and_bad_ids(store: PlasmaStore) -> None:
    assert store.readable(new_object_id()) is None
    with pytest.raises(ObjectStoreError, match="20 bytes"):
        store.readable(b"short")
    with pytest.raises(ObjectStoreError, match="20 bytes"):
        store.readable(b"x" * 21)
    with pytest.raises(ObjectStoreError, match="20 bytes"):
        store.create_now(b"short", 10, b"", Client(1))
    with pytest.raises(ObjectStoreError, match="negative"):
        store.create_now(new_object_id(), -1, b"", Client(1))
    check_consistent(store)


def test_seal_errors(store: PlasmaStore) -> None:
    c1, c2 = Client(1), Client(2)
    with pytest.raises(ObjectNotFoundError):
        store.seal(new_object_id(), c1)
    oid = make(store, c1, 10, seal=False)
    with pytest.raises(ObjectStoreError, match="another client"):
        store.seal(oid, c2)
    with pytest.raises(ObjectStoreError, match="another client"):
        store.abort(oid, c2)
    with pytest.raises(ObjectStoreError, match="still being written"):
        store.delete(oid)
    store.seal(oid, c1)
    with pytest.raises(ObjectStoreError):  # InvalidTransition: sealed twice
        store.seal(oid, c1)
    with pytest.raises(ObjectExistsError):
        store.create_now(oid, 10, b"", c2)
    check_consistent(store)


def test_get_deleted_raises_not_found(store: PlasmaStore) -> None:
    c1, c2 = Client(1), Client(2)
    oid = make(store, c1, 100)
    entry = store.readable(oid)
    assert entry is not None
    store.pin_for_get(oid, entry, c2)
    store.delete(oid)
    with pytest.raises(ObjectNotFoundError):  # deleted but still held
        store.readable(oid)
    store.release(oid, c1)
    store.release(oid, c2)
    assert oid not in store.table.objects
    with pytest.raises(ObjectNotFoundError):  # remembered as deleted
        store.readable(oid)
    check_consistent(store)


async def test_wait_sealed_resolves_on_seal(store: PlasmaStore) -> None:
    c = Client(1)
    oid = make(store, c, 64, seal=False)
    task = asyncio.create_task(store.wait_sealed(oid))
    await asyncio.sleep(0)
    assert not task.done()
    assert len(store._waiters[oid]) == 1
    entry = store.seal(oid, c)
    assert await asyncio.wait_for(task, 1.0) is entry
    assert store._waiters == {}
    # Already sealed: returns at once.
    assert await store.wait_sealed(oid) is entry


async def test_wait_sealed_for_unknown_id_then_created(store: PlasmaStore) -> None:
    c = Client(1)
    oid = new_object_id()
    task = asyncio.create_task(store.wait_sealed(oid))
    await asyncio.sleep(0)
    assert oid in store._waiters
    store.create_now(oid, 8, b"", c)
    await asyncio.sleep(0)
    assert not task.done()
    entry = store.seal(oid, c)
    assert await asyncio.wait_for(task, 1.0) is entry
    assert store._waiters == {}


async def test_wait_sealed_cancelled_leaves_no_waiter(store: PlasmaStore) -> None:
    c = Client(1)
    oid = make(store, c, 64, seal=False)
    task = asyncio.create_task(store.wait_sealed(oid))
    other = asyncio.create_task(store.wait_sealed(oid))
    await asyncio.sleep(0)
    assert len(store._waiters[oid]) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(store._waiters[oid]) == 1
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other
    assert store._waiters == {}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.wait_sealed(oid), 0.01)
    assert store._waiters == {}
    # The object is still sealable afterwards and a new wait works.
    store.seal(oid, c)
    assert (await store.wait_sealed(oid)).state is ObjectState.SEALED


# ---------------------------------------------------------------- put_inline


def test_put_inline(store: PlasmaStore) -> None:
    c = Client(1)
    oid = new_object_id()
    entry = store.put_inline(oid, b"hello world", b"objstore/raw", c, name="greeting")
    assert entry is not None
    assert entry.state is ObjectState.SEALED
    assert entry.meta == b"objstore/raw"
    assert store.readable(oid) is entry
    assert store.lookup_name("greeting") == oid
    with store.view(entry) as v:
        assert bytes(v) == b"hello world"
    empty = new_object_id()
    e2 = store.put_inline(empty, b"", b"objstore/raw", c)
    assert e2 is not None and e2.size == 0 and e2.state is ObjectState.SEALED
    with store.view(e2) as v:
        assert bytes(v) == b""
    assert store.stats()["puts"] == 2
    check_consistent(store)


async def test_put_inline_slow_uses_fallback(store: PlasmaStore) -> None:
    c = Client(1)
    for _ in range(4):
        make(store, c, MiB)
    oid = new_object_id()
    assert store.put_inline(oid, b"x" * 100, b"", c) is None
    entry = await store.put_inline_slow(oid, b"x" * 100, b"", c)
    assert entry.segment >= 1 and entry.state is ObjectState.SEALED
    with store.view(entry) as v:
        assert bytes(v) == b"x" * 100
    check_consistent(store)


# ---------------------------------------------------------------- names


def test_names(store: PlasmaStore) -> None:
    c1, c2 = Client(1), Client(2)
    a = make(store, c1, 10, name="shared")
    assert store.lookup_name("shared") == a
    with pytest.raises(ObjectExistsError, match="'shared'") as info:
        store.create_now(new_object_id(), 10, b"", c2, name="shared")
    assert a.hex() in str(info.value)
    assert len(store.table.objects) == 1  # the failed create left nothing behind
    # delete frees the name even while the owner still holds the object
    assert store.delete(a)
    with pytest.raises(ObjectNotFoundError, match="shared"):
        store.lookup_name("shared")
    b = make(store, c2, 10, name="shared")
    assert store.lookup_name("shared") == b
    check_consistent(store)
    store.release(a, c1)
    assert a not in store.table.objects
    assert store.lookup_name("shared") == b  # freeing `a` did not touch the new name
    # abort releases the name of a CREATING object
    d = make(store, c1, 10, name="draft", seal=False)
    with pytest.raises(ObjectExistsError, match="'draft'"):
        store.create_now(new_object_id(), 10, b"", c2, name="draft")
    store.abort(d, c1)
    assert d not in store.table.objects
    e = make(store, c2, 10, name="draft")
    assert store.lookup_name("draft") == e
    check_consistent(store)


# ---------------------------------------------------------------- ownership and pins


def test_owner_delete_invalidates_and_frees_after_all_release(store: PlasmaStore) -> None:
    owner, p1, p2, bystander = Client(1), Client(2), Client(3), Client(4)
    base = store.memory.allocator.used
    oid = make(store, owner, 1000)
    size = Allocator.allocated_size(1000)
    assert store.memory.allocator.used == base + size
    entry = store.readable(oid)
    assert entry is not None
    # The owner reads through the location it wrote to: a mapping, not a pin.
    assert entry.mapped and entry.pinners is None and store.pinned_bytes == 0
    check_consistent(store)
    store.pin_for_get(oid, entry, p1)
    store.pin_for_get(oid, entry, p1)
    store.pin_for_get(oid, entry, p2)
    assert entry.pinners == {p1: 2, p2: 1}
    assert store.pinned_bytes == 1000
    assert store.stats()["gets"] == 3
    check_consistent(store)

    assert store.delete(oid) is True
    assert not store.delete(oid)  # second delete is a no-op
    assert owner.invalidated == [oid]
    assert p1.invalidated == [oid]
    assert p2.invalidated == [oid]
    assert bystander.invalidated == []
    assert entry.state is ObjectState.DELETED
    stats = store.stats()
    assert stats["objects"] == 1 and stats["sealed"] == 0 and stats["creating"] == 0
    check_consistent(store)

    store.release(oid, owner)
    assert entry.owner is None and not entry.mapped
    assert store.memory.allocator.used == base + size
    check_consistent(store)
    store.release(oid, p1)  # one of p1's two views
    assert store.memory.allocator.used == base + size
    assert store.pinned_bytes == 1000
    check_consistent(store)
    store.release(oid, p1)
    assert store.memory.allocator.used == base + size
    check_consistent(store)
    store.release(oid, bystander)  # holds nothing: no effect
    assert store.memory.allocator.used == base + size
    store.release(oid, p2)
    assert oid not in store.table.objects
    assert store.memory.allocator.used == base
    assert store.pinned_bytes == 0
    assert p1.pinned == {} and p2.pinned == {}
    stats = store.stats()
    assert stats["objects"] == 0 and stats["sealed"] == 0 and stats["pinned_bytes"] == 0
    check_consistent(store)
    store.release(oid, p2)  # releasing a freed object is harmless
    check_consistent(store)


def test_pinners_release_before_owner(store: PlasmaStore) -> None:
    owner, p1 = Client(1), Client(2)
    oid = make(store, owner, 5000)
    entry = store.readable(oid)
    assert entry is not None
    store.pin_for_get(oid, entry, p1)
    store.release(oid, p1)
    assert store.pinned_bytes == 0 and oid in store.table.objects
    store.delete(oid)
    assert p1.invalidated == []  # no longer a holder
    assert oid in store.table.objects  # the owner still reads it through its mapping
    store.release(oid, owner)
    assert oid not in store.table.objects
    assert store.memory.allocator.used == 0
    check_consistent(store)


def test_owner_release_of_a_live_object_ends_its_mapping_only(store: PlasmaStore) -> None:
    owner = Client(1)
    oid = make(store, owner, 5000)
    entry = store.readable(oid)
    assert entry is not None and entry.mapped
    store.release(oid, owner)  # the owner answered an invalidation (a spill)
    assert entry.owner is owner and not entry.mapped and oid in store.table.objects
    store.release(oid, owner)  # a second one changes nothing
    assert entry.owner is owner and oid in store.table.objects
    store.delete(oid)  # nobody holds it: freed at once
    assert oid not in store.table.objects and store.memory.allocator.used == 0
    check_consistent(store)


def test_invalidate_skips_closed_clients(store: PlasmaStore) -> None:
    owner, p1 = Client(1), Client(2)
    oid = make(store, owner, 10)
    entry = store.readable(oid)
    assert entry is not None
    store.pin_for_get(oid, entry, p1)
    owner.closed = True  # gone, not yet reaped
    store.delete(oid)
    assert owner.invalidated == []
    assert p1.invalidated == [oid]


# ---------------------------------------------------------------- disconnect / reap


async def test_disconnect_and_reap(store: PlasmaStore) -> None:
    gone, other = Client(1), Client(2)
    creating = make(store, gone, 100, seal=False, name="draft")
    unnamed = make(store, gone, 200)
    named = make(store, gone, 300, name="kept")
    held = make(store, gone, 400)  # pinned by `other`: deleted, freed on release
    deleted_held = make(store, gone, 500)  # deleted by its owner, not released
    deleted_released = make(store, gone, 600)  # deleted and released before leaving
    foreign = make(store, other, 700)  # `gone` pins it
    for oid, pinner in ((held, other), (foreign, gone)):
        entry = store.readable(oid)
        assert entry is not None
        store.pin_for_get(oid, entry, pinner)
    store.delete(deleted_held)
    store.delete(deleted_released)
    store.release(deleted_released, gone)
    # Another client re-creates the id `gone` used: reap must leave it alone.
    reused = deleted_released
    assert store.create_now(reused, 64, b"", other) is not None
    store.seal(reused, other)
    assert store.pinned_bytes == 400 + 700
    check_consistent(store)

    store.disconnect(gone)
    assert gone.closed
    assert gone.pinned == {}
    assert store.pinned_bytes == 400  # its pin on `foreign` is gone
    assert store.readable(foreign) is not None
    with pytest.raises(ObjectStoreError, match="disconnected"):
        store.create_now(new_object_id(), 10, b"", gone)
    check_consistent(store)

    await store.reap(gone)
    assert gone.owned == []
    assert creating not in store.table.objects  # aborted
    with pytest.raises(ObjectNotFoundError):
        store.lookup_name("draft")
    assert unnamed not in store.table.objects  # freed
    assert deleted_held not in store.table.objects  # freed
    kept = store.table.objects[named]
    assert kept.owner is None and kept.state is ObjectState.SEALED
    assert store.lookup_name("kept") == named
    h = store.table.objects[held]  # deleted, but `other` still holds a view
    assert h.state is ObjectState.DELETED and h.owner is None
    assert other.invalidated == [held]
    assert store.table.objects[reused].owner is other
    assert store.table.objects[reused].state is ObjectState.SEALED
    assert store.table.objects[foreign].owner is other
    check_consistent(store)

    store.release(held, other)
    assert held not in store.table.objects
    expected = sum(Allocator.allocated_size(s) for s in (300, 700, 64))
    assert store.memory.allocator.used == expected
    check_consistent(store)
    store.delete(named)
    assert named not in store.table.objects  # no owner, no pins: freed at once
    check_consistent(store)


async def test_reap_in_batches(store: PlasmaStore) -> None:
    c = Client(1)
    ids = [make(store, c, 8, seal=i % 2 == 0) for i in range(50)]
    store.disconnect(c)
    await store.reap(c, batch=7)
    assert all(oid not in store.table.objects for oid in ids)
    assert store.memory.allocator.used == 0
    check_consistent(store)


# ---------------------------------------------------------------- eviction


def _secondary(store: PlasmaStore, size: int) -> bytes:
    return make(store, None, size, primary=False)


def test_secondaries_become_evictable(store: PlasmaStore) -> None:
    c = Client(1)
    s = make(store, None, MiB, primary=False, seal=False)
    assert s not in store.memory.eviction  # not while CREATING
    store.seal(s, None)
    assert s in store.memory.eviction
    assert store.stats()["evictable_bytes"] == MiB
    p = make(store, c, MiB)
    assert p not in store.memory.eviction  # primaries never
    entry = store.readable(s)
    assert entry is not None
    store.pin_for_get(s, entry, c)
    assert s not in store.memory.eviction
    store.release(s, c)
    assert s in store.memory.eviction
    check_consistent(store)


def test_create_evicts_lru_secondaries(store: PlasmaStore) -> None:
    c, reader = Client(1), Client(2)
    p0 = make(store, c, MiB)
    s1 = _secondary(store, MiB)
    s2 = _secondary(store, MiB)
    s3 = _secondary(store, MiB)
    assert store.memory.allocator.free_bytes == 0
    # s1 is read (pin + release): it becomes the most recently used.
    e1 = store.readable(s1)
    assert e1 is not None
    store.pin_for_get(s1, e1, reader)
    store.release(s1, reader)
    # s3 stays pinned: never evicted.
    e3 = store.readable(s3)
    assert e3 is not None
    store.pin_for_get(s3, e3, reader)
    check_consistent(store)

    a = make(store, c, MiB)
    assert s2 not in store.table.objects  # the least recently used went first
    assert s1 in store.table.objects and s3 in store.table.objects and p0 in store.table.objects
    assert store.table.evictions == 1 and store.stats()["evictions"] == 1
    check_consistent(store)

    b = make(store, c, MiB - 10)
    assert s1 not in store.table.objects
    assert store.table.evictions == 2
    check_consistent(store)

    # Only primaries and a pinned secondary are left: nothing to evict.
    assert store.create_now(new_object_id(), 64, b"", c) is None
    assert store.table.evictions == 2
    assert {p0, a, b, s3} == set(store.table.objects)
    check_consistent(store)


def test_eviction_takes_only_what_is_needed(store: PlasmaStore) -> None:
    c = Client(1)
    make(store, c, 2 * MiB)
    s = [_secondary(store, 512 * KiB) for _ in range(4)]
    make(store, c, 512 * KiB + 1)  # needs two 512 KiB slots
    assert [x in store.table.objects for x in s] == [False, False, True, True]
    assert store.table.evictions == 2
    check_consistent(store)


def test_eviction_under_fragmentation(store: PlasmaStore) -> None:
    """Enough free bytes in total, but no free extent large enough, and a secondary
    that could be evicted: the create must evict (or report no room), not crash."""
    c = Client(1)
    k = 512 * KiB
    # Eight 512 KiB slots; slot 5 holds an evictable secondary copy.
    slots = [_secondary(store, k) if i == 5 else make(store, c, k) for i in range(8)]
    assert store.table.objects[slots[5]].offset == 5 * k
    for i in (1, 3):  # free two separate 512 KiB holes
        oid = slots[i]
        store.delete(oid)
        store.release(oid, c)
    assert store.memory.allocator.free_bytes == 2 * k and store.memory.allocator.largest_free == k
    check_consistent(store)
    # 600 KiB fits in no hole; evicting s5 does not make a 600 KiB extent either.
    got = store.create_now(new_object_id(), 600 * KiB, b"", c)
    assert got is None
    check_consistent(store)


async def test_fallback_secondary_is_not_evicted_for_arena_room(store: PlasmaStore) -> None:
    """A secondary copy living in a fallback segment frees no arena memory when
    evicted; making room in the arena must not count it (and then over-evict)."""
    c = Client(1)
    prim = [make(store, c, 512 * KiB) for _ in range(8)]
    f = new_object_id()
    entry = await store.create(f, 512 * KiB, b"", None, primary=False)
    assert entry.segment >= 1
    store.seal(f, None)
    for oid in prim[-2:]:
        store.delete(oid)
        store.release(oid, c)
    s1 = _secondary(store, 512 * KiB)
    s2 = _secondary(store, 512 * KiB)
    assert store.memory.allocator.free_bytes == 0
    check_consistent(store)
    make(store, c, 512 * KiB)  # needs exactly one 512 KiB arena slot
    assert s1 not in store.table.objects  # the LRU arena secondary made the room
    assert s2 in store.table.objects, (
        "an arena secondary was evicted though its room was not needed"
    )
    check_consistent(store)


# ---------------------------------------------------------------- fallback


async def test_fallback_when_arena_full(store: PlasmaStore, tmp_path: Path) -> None:
    c = Client(1)
    prim = [make(store, c, MiB) for _ in range(4)]
    assert store.memory.allocator.free_bytes == 0
    oid = new_object_id()
    assert store.create_now(oid, 3 * MiB, b"", c) is None
    entry = await store.create(oid, 3 * MiB, b"", c)
    assert entry.segment >= 1 and entry.offset == 0
    assert entry.segment in store.memory.segments
    assert store.fallback_used == 3 * MiB
    assert store.stats()["fallback_used"] == 3 * MiB
    with store.view(entry) as v:
        v[:5] = b"hello"
        v[-1:] = b"!"
    store.seal(oid, c)
    with store.view(entry) as v:
        assert bytes(v[:5]) == b"hello" and bytes(v[-1:]) == b"!"
    check_consistent(store)

    oid2 = new_object_id()
    e2 = await store.create(oid2, 2 * MiB, b"", c)
    assert e2.segment not in (0, entry.segment)
    assert store.fallback_used == 5 * MiB
    store.abort(oid2, c)  # aborting a fallback object drops its segment
    assert e2.segment not in store.memory.segments
    assert store.fallback_used == 3 * MiB
    check_consistent(store)

    store.delete(oid)
    assert store.fallback_used == 3 * MiB  # still held by the owner
    store.release(oid, c)
    assert oid not in store.table.objects
    assert store.fallback_used == 0
    assert set(store.memory.segments) == {0}
    assert store.memory.allocator.used == 4 * MiB
    assert all(p in store.table.objects for p in prim)
    check_consistent(store)


async def test_fallback_capacity_exceeded(store: PlasmaStore) -> None:
    c = Client(1)
    for _ in range(4):
        make(store, c, MiB)
    first = new_object_id()
    await store.create(first, 5 * MiB, b"", c)
    size = 3 * MiB + 512 * KiB
    with pytest.raises(ObjectStoreFullError) as info:
        await store.create(new_object_id(), size, b"", c)
    msg = str(info.value)
    assert "3.5 MiB" in msg and f"({size} bytes)" in msg
    assert "arena holds 4.0 MiB" in msg
    assert "5.0 MiB of 8.0 MiB" in msg
    assert isinstance(info.value, MemoryError)
    assert store.fallback_used == 5 * MiB
    assert len(store.table.objects) == 5
    check_consistent(store)
    # Exactly the remaining fallback room still fits.
    e = await store.create(new_object_id(), 3 * MiB, b"", c)
    assert e.segment >= 1
    assert store.fallback_used == FALLBACK_MAX
    check_consistent(store)


async def test_create_rechecks_name_after_making_room(store: PlasmaStore) -> None:
    c1, c2 = Client(1), Client(2)
    victim = make(store, c1, 4 * MiB)

    async def hook(nbytes: int) -> int:
        # While room is made, another client takes the name.
        store.delete(victim)
        store.release(victim, c1)
        make(store, c2, 0, name="race")
        return 4 * MiB

    store.events = _Hook(hook)
    with pytest.raises(ObjectExistsError, match="'race'"):
        await store.create(new_object_id(), MiB, b"", c1, name="race")
    assert store.memory.allocator.used == 64  # only "race": the room it got was given back
    assert set(store.memory.segments) == {0}
    check_consistent(store)


# ---------------------------------------------------------------- spill hook


async def test_spill_hook_called_before_fallback(store: PlasmaStore) -> None:
    c = Client(1)
    prim = [make(store, c, MiB) for _ in range(4)]
    asked: list[int] = []

    async def hook(nbytes: int) -> int:
        asked.append(nbytes)
        await asyncio.sleep(0)
        victim = prim.pop(0)
        store.delete(victim)
        store.release(victim, c)
        return MiB

    store.events = _Hook(hook)
    oid = new_object_id()
    entry = await store.create(oid, MiB - 10, b"", c)
    store.seal(oid, c)
    assert asked == [Allocator.allocated_size(MiB - 10)]
    assert entry.segment == 0
    assert store.fallback_used == 0 and set(store.memory.segments) == {0}
    check_consistent(store)
    # Not asked when there is room.
    store.delete(oid)
    store.release(oid, c)
    await store.create(new_object_id(), MiB, b"", c)
    assert len(asked) == 1


async def test_spill_hook_that_frees_nothing_falls_back(store: PlasmaStore) -> None:
    c = Client(1)
    for _ in range(4):
        make(store, c, MiB)
    asked: list[int] = []

    async def hook(nbytes: int) -> int:
        asked.append(nbytes)
        return 0

    store.events = _Hook(hook)
    entry = await store.create(new_object_id(), 100, b"", c)
    assert asked == [Allocator.allocated_size(100)]
    assert entry.segment >= 1
    check_consistent(store)


def test_close_cancels_waiters(tmp_path: Path) -> None:
    s = PlasmaStore(_config(str(tmp_path)))
    loop = asyncio.new_event_loop()
    try:
        fut = loop.create_future()
        s._waiters[new_object_id()] = [_Waiter(fut, None)]
        s.close()
        assert fut.cancelled()
        assert s.table.objects == {} and s.memory.segments == {}
    finally:
        loop.close()


# ---------------------------------------------------------------- stateful


class StoreMachine(RuleBasedStateMachine):
    """Random create/seal/abort/pin/release/delete/disconnect over 3 clients."""

    created = Bundle("created")

    def __init__(self) -> None:
        super().__init__()
        self.store = PlasmaStore(_config(tempfile.gettempdir()))
        self.loop = asyncio.new_event_loop()
        self.next_client = 0
        self.clients = [self._new_client() for _ in range(3)]
        self.name_counter = 0

    def _new_client(self) -> Client:
        self.next_client += 1
        return Client(self.next_client)

    def _entries(self, state: ObjectState) -> list[bytes]:
        return [oid for oid, e in self.store.table.objects.items() if e.state is state]

    # -- rules
    @rule(
        target=created,
        ci=st.integers(0, 2),
        size=st.sampled_from([0, 1, 63, 64, 1000, 100 * KiB, 700 * KiB]),
        named=st.booleans(),
        secondary=st.booleans(),
    )
    def create(self, ci: int, size: int, named: bool, secondary: bool) -> bytes:
        oid = new_object_id()
        client = None if secondary else self.clients[ci]
        name = ""
        if named and not secondary:
            self.name_counter += 1
            name = f"n{self.name_counter}"
        entry = self.store.create_now(oid, size, b"m", client, name=name, primary=not secondary)
        if entry is not None:
            assert entry.segment == 0
            if client is None:
                self.store.seal(oid, None)
        return oid

    @rule(oid=created)
    def seal(self, oid: bytes) -> None:
        e = self.store.table.objects.get(oid)
        if e is None or e.state is not ObjectState.CREATING:
            return
        assert e.owner is not None
        self.store.seal(oid, e.owner)

    @rule(oid=consumes(created))
    def abort(self, oid: bytes) -> None:
        e = self.store.table.objects.get(oid)
        if e is None or e.state is not ObjectState.CREATING:
            return
        self.store.abort(oid, e.owner)
        assert oid not in self.store.table.objects

    @rule(oid=created, ci=st.integers(0, 2))
    def pin(self, oid: bytes, ci: int) -> None:
        e = self.store.table.objects.get(oid)
        if e is None or e.state is ObjectState.DELETED:
            # Gone, deleted but held, or remembered as deleted (NotFound) or
            # aborted unsealed (Lost): never readable.
            if e is not None or oid in self.store.table._deleted:
                aborted = e is None and self.store.table._deleted[oid]
                with pytest.raises(ObjectLostError if aborted else ObjectNotFoundError):
                    self.store.readable(oid)
            else:
                assert self.store.readable(oid) is None
            return
        got = self.store.readable(oid)
        if e.state is ObjectState.CREATING:
            assert got is None
            return
        assert got is e
        self.store.pin_for_get(oid, e, self.clients[ci])

    @rule(oid=created, ci=st.integers(0, 2))
    def release(self, oid: bytes, ci: int) -> None:
        self.store.release(oid, self.clients[ci])

    @rule(oid=created)
    def delete(self, oid: bytes) -> None:
        e = self.store.table.objects.get(oid)
        if e is None:
            assert not self.store.delete(oid)
            return
        if e.state is ObjectState.CREATING:
            with pytest.raises(ObjectStoreError):
                self.store.delete(oid)
            return
        holders = ([e.owner] if e.owner is not None else []) + list(e.pinners or ())
        was_sealed = e.state is ObjectState.SEALED
        before = {c: len(c.invalidated) for c in self.clients}
        assert self.store.delete(oid) is was_sealed
        if was_sealed:
            for c in self.clients:
                assert len(c.invalidated) - before[c] == (1 if c in holders else 0)
            if not holders:
                assert oid not in self.store.table.objects

    @rule(ci=st.integers(0, 2))
    def disconnect(self, ci: int) -> None:
        c = self.clients[ci]
        owned = [oid for oid, e in self.store.table.objects.items() if e.owner is c]
        named = {oid for oid in owned if oid in self.store.table.names_by_id}
        self.store.disconnect(c)
        assert c.pinned == {}
        assert all(not e.pinners or c not in e.pinners for e in self.store.table.objects.values())
        check_consistent(self.store)
        self.loop.run_until_complete(self.store.reap(c))
        for oid in owned:
            e = self.store.table.objects.get(oid)
            if oid in named and e is not None and e.state is ObjectState.SEALED:
                assert e.owner is None
            elif e is not None:
                # only kept while another client holds a view of it
                assert e.state is ObjectState.DELETED and e.owner is None and e.pinners
        assert all(e.owner is not c for e in self.store.table.objects.values())
        self.clients[ci] = self._new_client()

    # -- invariants
    @invariant()
    def consistent(self) -> None:
        check_consistent(self.store)

    def teardown(self) -> None:
        try:
            for c in self.clients:
                self.store.disconnect(c)
                self.loop.run_until_complete(self.store.reap(c))
            check_consistent(self.store)
            for oid, e in list(self.store.table.objects.items()):
                # Left: named objects and unowned secondary copies, all sealed.
                assert e.state is ObjectState.SEALED
                assert e.owner is None and e.pinners is None
                assert oid in self.store.table.names_by_id or not e.primary
                self.store.delete(oid)
            assert self.store.table.objects == {}
            assert self.store.memory.allocator.used == 0
            assert self.store.memory.allocator.free_bytes == ARENA
            assert self.store.pinned_bytes == 0
            assert self.store.table.n_creating == 0 and self.store.table.n_deleted == 0
            assert self.store.table.names == {} and self.store.table.names_by_id == {}
            assert self.store.memory.eviction.evictable_bytes == 0
        finally:
            self.store.close()
            self.loop.close()


StoreMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_store_state_machine = StoreMachine.TestCase


def test_entry_is_small() -> None:
    assert not hasattr(ObjectEntry(0, 0, 0, b"", None, True), "__dict__")
