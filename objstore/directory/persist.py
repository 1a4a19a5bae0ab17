"""The directory's durable state: two tables of opaque records, written behind.

The directory server keeps its tables in memory and makes them durable here, so
that a head restarted with the same state recovers the cluster.  This module
stores bytes only; the directory encodes and decodes the records itself.

Tables
------
* ``nodes``: 16-byte node id -> record blob.
* ``objects``: 20-byte object id -> record blob.

Stores
------
:class:`StateStore` is the seam (a :class:`typing.Protocol`) with three
implementations, chosen by :func:`open_store` from ``directory.store``:

* :class:`MemoryStore`: nothing durable (no ``--state-dir``); tests read it back.
* :class:`SqliteStore`: one SQLite file in WAL mode, driven by one dedicated
  thread, so the event loop never touches the disk.
* :class:`RedisStore`: two Redis hashes (``{prefix}:nodes``, ``{prefix}:objects``)
  written in MULTI/EXEC transactions through ``redis.asyncio``.

Every store applies a :class:`WriteBatch` atomically (all of it or none of it),
deletes before puts.  None connects or touches the disk before its first
``load``/``apply``/``clear``; a schema version is kept beside the tables and a
newer or unknown one is refused with :class:`~objstore.errors.ConfigError`.

Write-behind
------------
:class:`WriteBehind` sits between the directory's hot path and a store: the
directory marks keys dirty (a set insertion), and a background task writes the
current record of every dirty key every ``interval`` seconds, encoding in slices
so the loop stays responsive, with one apply in flight and retries with
exponential backoff while the store fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import re
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import unquote, urlsplit

import structlog

from objstore.backoff import Backoff
from objstore.errors import (
    ConfigError,
    NodeUnavailableError,
    ObjectStoreError,
    OutOfDiskError,
)
from objstore.tasks import TaskSet

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "SCHEMA_VERSION",
    "WriteBatch",
    "StateStore",
    "MemoryStore",
    "SqliteStore",
    "RedisStore",
    "open_store",
    "WriteBehind",
    "Encoder",
]

log = structlog.get_logger("objstore.directory.persist")

# Version of the stored layout, kept in each store's meta table.  A store that
# holds another version is refused (written by a newer objstore, or not ours).
SCHEMA_VERSION = 1
_SCHEMA_KEY = "schema_version"

_T = TypeVar("_T")


# --------------------------------------------------------------------- batches
@dataclass(slots=True)
class WriteBatch:
    """Changes to both tables, applied atomically by :meth:`StateStore.apply`.

    Deletes are applied before puts, so a key that is in both ends up put.
    """

    node_puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    node_deletes: list[bytes] = field(default_factory=list)
    object_puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    object_deletes: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.node_puts)
            + len(self.node_deletes)
            + len(self.object_puts)
            + len(self.object_deletes)
        )

    @property
    def empty(self) -> bool:
        """True if the batch changes nothing."""
        return not (self.node_puts or self.node_deletes or self.object_puts or self.object_deletes)


class StateStore(Protocol):
    """Where the directory's tables are kept.

    ``load`` is called first, once, when the directory starts; ``apply`` calls
    come one at a time (from :class:`WriteBehind`).
    """

    #: Where the state lives, for logs and status (never holds a password).
    describe: str

    async def load(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Every stored record: ``(nodes, objects)``, id -> blob."""
        ...

    async def apply(self, batch: WriteBatch) -> None:
        """Apply ``batch`` atomically: all of it or none of it."""
        ...

    async def clear(self) -> None:
        """Delete every record of both tables."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the store cannot be used afterwards."""
        ...


def _check_open(closed: bool, describe: str) -> None:
    if closed:
        raise ObjectStoreError(f"directory state {describe} is closed")


