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

import os

from objstore.directory.persist.base import SCHEMA_VERSION, StateStore, WriteBatch
from objstore.directory.persist.memory import MemoryStore
from objstore.directory.persist.redis import _ALLOWED_FORMS, RedisStore
from objstore.directory.persist.sqlite import SqliteStore
from objstore.directory.persist.writebehind import Encoder, WriteBehind
from objstore.errors import ConfigError

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
