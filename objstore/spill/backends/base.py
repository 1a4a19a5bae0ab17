"""The :class:`SpillBackend` protocol, and the buffer and thread helpers backends share.

A backend stores whole files: ``write`` makes one new file from a list of
buffers and returns its base URL, ``read_into`` fills memory from a byte range
of one, ``delete`` drops one.  What a file holds (records, see
:mod:`objstore.spill.records`) is the caller's business; a record is addressed
by a :class:`~objstore.spill.urls.SpillURL`.

Each node spills under its own namespace, and :meth:`SpillBackend.start`
deletes whatever an earlier run of the node left there: spilled objects never
outlive the node process that spilled them.

Nothing here blocks the event loop.  :func:`run_blocking` runs a function in
a thread and, when the awaiting task is cancelled, returns (raising
``CancelledError``) only once that thread no longer touches the caller's
buffers.  No view of the caller's buffers outlives a call, even one that
failed (:func:`release_views`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Buffer
else:
    # Anything with the buffer protocol (bytes, memoryview, mmap, numpy arrays);
    # ``collections.abc.Buffer`` is Python 3.12+.
    Buffer = bytes | bytearray | memoryview

__all__ = [
    "Buffer",
    "SpillBackend",
    "Aborted",
    "byte_view",
    "source_views",
    "dest_views",
    "release_views",
    "run_blocking",
    "run_in_thread",
]

T = TypeVar("T")


class SpillBackend(Protocol):
    """Stores spill files; one instance per node, for the node's namespace.

    Errors: :class:`~objstore.spill.errors.SpillCorruptError` when the bytes
    are gone or wrong (the object is lost), :class:`~objstore.spill.errors.SpillIOError`
    when trying again later may work, :class:`~objstore.errors.OutOfDiskError`
    when the disk (or bucket quota) is full.  A cancelled ``write`` leaves no
    file behind (best effort on S3: the next start sweeps what is left).
    """

    scheme: str
    """``file`` or ``s3``: the scheme of the URLs it makes."""

    async def start(self) -> int:
        """Prepare the storage, delete what earlier runs left; return how many were deleted."""
        ...

    async def write(self, parts: Sequence[Buffer], total: int) -> str:
        """Write the parts back to back as one new file (``total`` bytes); return its base URL.

        The parts must not change until this returns.
        """
        ...

    async def read_into(self, base: str, offset: int, dests: Sequence[memoryview]) -> None:
        """Fill ``dests`` in order with the file's bytes from ``offset``.

        A missing file, or one that ends before the dests are full, raises
        :class:`~objstore.spill.errors.SpillCorruptError`.
        """
        ...

    async def delete(self, base: str) -> None:
        """Delete a file; deleting one that is not there is fine."""
        ...

    async def close(self) -> None:
        """Release clients and wait for background cleanups."""
        ...


# --- Buffers ---------------------------------------------------------------


def byte_view(buf: Buffer) -> memoryview:
    """A one-dimensional byte view of ``buf`` (``TypeError`` if it is not contiguous)."""
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def source_views(parts: Sequence[Buffer], total: int) -> list[memoryview]:
    """Byte views of the non-empty parts; ``ValueError`` unless they hold ``total`` bytes."""
    views = [byte_view(p) for p in parts]
    got = sum(len(v) for v in views)
    if got != total:
        release_views(views)
        raise ValueError(f"the parts hold {got} bytes, but total is {total}")
    return [v for v in views if len(v)]


def dest_views(dests: Sequence[memoryview]) -> list[memoryview]:
    """Byte views of the non-empty destinations; ``ValueError`` if one is read-only."""
    views = [byte_view(d) for d in dests]
    for v in views:
        if v.readonly:
            release_views(views)
            raise ValueError("read_into needs writable destinations")
    return [v for v in views if len(v)]


def release_views(views: Sequence[memoryview]) -> None:
    """Release views made here, so the caller's objects have no export left from us.

    (An exception's traceback keeps frames, and their views, alive; a caller
    could not resize a bytearray or close an mmap until it is dropped.)
    """
    for v in views:
        with contextlib.suppress(BufferError):  # still exported by someone: left to GC
            v.release()


# --- Threads ---------------------------------------------------------------


class Aborted(Exception):
    """A worker thread saw its abort flag (the awaiting task was cancelled)."""


_LOWERED = threading.local()


def _background(fn: Callable[[threading.Event], T], abort: threading.Event) -> T:
    """Run ``fn`` at a lower CPU priority than the event loop's thread.

    Spill reads and writes copy gigabytes; on a machine with few cores they
    would otherwise take the CPU from the loop that answers gets (measured:
    small gets' p99 11-20 ms while spilling on 2 cores).  Linux applies nice
    values per thread; the executor's threads only do background work here.
    """
    if not getattr(_LOWERED, "done", False):
        _LOWERED.done = True
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (OSError, AttributeError):
            pass
    return fn(abort)


async def run_blocking(
    fn: Callable[[threading.Event], T], on_orphan: Callable[[T], None] | None = None
) -> T:
    """Run ``fn(abort)`` in the default executor.

    If the awaiting task is cancelled, set ``abort`` (``fn`` checks it between
    system calls, raising :class:`Aborted`) and wait for ``fn`` to stop before
    re-raising: the thread may be reading or filling the caller's buffers,
    which the caller is free to reuse once this returns.  When ``fn`` had
    already finished, its result goes to ``on_orphan`` (run in a thread) to be
    undone.
    """
    abort = threading.Event()
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, _background, fn, abort)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        abort.set()
        while not fut.done():
            try:
                await asyncio.wait([fut])
            except asyncio.CancelledError:
                pass  # cancelled again: still wait for the thread, then raise once
        if on_orphan is not None and not fut.cancelled() and fut.exception() is None:
            loop.run_in_executor(None, on_orphan, fut.result())
        elif not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what the caller hears
        raise


def _ignore_abort(fn: Callable[..., T], args: tuple[Any, ...], abort: threading.Event) -> T:
    return fn(*args)


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread (CPU work over memory the caller owns: a CRC, zstd).

    Unlike ``asyncio.to_thread``, a cancelled caller returns only once the
    thread has finished with the caller's buffers.
    """
    return await run_blocking(partial(_ignore_abort, fn, args))
