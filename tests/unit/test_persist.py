"""The directory's durable state (objstore.directory.persist).

The memory and SQLite stores pass the store contract (``state_store_contract.py``)
here, with SQLite files in ``tmp_path``; the Redis store, which needs a real
``redis-server``, passes it in tests/integration/test_persist_redis.py.
:class:`WriteBehind` is tested against :class:`FakeStore`, which can be told to
fail or to hang.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from state_store_contract import StateStoreContract, nid, oid, rec
from structlog.testing import capture_logs

from objstore.directory.persist import (
    SCHEMA_VERSION,
    MemoryStore,
    RedisStore,
    SqliteStore,
    StateStore,
    WriteBatch,
    WriteBehind,
    open_store,
)
from objstore.errors import ConfigError, NodeUnavailableError


# ---------------------------------------------------------------------- stores
class TestMemoryAndSqliteStores(StateStoreContract):
    """The contract (tests/state_store_contract.py); Redis: tests/integration/test_persist_redis.py."""

    @pytest.fixture(params=["memory", "sqlite"])
    def kind(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture(params=["sqlite"])
    def durable_kind(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)


# ---------------------------------------------------------------------- sqlite
async def test_sqlite_touches_nothing_before_first_use(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "directory.sqlite3"
    store = SqliteStore(str(path))
    assert store.describe == f"sqlite:{path}"
    assert not (tmp_path / "a").exists()
    await store.load()
    assert path.exists()
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert any(t.name.startswith("objstore-sqlite") for t in threading.enumerate())
    await store.close()


async def test_sqlite_layout(tmp_path: Path) -> None:
    path = tmp_path / "directory.sqlite3"
    store = SqliteStore(str(path))
    await store.apply(WriteBatch(node_puts=[(nid(1), b"n")]))
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        assert db.execute("SELECT id, rec FROM nodes").fetchall() == [(nid(1), b"n")]
    db.close()


async def test_sqlite_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "directory.sqlite3"
    path.write_bytes(b"this is not a database, just some text\n" * 100)
    store = SqliteStore(str(path))
    with pytest.raises(ConfigError) as info:
        await store.load()
    assert str(path) in str(info.value)
    assert "file is not a database" in str(info.value)
    await store.close()


async def test_sqlite_someone_elses_database(tmp_path: Path) -> None:
    path = tmp_path / "directory.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices(id INTEGER PRIMARY KEY)")
    db.close()
    store = SqliteStore(str(path))
    with pytest.raises(ConfigError, match="invoices"):
        await store.apply(WriteBatch(node_puts=[(nid(1), b"n")]))
    await store.close()


@pytest.mark.parametrize("version", [str(SCHEMA_VERSION + 1), "banana", None])
async def test_sqlite_newer_schema_refused(tmp_path: Path, version: str | None) -> None:
    path = tmp_path / "directory.sqlite3"
    store = SqliteStore(str(path))
    await store.apply(WriteBatch(object_puts=[(oid(1), b"o")]))
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    db.close()
    again = SqliteStore(str(path))
    with pytest.raises(ConfigError) as info:
        await again.load()
    assert str(path) in str(info.value) and "schema version" in str(info.value)
    await again.close()


async def test_sqlite_state_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file, not a directory")
    store = open_store("sqlite", str(tmp_path / "state"))
    with pytest.raises(ConfigError, match="state"):
        await store.load()
    await store.close()


# ----------------------------------------------------------------- open_store
async def test_open_store_forms(tmp_path: Path) -> None:
    sq = open_store("sqlite", str(tmp_path / "st"))
    assert isinstance(sq, SqliteStore)
    assert sq.describe == f"sqlite:{tmp_path / 'st' / 'directory.sqlite3'}"
    assert not (tmp_path / "st").exists()  # nothing touched yet
    await sq.close()
    assert isinstance(open_store("sqlite", ""), MemoryStore)
    assert open_store("sqlite", "").describe == "memory"
    # Redis URLs are validated, normalized and never shown with credentials;
    # nothing connects (nothing listens on these).
    for spec, shown in [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://localhost", "redis://localhost:6379/0"),
        ("redis://redis.internal:7000/", "redis://redis.internal:7000/0"),
        ("redis://:s3cret@10.0.0.1:1/15", "redis://10.0.0.1:1/15"),
        ("redis://user:s3cret@[::1]:65535/2", "redis://[::1]:65535/2"),
    ]:
        store = open_store(spec, str(tmp_path))
        assert isinstance(store, RedisStore)
        assert store.describe == shown
        await store.close()


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "SQLite",
        "sqlite:/tmp/x.db",
        "memory",
        "postgres://db/objstore",
        "rediss://127.0.0.1:6379/0",
        "redis://",
        "redis://:6379/0",
        "redis://host:0/0",
        "redis://host:65536/0",
        "redis://host:port/0",
        "redis://host:/0",
        "redis://host:6379/x",
        "redis://host:6379/-1",
        "redis://host:6379/0/1",
        "redis://host:6379/0?ssl=true",
        "redis://host:6379/0#frag",
        "redis://bad host:6379/0",
        "redis://[::zz]:6379/0",
        "redis://:secret@:6379/0",
    ],
)
def test_bad_store_specs(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(spec, "/tmp/state")
    msg = str(info.value)
    assert "directory.store" in msg
    assert "secret" not in msg


# ---------------------------------------------------------------- write-behind
class FakeStore:
    """A StateStore in memory that can be told to fail (or hang) on apply."""

    def __init__(self) -> None:
        self.describe = "fake"
        self.nodes: dict[bytes, bytes] = {}
        self.objects: dict[bytes, bytes] = {}
        self.batches: list[WriteBatch] = []
        self.fail_next = 0  # fail this many applies, then succeed
        self.fail_always = False
        self.hang = False  # apply never returns (until cancelled)
        self.gate: asyncio.Event | None = None  # apply waits for this, if set
        self.attempts = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def load(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        return dict(self.nodes), dict(self.objects)

    async def apply(self, batch: WriteBatch) -> None:
        self.attempts += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hang:
                await asyncio.Event().wait()
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if self.fail_always or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                raise NodeUnavailableError("fake store is down")
            for k in batch.node_deletes:
                self.nodes.pop(k, None)
            self.nodes.update(batch.node_puts)
            for k in batch.object_deletes:
                self.objects.pop(k, None)
            self.objects.update(batch.object_puts)
            self.batches.append(batch)
        finally:
            self.in_flight -= 1

    async def clear(self) -> None:
        self.nodes.clear()
        self.objects.clear()

    async def close(self) -> None:
        pass


class Table:
    """The directory's side: current records (a missing key means deleted)."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}
        self.objects: dict[bytes, bytes] = {}
        self.encoded = 0

    def encode_node(self, key: bytes) -> bytes | None:
        self.encoded += 1
        return self.nodes.get(key)

    def encode_object(self, key: bytes) -> bytes | None:
        self.encoded += 1
        return self.objects.get(key)


