"""In-process tests of the node's object service (objstore.node.objects) and the
local socket server in front of it: a real store, fakes for the directory, the
pulling side and the spill manager (tests/fakes.py), a real client on a real
socket where the server is under test."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeDirectory, FakePuller, FakeSpill

import objstore
from objstore.config import Config, MiB
from objstore.errors import (
    GetTimeoutError,
    ObjectExistsError,
    ObjectLostError,
    ObjectNotFoundError,
    ObjectStoreError,
)
from objstore.ids import new_object_id
from objstore.locations import LocationState, ObjectRow
from objstore.node.objects import ObjectService, Parts
from objstore.plasma.lifecycle import ObjectState
from objstore.plasma.server import PlasmaServer
from objstore.plasma.store import ClientState, PlasmaStore

KiB = 1024
NODE = b"n" * 16


@dataclass
class Rig:
    service: ObjectService
    store: PlasmaStore
    directory: FakeDirectory | None
    puller: FakePuller | None
    spill: FakeSpill | None

    def client(self, n: int = 1) -> ClientState:
        c = ClientState(n, lambda ids: None, pid=n)
        self.service.connected(c)
        return c

    def check(self) -> None:
        self.store.check()
        if self.directory is not None:
            assert self.directory.watching == {}, "a watch was left behind"
        if self.puller is not None:
            assert self.puller.wanted == {}, "a pull was left wanted"


def _rig(tmp: str, *, cluster: bool = False, spill: bool = False, memory: int = 4 * MiB) -> Rig:
    cfg = Config.for_test(plasma={"memory": memory, "fallback_dir": tmp, "fallback_max_bytes": 0})
    service = ObjectService(cfg, NODE)
    store = PlasmaStore(cfg, events=service)
    directory = FakeDirectory() if cluster else None
    puller = FakePuller() if cluster else None
    fake_spill = FakeSpill(store) if spill else None
    service.bind(Parts(store, spill=fake_spill, directory=directory, puller=puller))
    return Rig(service, store, directory, puller, fake_spill)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = _rig(str(tmp_path))
    yield r
    r.store.close()


@pytest.fixture
def cluster_rig(tmp_path: Path) -> Iterator[Rig]:
    r = _rig(str(tmp_path), cluster=True, spill=True)
    yield r
    r.store.close()


def _put(rig: Rig, client: ClientState, data: bytes, name: str = "") -> bytes:
    oid = new_object_id()
    entry = rig.service.put_inline_now(client, oid, data, b"m", name)
    assert entry is not None
    return oid


def _secondary(rig: Rig, data: bytes) -> bytes:
    oid = new_object_id()
    entry = rig.store.create_secondary_now(oid, len(data), b"m")
    assert entry is not None
    with rig.store.view(entry) as v:
        v[:] = data
    rig.store.seal_secondary(oid)
    return oid


# ----------------------------------------------------------------------------- the server


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Rig, str]]:
    sock = os.path.join(tempfile.mkdtemp(prefix="os-", dir="/tmp"), "n.sock")
    r = _rig(str(tmp_path), memory=64 * MiB)
    cfg = r.service.config.replace(plasma={"socket": sock})
    server = PlasmaServer(r.service, cfg, NODE)
    await server.start()
    try:
        yield r, sock
    finally:
        await server.close()
        await r.service.close()
        r.store.close()


async def test_server_serves_a_client_in_process(served: tuple[Rig, str]) -> None:
    rig, sock = served
    async with objstore.connect(sock, warm=False) as client:
        arr = np.arange(300_000, dtype=np.int64)
        ref = await client.put(arr)
        named = await client.put({"k": "v"}, name="cfg")
        assert (await client.get(ref) == arr).all()
        assert await client.get("cfg") == {"k": "v"}
        ready, pending = await client.wait([ref, named], num_returns=2, timeout=1.0)
        assert set(ready) == {ref, named} and not pending
        stats = await client.stats()
        assert stats["objects"] == 2 and stats["clients"] == 1
        objects, total = await client.list_objects(10)
        assert total == 2 and {o["name"] for o in objects} == {"", "cfg"}
        assert await client.delete(ref) == 1
        with pytest.raises(ObjectNotFoundError):
            await client.get(ref, timeout=1.0)
        with pytest.raises(GetTimeoutError):
            await client.get(objstore.ObjectRef(new_object_id()), timeout=0.05)
    # The client is gone: its unnamed objects are freed, the named one stays.
    async with asyncio.timeout(10):
        while rig.service.clients or len(rig.store) != 1:
            await asyncio.sleep(0.01)
    rig.store.check()


# ----------------------------------------------------------------------------- gets


async def test_get_waits_and_returns_pinned(rig: Rig) -> None:
    writer, reader = rig.client(1), rig.client(2)
    oid = new_object_id()
    assert rig.service.create_now(writer, oid, 10, b"m", "") is not None
    assert rig.service.get_now(reader, [oid], "") is None
    task = asyncio.create_task(rig.service.get(reader, [oid], "", 5.0))
    await asyncio.sleep(0)
    rig.service.seal(writer, oid)
    ids, entries = await task
    assert ids == [oid] and entries[0].state is ObjectState.SEALED
    assert reader.pinned == {oid: 1}  # one pin per id returned, no temporary pin left
    rig.service.release(reader, [oid])
    assert reader.pinned == {}
    rig.check()


async def test_a_pulled_copy_is_pinned_for_its_waiting_get_at_seal(tmp_path: Path) -> None:
    """Defect 3: a secondary sealed for a waiting get must not be evicted by a create
    that runs before the get's task does (it used to fail 'changed state during get')."""
    rig = _rig(str(tmp_path), memory=2 * MiB)
    try:
        owner, reader = rig.client(1), rig.client(2)
        oid = new_object_id()
        entry = rig.store.create_secondary_now(oid, MiB, b"m")
        assert entry is not None
        task = asyncio.create_task(rig.service.get(reader, [oid], "", 5.0))
        await asyncio.sleep(0)
        rig.store.seal_secondary(oid)
        # Same loop turn, before the get runs again: a put that needs the room.
        big = new_object_id()
        assert rig.service.create_now(owner, big, MiB + 512 * KiB, b"m", "") is None
        _ids, entries = await task
        assert entries[0].state is ObjectState.SEALED and rig.store.contains(oid)
        rig.service.release(reader, [oid])
        rig.check()
    finally:
        rig.store.close()


