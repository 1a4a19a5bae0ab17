"""Spill files in local directories: ``<dir>/<namespace>/<run_id>-<seq>.spill``.

File I/O runs in threads (``pwritev`` / ``preadv`` straight from and into the
caller's buffers, at most ``IOV_MAX`` buffers and 64 MiB per call so that a
cancelled operation stops soon).  A cancelled write returns once its thread
has stopped, and the file it was making is removed.  ``ENOSPC`` and
``EDQUOT`` become :class:`~objstore.errors.OutOfDiskError`, other ``OSError``
:class:`~objstore.spill.errors.SpillIOError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import threading
from collections.abc import Sequence
from functools import partial

from objstore.errors import ObjectStoreError, OutOfDiskError
from objstore.spill.backends.base import (
    Aborted,
    Buffer,
    dest_views,
    release_views,
    run_blocking,
    source_views,
)
from objstore.spill.errors import SpillCorruptError, SpillIOError
from objstore.spill.urls import (
    SPILL_SUFFIX,
    check_namespace,
    file_base,
    spill_file_name,
    split_base,
)

__all__ = ["LocalBackend"]

MiB = 1 << 20

# Linux takes at most IOV_MAX (1024) buffers per pwritev/preadv.
try:
    _IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
    _IOV_MAX = 1024
if _IOV_MAX <= 0:  # pragma: no cover - sysconf reports no limit
    _IOV_MAX = 1024
# Bytes per pwritev/preadv call, so that a cancelled operation stops soon.
_MAX_CALL_BYTES = 64 * MiB
_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


class _Cursor:
    """Walks a list of byte views across calls that may do less than asked."""

    __slots__ = ("_views", "_made", "_i")

    def __init__(self, views: list[memoryview]) -> None:
        self._views = list(views)
        self._made: list[memoryview] = []  # slices made here, released with the rest
        self._i = 0

    def done(self) -> bool:
        return self._i >= len(self._views)

    def batch(self) -> list[memoryview]:
        """The next views for one call: at most IOV_MAX of them, ``_MAX_CALL_BYTES`` in all."""
        out: list[memoryview] = []
        room = _MAX_CALL_BYTES
        j = self._i
        while j < len(self._views) and len(out) < _IOV_MAX and room > 0:
            v = self._views[j]
            if len(v) > room:
                v = v[:room]
                self._made.append(v)
            out.append(v)
            room -= len(v)
            j += 1
        return out

    def advance(self, n: int) -> None:
        """``n`` bytes were done (at most what the last batch held)."""
        while n:
            v = self._views[self._i]
            if n >= len(v):
                n -= len(v)
                self._i += 1
            else:
                self._views[self._i] = v[n:]
                self._made.append(self._views[self._i])
                n = 0

    def release(self) -> None:
        """Release every view it holds: the caller's buffers are no longer exported."""
        release_views(self._views)
        release_views(self._made)


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_file(path: str, views: list[memoryview], abort: threading.Event) -> str:
    """Create ``path`` and write the views to it; on any error no file is left."""
    cursor = _Cursor(views)
    try:
        return _write_fd(path, cursor, abort)
    finally:
        cursor.release()


def _write_fd(path: str, cursor: _Cursor, abort: threading.Event) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        pos = 0
        while not cursor.done():
            if abort.is_set():
                raise Aborted
            n = os.pwritev(fd, cursor.batch(), pos)
            if n <= 0:
                raise OSError(errno.EIO, "pwritev wrote nothing", path)
            cursor.advance(n)
            pos += n
        # No fsync: spilled objects do not outlive the node process that wrote
        # them (start() deletes them on the next run), so the page cache is as
        # durable as they need; a crash loses the objects with the process.
    except BaseException:
        os.close(fd)
        _unlink_quiet(path)
        raise
    try:
        os.close(fd)
    except BaseException:
        _unlink_quiet(path)
        raise
    return path


def _read_file(
    path: str, base: str, offset: int, views: list[memoryview], abort: threading.Event
) -> None:
    """Fill ``views`` from ``path`` at ``offset``; EOF first raises SpillCorruptError."""
    want = sum(len(v) for v in views)
    cursor = _Cursor(views)
    try:
        _read_fd(path, base, offset, want, cursor, abort)
    finally:
        cursor.release()


