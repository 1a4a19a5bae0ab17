"""The directory's state in one SQLite file, driven by one dedicated thread."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from objstore.directory.persist.base import _SCHEMA_KEY, SCHEMA_VERSION, WriteBatch, _check_open
from objstore.errors import (
    ConfigError,
    ObjectStoreError,
    OutOfDiskError,
)

__all__ = ["SqliteStore"]

_T = TypeVar("_T")

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