# ---------------------------------------------------------------------- memory
class MemoryStore:
    """Keeps nothing durable: ``load`` returns what this instance was given."""

    def __init__(self) -> None:
        self.describe = "memory"
        self.nodes: dict[bytes, bytes] = {}
        self.objects: dict[bytes, bytes] = {}
        self._closed = False

    async def load(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Copies of the records applied so far."""
        _check_open(self._closed, self.describe)
        return dict(self.nodes), dict(self.objects)

    async def apply(self, batch: WriteBatch) -> None:
        """Apply ``batch`` (no await inside, so no one sees half of it)."""
        _check_open(self._closed, self.describe)
        for key in batch.node_deletes:
            self.nodes.pop(key, None)
        self.nodes.update(batch.node_puts)
        for key in batch.object_deletes:
            self.objects.pop(key, None)
        self.objects.update(batch.object_puts)

    async def clear(self) -> None:
        """Forget every record."""
        _check_open(self._closed, self.describe)
        self.nodes.clear()
        self.objects.clear()

    async def close(self) -> None:
        """Mark the store closed (the records stay readable as attributes)."""
        self._closed = True


# ---------------------------------------------------------------------- sqlite
_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS nodes(id BLOB PRIMARY KEY, rec BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS objects(id BLOB PRIMARY KEY, rec BLOB NOT NULL) WITHOUT ROWID",
)


class SqliteStore:
    """The tables in one SQLite file, driven by one dedicated thread.

    Only the worker thread touches the connection and the disk (opening and
    creating the file too), so nothing here blocks the event loop.  The file is
    opened on first use: a file that is not ours (not SQLite, another
    application's database, a newer schema) raises
    :class:`~objstore.errors.ConfigError` naming it.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.describe = f"sqlite:{self.path}"
        # One thread owns `_conn`: it is created, used and closed only there.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="objstore-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        _check_open(self._closed, self.describe)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def load(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Every record of both tables (read in the worker thread)."""
        return await self._run(self._load_sync)

    async def apply(self, batch: WriteBatch) -> None:
        """Apply ``batch`` in one transaction (``executemany`` per table and kind)."""
        if batch.empty:
            _check_open(self._closed, self.describe)
            return
        await self._run(self._apply_sync, batch)

    async def clear(self) -> None:
        """Delete every record of both tables, in one transaction."""
        await self._run(self._apply_sync, None)

    async def close(self) -> None:
        """Close the connection (checkpointing the WAL) and stop the thread."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close_sync)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    # -- in the worker thread only -------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open_sync()
        return self._conn

    def _open_sync(self) -> sqlite3.Connection:
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"directory state {self.path}: cannot create its directory: {exc}"
            ) from exc
        conn: sqlite3.Connection | None = None
        try:
            # Autocommit mode: transactions are begun and ended explicitly.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_schema(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise ConfigError(
                f"directory state {self.path} is not a usable SQLite database: {exc}"
            ) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return conn

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables in a new file; refuse a file that is not ours."""
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "meta" not in tables:
            if tables:
                raise ConfigError(
                    f"directory state {self.path} is a SQLite database of something else "
                    f"(tables: {', '.join(sorted(tables))}); give the directory its own state dir"
                )
            conn.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT)")
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?)", (_SCHEMA_KEY, str(SCHEMA_VERSION))
            )
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_SCHEMA_KEY,)).fetchone()
        version = None if row is None else row[0]
        if version != str(SCHEMA_VERSION):
            raise ConfigError(
                f"directory state {self.path} has schema version {version!r}, but this "
                f"objstore reads only version {SCHEMA_VERSION}: it was written by a newer "
                "objstore (or is not ours); upgrade, or use another state dir"
            )
        for statement in _SQLITE_SCHEMA:
            conn.execute(statement)

    def _load_sync(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        conn = self._connection()
        try:
            nodes = dict(conn.execute("SELECT id, rec FROM nodes"))
            objects = dict(conn.execute("SELECT id, rec FROM objects"))
        except sqlite3.Error as exc:
            raise self._error("read", exc) from exc
        return nodes, objects

    def _apply_sync(self, batch: WriteBatch | None) -> None:
        """Apply ``batch`` in one transaction; ``None`` clears both tables."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if batch is None:
                    conn.execute("DELETE FROM nodes")
                    conn.execute("DELETE FROM objects")
                else:
                    for table, deletes, puts in (
                        ("nodes", batch.node_deletes, batch.node_puts),
                        ("objects", batch.object_deletes, batch.object_puts),
                    ):
                        if deletes:
                            conn.executemany(
                                f"DELETE FROM {table} WHERE id = ?", [(k,) for k in deletes]
                            )
                        if puts:
                            conn.executemany(
                                f"INSERT OR REPLACE INTO {table}(id, rec) VALUES (?, ?)", puts
                            )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error("write", exc) from exc

    def _close_sync(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _error(self, what: str, exc: sqlite3.Error) -> ObjectStoreError:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return OutOfDiskError(f"directory state {self.path}: disk full on {what}: {exc}")
        return ObjectStoreError(f"directory state {self.path}: {what} failed: {exc}")


# ----------------------------------------------------------------------- redis
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_ALLOWED_FORMS = "'sqlite' or 'redis://HOST[:PORT][/DB]'"


@dataclass(frozen=True, slots=True)
class _RedisTarget:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None

    @property
    def url(self) -> str:
        """The URL without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def _parse_redis_url(url: str) -> _RedisTarget:
    """Validate ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (port 6379, db 0 by default)."""

    def bad(why: str) -> ConfigError:
        shown = re.sub(r"//[^@/]*@", "//***@", url)
        return ConfigError(
            f"directory.store: {why} in {shown!r}; expected redis://HOST[:PORT][/DB], "
            "e.g. redis://127.0.0.1:6379/0"
        )

    if not url.startswith("redis://"):
        raise bad("not a redis:// URL")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. a bracketed host that is not IPv6
        raise bad(str(exc)) from None
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise bad("query strings and fragments are not supported")
    host = parts.hostname
    if not host:
        raise bad("no host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"bad IPv6 address {host!r}") from None
    elif not _HOST_RE.fullmatch(host):
        raise bad(f"bad host {host!r}")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port must be a number from 1 to 65535") from None
    if port is None:
        if parts.netloc.endswith(":"):
            raise bad("empty port")
        port = 6379
    if not 1 <= port <= 65535:
        raise bad("the port must be a number from 1 to 65535")
    path = parts.path
    if path in ("", "/"):
        db = 0
    elif re.fullmatch(r"/[0-9]{1,9}", path):
        db = int(path[1:])
    else:
        raise bad(f"the database must be a number (like /0), not {path!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return _RedisTarget(host, port, db, username, password)


class RedisStore:
    """The tables as two Redis hashes, ``{prefix}:nodes`` and ``{prefix}:objects``.

    ``{prefix}:meta`` (a hash) holds the schema version.  Writes are MULTI/EXEC
    transactions, so a reader never sees half a batch; note that Redis does not
    roll a transaction back when one of its commands fails at run time (only a
    command refused while queueing aborts all of it), which cannot happen with
    the HSET/HDEL commands used here on keys of the right type.

    Nothing connects before the first ``load``/``apply``/``clear``.  A server
    that cannot be reached raises :class:`~objstore.errors.NodeUnavailableError`
    naming the URL; every connect and read is bounded by ``timeout`` seconds.
    """

    #: Fields per HSET/HDEL command (a transaction holds as many commands as needed).
    CHUNK = 10_000
    #: COUNT hint of each HSCAN while loading.
    SCAN_COUNT = 10_000

    def __init__(self, url: str, prefix: str = "objstore", timeout: float = 5.0) -> None:
        if not prefix:
            raise ConfigError("directory.store: the redis key prefix must not be empty")
        self._target = _parse_redis_url(url)
        self.describe = self._target.url
        self.prefix = prefix
        self.timeout = timeout
        self.nodes_key = f"{prefix}:nodes"
        self.objects_key = f"{prefix}:objects"
        self.meta_key = f"{prefix}:meta"
        self._client: Redis | None = None
        self._checked = False
        self._closed = False

    def _redis(self) -> Redis:
        _check_open(self._closed, self.describe)
        if self._client is None:
            # Imported here: redis takes ~0.1 s to import, and only this store needs it.
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff

            t = self._target
            self._client = Redis(
                host=t.host,
                port=t.port,
                db=t.db,
                username=t.username,
                password=t.password,
                socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout,
                # Two quick retries of a lost connection, not redis-py's default ten.
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                client_name="objstore-directory",
            )
        return self._client

    async def _call(self, what: str, op: Callable[[Redis], Any]) -> Any:
        """Run ``op`` against the server, translating redis errors."""
        from redis import exceptions as rx

        client = self._redis()
        try:
            if not self._checked:
                await self._check_schema(client)
            return await op(client)
        except (rx.AuthenticationError, rx.AuthorizationError) as exc:
            raise ConfigError(
                f"directory.store: {self.describe} refused the credentials: {exc}"
            ) from exc
        except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
            raise NodeUnavailableError(
                f"directory state {self.describe}: cannot reach redis ({what}): {exc}"
            ) from exc
        except rx.ResponseError as exc:
            if "DB index" in str(exc):
                raise ConfigError(f"directory.store: {self.describe}: {exc}") from exc
            raise ObjectStoreError(
                f"directory state {self.describe}: {what} failed: {exc}"
            ) from exc
        except rx.RedisError as exc:
            raise ObjectStoreError(
                f"directory state {self.describe}: {what} failed: {exc}"
            ) from exc

    async def _check_schema(self, client: Redis) -> None:
        await client.hsetnx(self.meta_key, _SCHEMA_KEY, str(SCHEMA_VERSION))
        raw = await client.hget(self.meta_key, _SCHEMA_KEY)
        version = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if version != str(SCHEMA_VERSION):
            raise ConfigError(
                f"directory state {self.describe} (key {self.meta_key!r}) has schema version "
                f"{version!r}, but this objstore reads only version {SCHEMA_VERSION}: it was "
                "written by a newer objstore (or is not ours); upgrade, or use another prefix/db"
            )
        self._checked = True

    async def load(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Every record of both hashes, read with HSCAN in large counts."""

        async def scan(client: Redis) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
            tables: list[dict[bytes, bytes]] = []
            for key in (self.nodes_key, self.objects_key):
                table: dict[bytes, bytes] = {}
                cursor = 0
                while True:
                    cursor, chunk = await client.hscan(key, cursor, count=self.SCAN_COUNT)
                    # HSCAN may return a field twice (during a rehash): the dict dedups.
                    # Replies are bytes: the client does not decode responses.
                    table.update(cast("dict[bytes, bytes]", chunk))
                    if cursor == 0:
                        break
                tables.append(table)
            return tables[0], tables[1]

        result: tuple[dict[bytes, bytes], dict[bytes, bytes]] = await self._call("load", scan)
        return result

    async def apply(self, batch: WriteBatch) -> None:
        """Apply ``batch`` in one MULTI/EXEC, ``CHUNK`` fields per command."""
        if batch.empty:
            _check_open(self._closed, self.describe)
            return

        async def write(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                for key, deletes, puts in (
                    (self.nodes_key, batch.node_deletes, batch.node_puts),
                    (self.objects_key, batch.object_deletes, batch.object_puts),
                ):
                    for i in range(0, len(deletes), self.CHUNK):
                        pipe.hdel(key, *deletes[i : i + self.CHUNK])
                    for i in range(0, len(puts), self.CHUNK):
                        pipe.hset(key, mapping=dict(puts[i : i + self.CHUNK]))
                await pipe.execute()

        await self._call("write", write)

    async def clear(self) -> None:
        """Delete both hashes (the schema version stays)."""

        async def delete(client: Redis) -> None:
            await client.delete(self.nodes_key, self.objects_key)

        await self._call("clear", delete)

    async def close(self) -> None:
        """Close the connection pool."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


# ------------------------------------------------------------------- factories
def open_store(spec: str, state_dir: str) -> StateStore:
    """The store named by ``directory.store`` (``spec``); connects to nothing.

    * ``sqlite`` (the default): ``{state_dir}/directory.sqlite3``, or a
      :class:`MemoryStore` when there is no state dir.
    * ``redis://HOST[:PORT][/DB]`` (port 6379 and db 0 by default): a
      :class:`RedisStore`.

    Anything else raises :class:`~objstore.errors.ConfigError` naming
    ``directory.store``.
    """
    if spec == "sqlite":
        if state_dir:
            return SqliteStore(os.path.join(state_dir, "directory.sqlite3"))
        return MemoryStore()
    if spec.startswith("redis://"):
        return RedisStore(spec)
    raise ConfigError(f"directory.store: expected {_ALLOWED_FORMS}, got {spec!r}")


# ---------------------------------------------------------------- write-behind
#: Returns the current record of a key, or None if the key must be deleted.
Encoder = Callable[[bytes], bytes | None]


class WriteBehind:
    """Writes dirty directory records to a :class:`StateStore` off the hot path.

    ``mark_node``/``mark_object`` only add a key to a set.  The task started by
    :meth:`start` wakes when something is dirty, waits ``interval`` seconds to
    gather more, swaps the dirty sets out, encodes each key's *current* record
    (``slice_size`` keys per loop turn) and applies the batch.  A key marked
    many times between two writes is written once; a key marked while its
    batch is in flight is written again by the next one.

    Only one apply is in flight at a time.  When it fails its keys go back into
    the dirty sets and the write is retried after 0.1 s, doubling up to 5 s; one
    warning is logged per failure streak and one info line when writes succeed
    again.  Counters (``pending``, ``written``, ``failures``, ``last_error``,
    ``last_flush_s``) feed the directory's status.
    """

    def __init__(
        self,
        store: StateStore,
        encode_node: Encoder,
        encode_object: Encoder,
        interval: float = 0.05,
        slice_size: int = 5000,
        *,
        retry_min_s: float = 0.1,
        retry_max_s: float = 5.0,
    ) -> None:
        if slice_size < 1:
            raise ValueError("slice_size must be at least 1")
        self.store = store
        self.encode_node = encode_node
        self.encode_object = encode_object
        self.interval = interval
        self.slice_size = slice_size
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        # Keys whose record changed since it was last handed to the store.  A key
        # may be both here and in the batch in flight (re-marked meanwhile).
        self._dirty_nodes: set[bytes] = set()
        self._dirty_objects: set[bytes] = set()
        # Keys of the batch being encoded or applied (empty between writes).
        self._inflight_nodes: set[bytes] = set()
        self._inflight_objects: set[bytes] = set()
        self._inflight = False
        # Writes are numbered when they take the dirty sets; `_last_ok` is the
        # number of the last one that succeeded.  Every write takes every key
        # dirty at its start, and a failed one puts its keys back before the next
        # starts, so the first success numbered > n covers every key that was
        # dirty or in flight when write n was the latest to start.
        self._started = 0
        self._last_ok = 0
        self._dirt = asyncio.Event()  # set by mark_*: something is dirty
        self._kick = asyncio.Event()  # set by flush: write now, skip the wait
        self._progress = asyncio.Event()  # set (and replaced) after every write
        # The writer task (one at most).
        self._tasks = TaskSet("directory-write-behind")
        self._closed = False
        # Retry delays of a failure streak (no jitter: one writer per directory);
        # ``_backoff.failures`` counts failed writes since the last success.
        self._backoff = Backoff(retry_min_s, retry_max_s, jitter=0.0)
        self._retry_in = 0.0
        #: Entries (puts and deletes) applied so far.
        self.written = 0
        #: Failed writes so far.
        self.failures = 0
        #: The error of the last write if it failed, else None.
        self.last_error: str | None = None
        #: Seconds the last successful apply took.
        self.last_flush_s = 0.0

    # -- hot path ------------------------------------------------------------
    def mark_node(self, key: bytes) -> None:
        """The node record ``key`` changed (or is gone): write it soon."""
        self._dirty_nodes.add(key)
        self._dirt.set()

    def mark_object(self, key: bytes) -> None:
        """The object record ``key`` changed (or is gone): write it soon."""
        self._dirty_objects.add(key)
        self._dirt.set()

    @property
    def pending(self) -> int:
        """Keys not durable yet: dirty, or in the batch in flight."""
        return (
            len(self._dirty_nodes)
            + len(self._dirty_objects)
            + len(self._inflight_nodes)
            + len(self._inflight_objects)
        )

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Start the writer task (on the running loop); a no-op if started."""
        if self._closed:
            raise ObjectStoreError("the directory state writer is closed")
        if not len(self._tasks):
            # `_run` records every write failure; the set logs it if it dies anyway (a bug).
            self._tasks.spawn(self._run(), name="objstore-directory-write-behind")

    async def flush(self, timeout: float) -> bool:
        """Write everything dirty now and wait for it.

        Returns True once every key marked before the call is durable, False if
        ``timeout`` seconds passed first (the keys stay dirty and are retried).
        """
        dirty = bool(self._dirty_nodes or self._dirty_objects)
        if not dirty and not self._inflight:
            return True
        if self._closed:
            return False
        self.start()
        target = self._started + 1 if dirty else self._started
        self._kick.set()
        try:
            async with asyncio.timeout(timeout):
                while self._last_ok < target:
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> None:
        """Flush, then stop the writer task; returns within ``timeout`` seconds.

        Keys still unwritten then are logged (as a count) and left behind.
        """
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await self.flush(timeout)
        finally:
            self._closed = True
            tasks = list(self._tasks)
            self._tasks.cancel()
            if tasks:
                # A cancelled apply returns at once; bound it anyway (a little
                # grace so the task can finish instead of being left pending).
                await asyncio.wait(tasks, timeout=max(deadline - loop.time(), 0.1))
            if self.pending:
                log.warning(
                    "directory state not fully written at close",
                    store=self.store.describe,
                    unwritten=self.pending,
                    last_error=self.last_error,
                )

    # -- the writer task -------------------------------------------------------
    async def _run(self) -> None:
        while True:
            if not (self._dirty_nodes or self._dirty_objects):
                self._kick.clear()
                self._dirt.clear()
                await self._dirt.wait()
            delay = self._retry_in if self._backoff.failures else self.interval
            if delay > 0 and not self._kick.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._kick.wait()
            self._kick.clear()
            await self._write()

    async def _write(self) -> None:
        """One write of every dirty key; failures are recorded, not raised."""
        nodes, self._dirty_nodes = self._dirty_nodes, set()
        objects, self._dirty_objects = self._dirty_objects, set()
        self._inflight_nodes, self._inflight_objects = nodes, objects
        self._inflight = True
        self._started += 1
        number = self._started
        batch = WriteBatch()
        try:
            await self._encode(nodes, self.encode_node, batch.node_puts, batch.node_deletes)
            await self._encode(objects, self.encode_object, batch.object_puts, batch.object_deletes)
            t0 = time.perf_counter()
            await self.store.apply(batch)
            elapsed = time.perf_counter() - t0
        except BaseException as exc:
            # Not written: back into the dirty sets (where re-marked ones are already).
            self._dirty_nodes |= nodes
            self._dirty_objects |= objects
            if not isinstance(exc, Exception):
                raise
            self._failed(exc, len(nodes) + len(objects))
        else:
            self._succeeded(number, len(batch), elapsed)
        finally:
            self._inflight_nodes = self._inflight_objects = set()
            self._inflight = False
            self._progress.set()
            self._progress = asyncio.Event()

    async def _encode(
        self,
        keys: set[bytes],
        encode: Encoder,
        puts: list[tuple[bytes, bytes]],
        deletes: list[bytes],
    ) -> None:
        """Encode ``keys`` into ``puts``/``deletes``, ``slice_size`` per loop turn."""
        # `keys` was swapped out of the dirty sets: nothing changes it meanwhile.
        it = iter(keys)
        while True:
            chunk = list(itertools.islice(it, self.slice_size))
            if not chunk:
                return
            for key in chunk:
                rec = encode(key)
                if rec is None:
                    deletes.append(key)
                else:
                    puts.append((key, rec))
            await asyncio.sleep(0)

    def _failed(self, exc: Exception, keys: int) -> None:
        # One warning per streak, none for its repeats (WriteBehind's tests count them).
        self.failures += 1
        self._retry_in = self._backoff.failed()
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._backoff.failures == 1:
            log.warning(
                "directory state write failed; retrying with backoff",
                store=self.store.describe,
                error=self.last_error,
                keys=keys,
                retry_in_s=self._retry_in,
            )

    def _succeeded(self, number: int, entries: int, elapsed: float) -> None:
        if self._backoff.failures:
            log.info(
                "directory state writes resumed",
                store=self.store.describe,
                failed_attempts=self._backoff.failures,
            )
        self._backoff.reset()
        self.last_error = None
        self._last_ok = number
        self.written += entries
        self.last_flush_s = elapsed