def _read_fd(
    path: str, base: str, offset: int, want: int, cursor: _Cursor, abort: threading.Event
) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise SpillCorruptError(f"spill file {base} is missing") from exc
    try:
        pos = offset
        while not cursor.done():
            if abort.is_set():
                raise Aborted
            n = os.preadv(fd, cursor.batch(), pos)
            if n == 0:
                size = os.fstat(fd).st_size
                raise SpillCorruptError(
                    f"spill file {base} is {size} bytes, but reading {want} bytes at "
                    f"offset {offset} needs {offset + want}"
                )
            cursor.advance(n)
            pos += n
    finally:
        os.close(fd)


def _clean_dir(directory: str) -> int:
    """Create ``directory``; delete the spill files in it. Returns how many."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(SPILL_SUFFIX) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed += 1
    return removed


class LocalBackend:
    """Spill files in local directories: ``<dir>/<namespace>/<run_id>-<seq>.spill``.

    Files go round-robin over the directories, one file at a time.
    """

    scheme: str = "file"

    def __init__(self, dirs: Sequence[str], namespace: str) -> None:
        check_namespace(namespace)
        if isinstance(dirs, str) or not dirs:
            raise ValueError(f"LocalBackend needs a list of one or more directories, got {dirs!r}")
        self.namespace = namespace
        self.run_id = secrets.token_hex(8)
        """Random per instance: this run's file names never meet an earlier run's."""
        # Absolute and normalised: _path_of compares against these.
        self._dirs = [os.path.join(os.path.abspath(d), namespace) for d in dirs]
        self._seq = 0
        self._turn = 0

    @property
    def dirs(self) -> list[str]:
        """The directories files go to (``<dir>/<namespace>``)."""
        return list(self._dirs)

    def __repr__(self) -> str:
        return f"LocalBackend({self._dirs!r})"

    def _new_path(self) -> tuple[str, str]:
        directory = self._dirs[self._turn % len(self._dirs)]
        self._turn += 1
        self._seq += 1
        return directory, os.path.join(directory, spill_file_name(self.run_id, self._seq))

    def _path_of(self, base: str) -> str:
        """The path of a file this backend wrote (``ValueError`` for any other URL)."""
        scheme, _, path = split_base(base)
        if scheme != "file":
            raise ValueError(f"{base!r} is not a file:// spill URL")
        path = os.path.normpath(path)
        if os.path.dirname(path) not in self._dirs or not path.endswith(SPILL_SUFFIX):
            raise ValueError(f"{base!r} is not a spill file of {self!r}")
        return path

    async def start(self) -> int:
        """Create the directories; delete the ``*.spill`` files an earlier run left.

        The node holds its socket exclusively, so no live process writes there.
        """
        removed = 0
        for directory in self._dirs:
            try:
                removed += await asyncio.to_thread(_clean_dir, directory)
            except OSError as exc:
                raise _os_error(exc, f"preparing spill directory {directory}") from exc
        return removed

    async def write(self, parts: Sequence[Buffer], total: int) -> str:
        """Write the parts as one new file with ``pwritev`` in a thread; return its URL."""
        views = source_views(parts, total)
        directory, path = self._new_path()
        try:
            await run_blocking(partial(_write_file, path, views), on_orphan=_unlink_quiet)
        except OSError as exc:
            raise _os_error(exc, f"writing a {total}-byte spill file in {directory}") from exc
        finally:
            release_views(views)
        return file_base(path)

    async def read_into(self, base: str, offset: int, dests: Sequence[memoryview]) -> None:
        """Fill ``dests`` from the file at ``offset`` with ``preadv`` in a thread."""
        path = self._path_of(base)
        if offset < 0:
            raise ValueError(f"offset is >= 0, got {offset}")
        views = dest_views(dests)
        if not views:
            return
        try:
            await run_blocking(partial(_read_file, path, base, offset, views))
        except OSError as exc:
            raise _os_error(exc, f"reading spill file {base}") from exc
        finally:
            release_views(views)

    async def delete(self, base: str) -> None:
        """Unlink the file (in a thread); a missing file is fine."""
        path = self._path_of(base)
        try:
            await asyncio.to_thread(_unlink_missing_ok, path)
        except OSError as exc:
            raise _os_error(exc, f"deleting spill file {base}") from exc

    async def close(self) -> None:
        """Nothing to release (files are closed after each call)."""


def _unlink_missing_ok(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _os_error(exc: OSError, doing: str) -> ObjectStoreError:
    if exc.errno in _FULL_ERRNOS:
        return OutOfDiskError(f"{doing}: {os.strerror(exc.errno or 0)}")
    return SpillIOError(f"{doing}: {exc}")