def writer(store: StateStore, table: Table, **kw: Any) -> WriteBehind:
    kw.setdefault("retry_min_s", 0.01)
    kw.setdefault("retry_max_s", 0.05)
    return WriteBehind(store, table.encode_node, table.encode_object, **kw)


async def test_coalescing_writes_a_key_once() -> None:
    store, table = FakeStore(), Table()
    wb = writer(store, table, interval=10.0)  # only flush writes
    wb.start()
    table.objects[oid(1)] = b"v1000"
    for _ in range(1000):
        wb.mark_object(oid(1))
    assert wb.pending == 1
    assert await wb.flush(5.0)
    assert store.attempts == 1 and table.encoded == 1
    assert store.batches[0].object_puts == [(oid(1), b"v1000")]
    assert wb.written == 1 and wb.pending == 0 and wb.last_flush_s >= 0
    await wb.close(5.0)


async def test_interval_gathers_marks() -> None:
    store, table = FakeStore(), Table()
    wb = writer(store, table, interval=0.05)
    wb.start()
    for i in range(3):
        table.nodes[nid(i)] = b"n"
        wb.mark_node(nid(i))
        await asyncio.sleep(0)
    async with asyncio.timeout(5):
        while not store.batches:
            await asyncio.sleep(0.01)
    assert len(store.batches) == 1 and sorted(store.batches[0].node_puts) == [
        (nid(i), b"n") for i in range(3)
    ]
    assert store.nodes == {nid(i): b"n" for i in range(3)}
    await wb.close(5.0)


async def test_none_means_delete() -> None:
    store, table = FakeStore(), Table()
    wb = writer(store, table)
    wb.start()
    table.nodes[nid(1)] = b"alive"
    table.objects[oid(1)] = b"here"
    wb.mark_node(nid(1))
    wb.mark_object(oid(1))
    assert await wb.flush(5.0)
    assert store.nodes == {nid(1): b"alive"} and store.objects == {oid(1): b"here"}
    del table.nodes[nid(1)], table.objects[oid(1)]
    wb.mark_node(nid(1))
    wb.mark_object(oid(1))
    assert await wb.flush(5.0)
    last = store.batches[-1]
    assert last.node_deletes == [nid(1)] and last.object_deletes == [oid(1)]
    assert last.node_puts == [] and last.object_puts == []
    assert store.nodes == {} and store.objects == {}
    assert wb.written == 4
    await wb.close(5.0)