async def test_get_timeout_leaves_no_pin(rig: Rig) -> None:
    writer, reader = rig.client(1), rig.client(2)
    present = _put(rig, writer, b"x" * 100)
    missing = new_object_id()
    with pytest.raises(GetTimeoutError, match="1 object"):
        await rig.service.get(reader, [present, missing], "", 0.05)
    assert reader.pinned == {}
    rig.check()


async def test_get_of_an_object_deleted_while_waiting_for_another(rig: Rig) -> None:
    writer, reader = rig.client(1), rig.client(2)
    a = _put(rig, writer, b"a" * 100)
    b = new_object_id()
    rig.service.create_now(writer, b, 10, b"m", "")
    task = asyncio.create_task(rig.service.get(reader, [a, b], "", 5.0))
    await asyncio.sleep(0)
    assert rig.service.delete_now([a], "") == 1
    rig.service.seal(writer, b)
    with pytest.raises(ObjectNotFoundError, match="deleted"):
        await task
    assert reader.pinned == {}
    rig.service.release(writer, [a])
    rig.check()


@pytest.mark.parametrize("steps", range(6))
async def test_get_cancelled_at_any_point_leaves_nothing(tmp_path: Path, steps: int) -> None:
    """Cancel a get of three objects (one here, one sealed later, one never) after
    ``steps`` loop turns: no pin, no watch, no wanted pull is left."""
    rig = _rig(str(tmp_path), cluster=True)
    try:
        writer, reader = rig.client(1), rig.client(2)
        here = _put(rig, writer, b"h" * 10)
        later = new_object_id()
        rig.service.create_now(writer, later, 10, b"m", "")
        never = new_object_id()
        task = asyncio.create_task(rig.service.get(reader, [here, later, never], "", 5.0))
        for i in range(steps):
            await asyncio.sleep(0)
            if i == 2:
                rig.service.seal(writer, later)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert reader.pinned == {}
        rig.check()
    finally:
        rig.store.close()


async def test_a_restore_here_asks_no_other_node(cluster_rig: Rig) -> None:
    """Defect 4: a get of an object spilled here restores it without subscribing to
    it in the directory or asking the pulling side."""
    rig = cluster_rig
    writer, reader = rig.client(1), rig.client(2)
    oid = _put(rig, writer, b"s" * 1000)
    rig.service.release(writer, [oid])  # the owner lets go of its mapping
    assert rig.spill is not None and rig.directory is not None and rig.puller is not None
    rig.spill.spill(oid)
    assert rig.store.state_of(oid) is ObjectState.SPILLED
    _ids, entries = await rig.service.get(reader, [oid], "", 5.0)
    assert entries[0].state is ObjectState.SEALED
    assert ("restore", oid) in rig.spill.calls
    assert ("watch", oid) not in rig.directory.calls
    assert rig.puller.wanted == {} and not rig.puller.rows
    with rig.store.view(entries[0]) as v:
        assert bytes(v) == b"s" * 1000
    rig.service.release(reader, [oid])
    rig.check()


