"""The :class:`~objstore.directory.persist.StateStore` contract, run against each store.

Every store (memory, SQLite, Redis) must pass the same tests.  A test module
subclasses :class:`StateStoreContract` and says which kinds it runs with the
``kind`` fixture (every contract test) and the ``durable_kind`` fixture (the
tests of data that outlives the store object: reopening, atomic batches, size)::

    class TestSqliteStore(StateStoreContract):
        @pytest.fixture(params=["sqlite"])
        def kind(self, request: pytest.FixtureRequest) -> str:
            return str(request.param)

        @pytest.fixture(params=["sqlite"])
        def durable_kind(self, request: pytest.FixtureRequest) -> str:
            return str(request.param)

The Redis stores need the ``redis_url`` fixture (``redis_server.py``) where
they run: tests/integration/test_persist_redis.py.  Each test uses its own key
prefix.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest

from objstore.directory.persist import (
    MemoryStore,
    RedisStore,
    SqliteStore,
    StateStore,
    WriteBatch,
)
from objstore.errors import ObjectStoreError

__all__ = ["StateStoreContract", "StoreFactory", "nid", "oid", "rec"]

StoreFactory = Callable[[], StateStore]


def nid(i: int) -> bytes:
    """A 16-byte node id."""
    return i.to_bytes(16, "big")


def oid(i: int) -> bytes:
    """A 20-byte object id."""
    return i.to_bytes(20, "big")


def rec(i: int, tag: bytes = b"r") -> bytes:
    """A record that differs for every ``i``."""
    return tag + b"-record-" + str(i).encode() * 4


class StateStoreContract:
    """The tests every store passes (see the module docstring)."""

    @pytest.fixture
    async def stores(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[Callable[[str], StoreFactory]]:
        """``stores(kind)`` -> a factory of stores that all see the same place.

        Every store made is closed at the end of the test.
        """
        made: list[StateStore] = []
        prefix = f"test-{uuid.uuid4().hex}"

        def factory_for(kind: str) -> StoreFactory:
            def make() -> StateStore:
                store: StateStore
                if kind == "memory":
                    store = MemoryStore()
                elif kind == "sqlite":
                    store = SqliteStore(str(tmp_path / "state" / "directory.sqlite3"))
                else:
                    store = RedisStore(request.getfixturevalue("redis_url"), prefix=prefix)
                made.append(store)
                return store

            return make

        yield factory_for
        for store in made:
            await store.close()

    async def test_round_trip(self, kind: str, stores: Callable[[str], StoreFactory]) -> None:
        store = stores(kind)()
        assert await store.load() == ({}, {})
        batch = WriteBatch(
            node_puts=[(nid(1), rec(1, b"n")), (nid(2), rec(2, b"n"))],
            object_puts=[(oid(i), rec(i)) for i in range(10)],
        )
        assert len(batch) == 12 and not batch.empty
        await store.apply(batch)
        nodes, objects = await store.load()
        assert nodes == {nid(1): rec(1, b"n"), nid(2): rec(2, b"n")}
        assert objects == {oid(i): rec(i) for i in range(10)}

    async def test_puts_deletes_and_overwrite_in_one_batch(
        self, kind: str, stores: Callable[[str], StoreFactory]
    ) -> None:
        store = stores(kind)()
        await store.apply(
            WriteBatch(
                node_puts=[(nid(1), b"n1"), (nid(2), b"n2")],
                object_puts=[(oid(i), b"old") for i in range(5)],
            )
        )
        await store.apply(
            WriteBatch(
                node_puts=[(nid(3), b"n3"), (nid(1), b"n1-new")],
                node_deletes=[nid(2), nid(99)],  # 99 was never there: not an error
                object_puts=[(oid(0), b"new"), (oid(7), b"seven")],
                object_deletes=[oid(1), oid(2)],
            )
        )
        nodes, objects = await store.load()
        assert nodes == {nid(1): b"n1-new", nid(3): b"n3"}
        assert objects == {oid(0): b"new", oid(3): b"old", oid(4): b"old", oid(7): b"seven"}

    async def test_deletes_apply_before_puts(
        self, kind: str, stores: Callable[[str], StoreFactory]
    ) -> None:
        store = stores(kind)()
        await store.apply(WriteBatch(object_puts=[(oid(1), b"a")], object_deletes=[oid(1)]))
        assert (await store.load())[1] == {oid(1): b"a"}

    async def test_empty_batch_and_clear(
        self, kind: str, stores: Callable[[str], StoreFactory]
    ) -> None:
        store = stores(kind)()
        assert WriteBatch().empty and len(WriteBatch()) == 0
        await store.apply(WriteBatch())
        await store.apply(WriteBatch(node_puts=[(nid(1), b"x")], object_puts=[(oid(1), b"y")]))
        await store.clear()
        assert await store.load() == ({}, {})
        await store.apply(WriteBatch(object_puts=[(oid(2), b"z")]))
        assert await store.load() == ({}, {oid(2): b"z"})

    async def test_reopen_sees_the_data(
        self, durable_kind: str, stores: Callable[[str], StoreFactory]
    ) -> None:
        kind = durable_kind
        make = stores(kind)
        first = make()
        await first.apply(
            WriteBatch(
                node_puts=[(nid(1), b"node")], object_puts=[(oid(1), b"o1"), (oid(2), b"o2")]
            )
        )
        await first.apply(WriteBatch(object_deletes=[oid(2)]))
        await first.close()
        second = make()
        assert await second.load() == ({nid(1): b"node"}, {oid(1): b"o1"})

    async def test_closed_store_refuses(
        self, kind: str, stores: Callable[[str], StoreFactory]
    ) -> None:
        store = stores(kind)()
        await store.load()
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(ObjectStoreError, match="closed"):
            await store.load()

    async def test_bad_batch_changes_nothing(
        self, durable_kind: str, stores: Callable[[str], StoreFactory]
    ) -> None:
        kind = durable_kind
        store = stores(kind)()
        await store.apply(WriteBatch(object_puts=[(oid(1), b"kept")]))
        bad = WriteBatch(
            node_puts=[(nid(1), b"n")],
            object_deletes=[oid(1)],
            object_puts=[(oid(2), b"fine"), (oid(3), cast(bytes, None))],  # rejected
        )
        with pytest.raises(ObjectStoreError):
            await store.apply(bad)
        assert await store.load() == ({}, {oid(1): b"kept"})

    async def test_100k_objects(
        self, durable_kind: str, stores: Callable[[str], StoreFactory]
    ) -> None:
        kind = durable_kind
        make = stores(kind)
        n, per_batch = 100_000, 10_000
        writer = make()
        t0 = time.perf_counter()
        for start in range(0, n, per_batch):
            await writer.apply(
                WriteBatch(object_puts=[(oid(i), rec(i)) for i in range(start, start + per_batch)])
            )
        write_s = time.perf_counter() - t0
        await writer.close()
        reader = make()
        t0 = time.perf_counter()
        nodes, objects = await reader.load()
        load_s = time.perf_counter() - t0
        print(f"\n{kind}: wrote {n} objects in {write_s:.3f} s, loaded them in {load_s:.3f} s")
        assert nodes == {}
        assert len(objects) == n
        for i in range(0, n, 997):
            assert objects[oid(i)] == rec(i)