async def test_encoding_in_slices_keeps_the_loop_responsive() -> None:
    store, table = FakeStore(), Table()
    ticks = 0
    seen: list[int] = []  # the tick count at every encode call

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    def encode_object(key: bytes) -> bytes | None:
        seen.append(ticks)
        return table.objects.get(key)

    n, slice_size = 1000, 100
    wb = WriteBehind(store, table.encode_node, encode_object, interval=10.0, slice_size=slice_size)
    wb.start()
    for i in range(n):
        table.objects[oid(i)] = b"x"
        wb.mark_object(oid(i))
    tick_task = asyncio.create_task(ticker())
    try:
        assert await wb.flush(5.0)
    finally:
        tick_task.cancel()
    assert len(seen) == n
    # The ticker ran between slices: at least one loop turn per slice, and never
    # more than `slice_size` encodes without one.
    assert len(set(seen)) >= n // slice_size
    runs: dict[int, int] = {}
    for t in seen:
        runs[t] = runs.get(t, 0) + 1
    assert max(runs.values()) <= slice_size
    assert len(store.objects) == n
    await wb.close(5.0)


async def test_failure_is_retried_until_written() -> None:
    store, table = FakeStore(), Table()
    store.fail_next = 3
    wb = writer(store, table, interval=0.0)
    wb.start()
    table.objects[oid(1)] = b"v"
    with capture_logs() as logs:
        wb.mark_object(oid(1))
        assert await wb.flush(10.0)
    assert store.objects == {oid(1): b"v"}
    assert store.attempts == 4 and wb.failures == 3
    assert wb.last_error is None and wb.pending == 0 and wb.written == 1
    warnings = [e for e in logs if e["log_level"] == "warning"]
    infos = [e for e in logs if e["log_level"] == "info"]
    assert len(warnings) == 1 and "fake store is down" in warnings[0]["error"]
    assert warnings[0]["store"] == "fake"
    assert len(infos) == 1 and infos[0]["failures"] == 3
    await wb.close(5.0)


async def test_one_warning_per_failure_streak() -> None:
    store, table = FakeStore(), Table()
    wb = writer(store, table, interval=0.0)
    wb.start()
    with capture_logs() as logs:
        for streak in range(2):
            store.fail_next = 4
            table.objects[oid(streak)] = b"v"
            wb.mark_object(oid(streak))
            assert await wb.flush(10.0)
    # Repeats of a streak are debug lines.
    levels = [e["log_level"] for e in logs if e["log_level"] != "debug"]
    assert levels == ["warning", "info", "warning", "info"]
    assert wb.failures == 8 and store.objects == {oid(0): b"v", oid(1): b"v"}
    await wb.close(5.0)


async def test_failed_write_reencodes_the_current_record() -> None:
    store, table = FakeStore(), Table()
    store.gate = asyncio.Event()
    store.fail_next = 1
    wb = writer(store, table, interval=0.0)
    wb.start()
    table.objects[oid(1)] = b"old"
    table.objects[oid(2)] = b"two"
    wb.mark_object(oid(1))
    wb.mark_object(oid(2))
    async with asyncio.timeout(5):
        while store.in_flight == 0:
            await asyncio.sleep(0.001)
    assert wb.pending == 2
    # Changed while its batch is in flight (and that batch will fail).
    table.objects[oid(1)] = b"new"
    wb.mark_object(oid(1))
    assert wb.pending == 3  # counted dirty and in flight
    store.gate.set()
    assert await wb.flush(5.0)
    assert store.objects == {oid(1): b"new", oid(2): b"two"}
    assert store.max_in_flight == 1 and wb.pending == 0
    await wb.close(5.0)


async def test_one_apply_in_flight() -> None:
    store, table = FakeStore(), Table()
    store.gate = asyncio.Event()
    wb = writer(store, table, interval=0.0)
    wb.start()
    for i in range(50):
        table.objects[oid(i)] = b"v"
        wb.mark_object(oid(i))
        for _ in range(3):
            await asyncio.sleep(0)
    assert store.in_flight == 1
    store.gate.set()
    assert await wb.flush(5.0)
    assert store.max_in_flight == 1
    assert len(store.objects) == 50
    assert len(store.batches) >= 2  # later marks went into a later batch
    await wb.close(5.0)