async def test_a_missing_object_is_watched_and_wanted_while_a_get_waits(cluster_rig: Rig) -> None:
    rig = cluster_rig
    assert rig.directory is not None and rig.puller is not None
    reader = rig.client(2)
    oid = new_object_id()
    task = asyncio.create_task(rig.service.get(reader, [oid], "", 5.0))
    await asyncio.sleep(0)
    assert rig.directory.watching == {oid: 1} and rig.puller.wanted == {oid: 1}
    _ = _secondary(rig, b"")  # unrelated traffic
    entry = rig.store.create_secondary_now(oid, 4, b"m")
    assert entry is not None
    rig.store.seal_secondary(oid)
    await task
    rig.service.release(reader, [oid])
    rig.check()


async def test_lost_and_deleted_notifications_fail_waiting_gets(cluster_rig: Rig) -> None:
    rig = cluster_rig
    reader = rig.client(2)
    lost, gone = new_object_id(), new_object_id()
    t1 = asyncio.create_task(rig.service.get(reader, [lost], "", 5.0))
    t2 = asyncio.create_task(rig.service.get(reader, [gone], "", 5.0))
    await asyncio.sleep(0)
    rig.service.on_update(
        [ObjectRow(lost, LocationState.LOST), ObjectRow(gone, LocationState.DELETED)]
    )
    with pytest.raises(ObjectLostError):
        await t1
    with pytest.raises(ObjectNotFoundError):
        await t2
    assert rig.puller is not None and len(rig.puller.rows) == 2
    rig.check()


async def test_get_by_a_name_only_the_directory_knows(cluster_rig: Rig) -> None:
    rig = cluster_rig
    assert rig.directory is not None
    reader = rig.client(2)
    oid = _secondary(rig, b"remote")
    rig.directory.names["far"] = ObjectRow(oid, LocationState.PRESENT, 6, name="far")
    assert rig.service.get_now(reader, [], "far") is None
    ids, _entries = await rig.service.get(reader, [], "far", 5.0)
    assert ids == [oid]
    rig.service.release(reader, [oid])
    with pytest.raises(ObjectNotFoundError):
        await rig.service.get(reader, [], "nowhere", 5.0)
    rig.check()


# ----------------------------------------------------------------------------- names, deletes


async def test_a_named_create_claims_the_name_and_gives_it_back_on_failure(
    cluster_rig: Rig,
) -> None:
    rig = cluster_rig
    assert rig.directory is not None
    writer = rig.client(1)
    oid = new_object_id()
    assert rig.service.put_inline_now(writer, oid, b"v", b"m", "cfg") is None
    await rig.service.put_inline(writer, oid, b"v", b"m", "cfg")
    assert ("reserve", "cfg") in rig.directory.calls and rig.store.named("cfg") == oid
    # Taken here: refused at once, without asking the directory.
    with pytest.raises(ObjectExistsError):
        rig.service.create_now(writer, new_object_id(), 1, b"m", "cfg")
    # Claimed, then the create fails (metadata too large): the name is given back.
    other = new_object_id()
    with pytest.raises(ObjectStoreError, match="max_metadata_bytes"):
        await rig.service.create(writer, other, 1, b"m" * (65 * KiB), "big")
    assert ("deleted", other) in rig.directory.calls
    rig.check()


async def test_delete_by_name_frees_a_local_secondary(cluster_rig: Rig) -> None:
    """Defect 5: a node holding only a secondary copy of a named object, deleting it
    by name, must not keep that copy readable."""
    rig = cluster_rig
    assert rig.directory is not None
    oid = _secondary(rig, b"copy")
    rig.directory.names["n"] = ObjectRow(oid, LocationState.PRESENT, 4, name="n")
    assert rig.service.delete_now([], "n") is None
    assert await rig.service.delete([], "n") == 1
    assert not rig.store.contains(oid)
    with pytest.raises(ObjectNotFoundError):
        rig.store.readable(oid)
    assert oid in rig.directory.deleted_remote  # the directory deletes it everywhere
    rig.check()


async def test_frees_from_the_directory_are_not_reported_back(cluster_rig: Rig) -> None:
    rig = cluster_rig
    assert rig.directory is not None
    oid = _secondary(rig, b"copy")
    rig.service.on_free([oid])
    assert not rig.store.contains(oid)
    assert ("deleted", oid) not in rig.directory.calls
    rig.check()


def test_metadata_is_bounded(rig: Rig) -> None:
    """Defect 7: metadata lives in the node's heap: bounded, with a clear error."""
    c = rig.client(1)
    limit = rig.service.config.plasma.max_metadata_bytes
    assert rig.service.create_now(c, new_object_id(), 1, b"m" * limit, "") is not None
    with pytest.raises(ObjectStoreError, match=r"over the limit .*plasma.max_metadata_bytes"):
        rig.service.create_now(c, new_object_id(), 1, b"m" * (limit + 1), "")
    rig.check()
