"""Writing the directory's dirty records behind its hot path."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable

import structlog

from objstore.errors import (
    ObjectStoreError,
)
from objstore.streak import FailureStreak
from objstore.tasks import TaskSet

log = structlog.get_logger("objstore.directory.persist")

from objstore.directory.persist.base import StateStore, WriteBatch

__all__ = ["WriteBehind", "Encoder"]

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
        # The failure streak: one warning, its retry delays (no jitter: one writer
        # per directory) and the count of failed writes since the last success.
        self._streak = FailureStreak(
            log,
            "directory state write failed; retrying with backoff",
            "directory state writes resumed",
            first=retry_min_s,
            maximum=retry_max_s,
            jitter=0.0,
        )
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
            delay = self._retry_in if self._streak.failures else self.interval
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
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._retry_in = self._streak.failed(exc, store=self.store.describe, keys=keys)

    def _succeeded(self, number: int, entries: int, elapsed: float) -> None:
        self._streak.ok(store=self.store.describe)
        self.last_error = None
        self._last_ok = number
        self.written += entries
        self.last_flush_s = elapsed