async def test_flush_semantics() -> None:
    store, table = FakeStore(), Table()
    wb = writer(store, table, interval=10.0)
    assert await wb.flush(0.1)  # nothing dirty, not even started
    table.nodes[nid(1)] = b"n"
    wb.mark_node(nid(1))
    # Nothing written on its own within the interval.
    wb.start()
    await asyncio.sleep(0.05)
    assert store.attempts == 0 and wb.pending == 1
    # A flush writes at once, and one more after it finds nothing to do.
    assert await wb.flush(5.0)
    assert store.nodes == {nid(1): b"n"} and store.attempts == 1
    assert await wb.flush(5.0)
    assert store.attempts == 1
    # A failing store: flush gives up at its timeout, the key stays dirty.
    store.fail_always = True
    wb.mark_node(nid(1))
    async with asyncio.timeout(5):
        assert not await wb.flush(0.2)
    assert wb.pending == 1 and wb.failures >= 1
    assert wb.last_error == "NodeUnavailableError: fake store is down"
    store.fail_always = False
    assert await wb.flush(5.0)
    assert wb.pending == 0 and wb.last_error is None
    await wb.close(5.0)


async def test_flush_starts_the_writer() -> None:
    store, table = FakeStore(), Table()
    wb = writer(store, table)
    table.objects[oid(1)] = b"v"
    wb.mark_object(oid(1))
    assert await wb.flush(5.0)
    assert store.objects == {oid(1): b"v"}
    await wb.close(5.0)


async def test_close_writes_what_is_dirty() -> None:
    store, table = FakeStore(), Table()
    wb = writer(store, table, interval=10.0)
    wb.start()
    for i in range(10):
        table.objects[oid(i)] = b"v"
        wb.mark_object(oid(i))
    with capture_logs() as logs:
        await wb.close(5.0)
    assert len(store.objects) == 10 and wb.pending == 0
    assert logs == []
    assert not await wb.flush(1.0) or wb.pending == 0
    await wb.close(5.0)  # idempotent


@pytest.mark.parametrize("how", ["fails", "hangs"])
async def test_close_gives_up_within_its_timeout(how: str) -> None:
    store, table = FakeStore(), Table()
    store.fail_always = how == "fails"
    store.hang = how == "hangs"
    wb = writer(store, table, interval=0.0, retry_min_s=0.02, retry_max_s=0.1)
    wb.start()
    for i in range(7):
        table.objects[oid(i)] = b"v"
        wb.mark_object(oid(i))
    timeout = 0.5
    t0 = time.perf_counter()
    with capture_logs() as logs:
        async with asyncio.timeout(timeout + 5):  # a hang fails here
            await wb.close(timeout)
    print(f"\nclose({timeout}) with a store that {how}: {time.perf_counter() - t0:.3f} s")
    assert store.in_flight == 0  # the hanging apply was cancelled
    assert wb.pending == 7
    gave_up = [e for e in logs if e["event"] == "directory state not fully written at close"]
    assert len(gave_up) == 1 and gave_up[0]["unwritten"] == 7
    assert store.objects == {}


async def test_write_behind_over_sqlite_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "directory.sqlite3")
    table = Table()
    store = SqliteStore(path)
    wb = writer(store, table, slice_size=1000)
    wb.start()
    for i in range(5000):
        table.objects[oid(i)] = rec(i)
        wb.mark_object(oid(i))
    table.nodes[nid(1)] = b"head"
    wb.mark_node(nid(1))
    assert await wb.flush(10.0)
    for i in range(0, 5000, 2):
        del table.objects[oid(i)]
        wb.mark_object(oid(i))
    await wb.close(10.0)
    await store.close()
    again = SqliteStore(path)
    nodes, objects = await again.load()
    await again.close()
    assert nodes == {nid(1): b"head"}
    assert objects == {oid(i): rec(i) for i in range(1, 5000, 2)}
    assert wb.written == 5001 + 2500


async def test_encoder_error_is_a_failed_write() -> None:
    store, table = FakeStore(), Table()
    broken = True

    def encode_object(key: bytes) -> bytes | None:
        if broken:
            raise ValueError("cannot encode")
        return b"ok"

    wb = WriteBehind(
        store, table.encode_node, encode_object, interval=0.0, retry_min_s=0.01, retry_max_s=0.02
    )
    wb.start()
    with capture_logs() as logs:
        wb.mark_object(oid(1))
        assert not await wb.flush(0.1)
        assert wb.pending == 1 and wb.last_error == "ValueError: cannot encode"
        broken = False
        assert await wb.flush(5.0)
    assert store.objects == {oid(1): b"ok"}
    assert [e["log_level"] for e in logs if e["log_level"] != "debug"] == ["warning", "info"]
    await wb.close(5.0)


def test_write_batch_len_and_empty() -> None:
    batch = WriteBatch()
    assert batch.empty and len(batch) == 0
    batch.node_deletes.append(nid(1))
    batch.object_puts.extend([(oid(1), b"a"), (oid(2), b"b")])
    assert not batch.empty and len(batch) == 3
    assert not hasattr(batch, "__dict__")  # slots
