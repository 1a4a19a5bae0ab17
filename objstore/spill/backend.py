"""Where spill files go: local directories or an S3 bucket.

A :class:`SpillBackend` stores whole files: ``write`` makes one new file from
a list of buffers and returns its base URL, ``read_into`` fills memory from a
byte range of one, ``delete`` drops one.  What a file holds (records, see
:mod:`objstore.spill.fused`) is the caller's business; a record is addressed
by a :class:`SpillURL` (the file's base URL, an offset and a size).

Each node spills under its own *namespace* (a directory, or a key prefix), and
:meth:`SpillBackend.start` deletes whatever an earlier run of the node left
there: spilled objects never outlive the node process that spilled them.

Nothing here blocks the event loop: file I/O runs in threads (``pwritev`` /
``preadv`` straight from and into the caller's buffers); S3 requests are
asynchronous (aiobotocore), a big request body is a file over the caller's
buffers that aiohttp reads 64 KiB at a time in its executor (never one joined
copy), and a response body is copied into place as it arrives.  When an
operation is cancelled it returns (raising ``CancelledError``) only once no
thread touches the caller's buffers any more, and a file it was making is
removed (best effort on S3).  No view of the caller's buffers outlives a
call, even one that failed.

Errors: :class:`SpillCorruptError` when the bytes are gone or wrong (the
object is lost), :class:`SpillIOError` when trying again later may work, and
:class:`~objstore.errors.OutOfDiskError` when the disk (or bucket quota) is
full.  ``OSError`` and botocore errors are translated here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import io
import os
import re
import secrets
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote, unquote

import structlog

from objstore.errors import ObjectStoreError, OutOfDiskError

if TYPE_CHECKING:
    from typing_extensions import Buffer
else:
    # Anything with the buffer protocol (bytes, memoryview, mmap, numpy arrays);
    # ``collections.abc.Buffer`` is Python 3.12+.
    Buffer = bytes | bytearray | memoryview

__all__ = [
    "Buffer",
    "SpillCorruptError",
    "SpillIOError",
    "SpillURL",
    "SpillBackend",
    "LocalBackend",
    "S3Backend",
    "open_backend",
    "SPILL_SUFFIX",
]

log = structlog.get_logger("objstore.spill")

T = TypeVar("T")

MiB = 1 << 20
SPILL_SUFFIX = ".spill"
S3_MIN_PART_SIZE = 5 * MiB
"""S3's smallest multipart part (all but the last)."""
S3_MAX_PARTS = 10_000

# Linux takes at most IOV_MAX (1024) buffers per pwritev/preadv.
try:
    _IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux
    _IOV_MAX = 1024
if _IOV_MAX <= 0:  # pragma: no cover - sysconf reports no limit
    _IOV_MAX = 1024
# Bytes per pwritev/preadv call, so that a cancelled operation stops soon.
_MAX_CALL_BYTES = 64 * MiB
# Parts up to this size are joined on the event loop; bigger ones are streamed.
_JOIN_INLINE_BYTES = 1 * MiB
# Bytes copied from an S3 response into memory per step (on the event loop).
_S3_READ_CHUNK = 1 * MiB
# A best-effort cleanup (abort an upload, delete a key) gives up after this.
_CLEANUP_TIMEOUT_S = 10.0
_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIGITS_RE = re.compile(r"[0-9]{1,20}")


class SpillCorruptError(ObjectStoreError):
    """A spilled record is missing, short or wrong: the object is lost.

    The message names the URL (or the object) concerned.
    """


class SpillIOError(ObjectStoreError):
    """Spill storage failed in a way that may pass: retry later.

    (A timeout, a connection error, throttling, a 5xx, an I/O error.)
    """


# --- URLs -----------------------------------------------------------------


def _file_base(path: str) -> str:
    return "file://" + quote(path, safe="/", errors="surrogateescape")


def _s3_base(bucket: str, key: str) -> str:
    return f"s3://{bucket}/" + quote(key, safe="/")


def _split_base(base: str) -> tuple[str, str, str]:
    """``(scheme, bucket or "", path or key)`` of a base URL; ``ValueError`` if malformed."""
    if not isinstance(base, str):
        raise TypeError(f"a spill URL is a str, not {type(base).__name__}")
    if "?" in base or "#" in base:
        raise ValueError(f"a spill file's base URL has no query or fragment: {base!r}")
    if base.startswith("file://"):
        rest = base[len("file://") :]
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"a file spill URL is file:///absolute/path (no host), got {base!r}")
        return "file", "", unquote(rest, errors="surrogateescape")
    if base.startswith("s3://"):
        bucket, slash, key = base[len("s3://") :].partition("/")
        if not bucket or not slash or not key:
            raise ValueError(f"an S3 spill URL is s3://bucket/key, got {base!r}")
        return "s3", bucket, unquote(key)
    raise ValueError(
        f"a spill URL is file:///path?offset=N&size=M or s3://bucket/key?offset=N&size=M, "
        f"got {base!r}"
    )


@dataclass(frozen=True, slots=True)
class SpillURL:
    """Where one spilled record is: a file, and a byte range of it.

    ``str()`` gives ``file:///abs/path?offset=N&size=M`` or
    ``s3://bucket/key?offset=N&size=M``; :meth:`parse` reads that back.
    """

    base: str
    """The file's URL, as :meth:`SpillBackend.write` returned it (no query)."""
    offset: int
    """Where the record starts in the file."""
    size: int
    """The record's size in bytes."""

    def __post_init__(self) -> None:
        _split_base(self.base)
        for name in ("offset", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"a spill URL's {name} is an int >= 0, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> SpillURL:
        """Parse ``BASE?offset=N&size=M``; ``ValueError`` on anything else."""
        if not isinstance(text, str):
            raise TypeError(f"a spill URL is a str, not {type(text).__name__}")
        base, sep, query = text.partition("?")
        if not sep:
            raise ValueError(f"a spill URL ends with ?offset=N&size=M, got {text!r}")
        params: dict[str, int] = {}
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            if name not in ("offset", "size") or not eq or name in params:
                raise ValueError(
                    f"a spill URL's query is exactly offset=N&size=M, got {query!r} in {text!r}"
                )
            if not _DIGITS_RE.fullmatch(value):
                raise ValueError(f"a spill URL's {name} is a decimal number, got {value!r}")
            params[name] = int(value)
        if len(params) != 2:
            raise ValueError(f"a spill URL needs both offset and size, got {text!r}")
        return cls(base, params["offset"], params["size"])

    def __str__(self) -> str:
        return f"{self.base}?offset={self.offset}&size={self.size}"


# --- The protocol ------------------------------------------------------------


class SpillBackend(Protocol):
    """Stores spill files; one instance per node, for the node's namespace."""

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
        :class:`SpillCorruptError`.
        """
        ...

    async def delete(self, base: str) -> None:
        """Delete a file; deleting one that is not there is fine."""
        ...

    async def close(self) -> None:
        """Release clients and wait for background cleanups."""
        ...


# --- Helpers -------------------------------------------------------------


def _check_namespace(namespace: str) -> None:
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(
            f"a spill namespace is letters, digits, '.', '_' and '-' (not first), got {namespace!r}"
        )


def _byte_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")  # TypeError for a buffer that is not contiguous
    return view


def _source_views(parts: Sequence[Buffer], total: int) -> list[memoryview]:
    views = [_byte_view(p) for p in parts]
    got = sum(len(v) for v in views)
    if got != total:
        raise ValueError(f"the parts hold {got} bytes, but total is {total}")
    return [v for v in views if len(v)]


def _release(views: Sequence[memoryview]) -> None:
    """Release views made here, so the caller's objects have no export left from us.

    (An exception's traceback keeps frames, and their views, alive; a caller
    could not resize a bytearray or close an mmap until it is dropped.)
    """
    for v in views:
        with contextlib.suppress(BufferError):  # still exported by someone: left to GC
            v.release()


def _dest_views(dests: Sequence[memoryview]) -> list[memoryview]:
    views = [_byte_view(d) for d in dests]
    for v in views:
        if v.readonly:
            raise ValueError("read_into needs writable destinations")
    return [v for v in views if len(v)]


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
        _release(self._views)
        _release(self._made)


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


_LOWERED = threading.local()


class _Aborted(Exception):
    """A worker thread saw its abort flag (the awaiting task was cancelled)."""


async def _run_blocking(
    fn: Callable[[threading.Event], T], on_orphan: Callable[[T], None] | None = None
) -> T:
    """Run ``fn(abort)`` in the default executor.

    If the awaiting task is cancelled, set ``abort`` (``fn`` checks it between
    system calls) and wait for ``fn`` to stop before re-raising: the thread
    may be reading or filling the caller's buffers, which the caller is free
    to reuse once this returns.  When ``fn`` had already finished, its result
    goes to ``on_orphan`` (run in a thread) to be undone.
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
        raise


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# --- Local directories ---------------------------------------------------


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
                raise _Aborted
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
                raise _Aborted
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
        _check_namespace(namespace)
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
        return directory, os.path.join(directory, f"{self.run_id}-{self._seq:08d}{SPILL_SUFFIX}")

    def _path_of(self, base: str) -> str:
        """The path of a file this backend wrote (``ValueError`` for any other URL)."""
        scheme, _, path = _split_base(base)
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
        views = _source_views(parts, total)
        directory, path = self._new_path()
        try:
            await _run_blocking(partial(_write_file, path, views), on_orphan=_unlink_quiet)
        except OSError as exc:
            raise _os_error(exc, f"writing a {total}-byte spill file in {directory}") from exc
        finally:
            _release(views)
        return _file_base(path)

    async def read_into(self, base: str, offset: int, dests: Sequence[memoryview]) -> None:
        """Fill ``dests`` from the file at ``offset`` with ``preadv`` in a thread."""
        path = self._path_of(base)
        if offset < 0:
            raise ValueError(f"offset is >= 0, got {offset}")
        views = _dest_views(dests)
        if not views:
            return
        try:
            await _run_blocking(partial(_read_file, path, base, offset, views))
        except OSError as exc:
            raise _os_error(exc, f"reading spill file {base}") from exc
        finally:
            _release(views)

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


# --- S3 -------------------------------------------------------------------

# DeleteObjects takes 1000 keys at most.
_S3_DELETE_BATCH = 1000
# Error codes that mean the bucket (or the account's quota) is full.
_S3_FULL_CODES = frozenset(
    {"EntityTooLarge", "QuotaExceeded", "XMinioStorageFull", "InsufficientStorage"}
)
# Error codes (and statuses) that mean the bytes asked for are not there.
_S3_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "InvalidRange", "404", "416"})


@contextlib.contextmanager
def _s3_errors(doing: str, *, lost_if_missing: bool = False) -> Iterator[None]:
    """Translate botocore/aiohttp/OS errors raised in the block (which may await)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ObjectStoreError:
        raise
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = f"{code or 'error'} (HTTP {status})"
        if err.get("Message"):
            detail += f": {err['Message']}"
        if lost_if_missing and (code in _S3_MISSING_CODES or status in (404, 416)):
            raise SpillCorruptError(f"{doing}: {detail}") from exc
        if code in _S3_FULL_CODES or status == 507:
            raise OutOfDiskError(f"{doing}: {detail}") from exc
        raise SpillIOError(f"{doing}: {detail}") from exc
    except (BotoCoreError, OSError, TimeoutError) as exc:
        raise SpillIOError(f"{doing}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        import aiohttp

        if isinstance(exc, aiohttp.ClientError):
            raise SpillIOError(f"{doing}: {type(exc).__name__}: {exc}") from exc
        raise


class _ViewsReader(io.RawIOBase):
    """A seekable file over byte views, so a request body needs no joined copy.

    aiohttp reads it 64 KiB at a time in its executor; botocore seeks it back
    to the start when it retries.
    """

    def __init__(self, views: list[memoryview]) -> None:
        super().__init__()
        self._views = views
        self._starts: list[int] = []
        n = 0
        for v in views:
            self._starts.append(n)
            n += len(v)
        self._size = n
        self._pos = 0
        self._i = 0  # the view holding _pos (or len(views) at the end)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        self._i = 0
        while self._i < len(self._views) and pos >= self._starts[self._i] + len(
            self._views[self._i]
        ):
            self._i += 1
        return pos

    def _take(self, n: int) -> list[memoryview]:
        out: list[memoryview] = []
        while n > 0 and self._i < len(self._views):
            v = self._views[self._i]
            start = self._pos - self._starts[self._i]
            piece = v[start : start + n]
            out.append(piece)
            n -= len(piece)
            self._pos += len(piece)
            if start + len(piece) >= len(v):
                self._i += 1
        return out

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._size - self._pos)
        return b"".join(self._take(size))

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        dest = _byte_view(buffer)
        done = 0
        for piece in self._take(len(dest)):
            dest[done : done + len(piece)] = piece
            done += len(piece)
        return done


def _warm_loader(session: Any) -> None:
    """Load (and cache) the JSON models a client needs, in a thread.

    ``create_client`` would otherwise parse them on the event loop (~150 ms).
    Best effort: with another botocore layout the client just loads them itself.
    """
    try:
        loader = session.get_component("data_loader")
        for name in ("endpoints", "partitions", "sdk-default-configuration"):
            loader.load_data(name)
        loader.list_available_services("service-2")
        for kind in ("service-2", "endpoint-rule-set-1", "paginators-1"):
            loader.load_service_model("s3", kind)
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        log.debug("could not preload botocore's S3 models", error=repr(exc))


def _split_parts(views: list[memoryview], part_size: int) -> list[list[memoryview]]:
    """Cut the views into consecutive parts of ``part_size`` bytes (the last may be shorter)."""
    parts: list[list[memoryview]] = []
    current: list[memoryview] = []
    room = part_size
    for v in views:
        while len(v):
            piece = v[:room]
            current.append(piece)
            room -= len(piece)
            v = v[len(piece) :]
            if room == 0:
                parts.append(current)
                current, room = [], part_size
    if current:
        parts.append(current)
    return parts


def _request_body(views: list[memoryview]) -> bytes | _ViewsReader:
    """A request body for these views: small parts joined, big ones streamed uncopied."""
    size = sum(len(v) for v in views)
    if size <= _JOIN_INLINE_BYTES:
        return b"".join(views)
    return _ViewsReader(views)


async def _gather_or_cancel(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines concurrently; on the first error cancel the others and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class S3Backend:
    """Spill files as objects in an S3 bucket: ``<prefix>/<namespace>/<run_id>-<seq>.spill``.

    The endpoint, region and credentials come from the standard AWS
    environment (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``,
    ``AWS_ACCESS_KEY_ID``, profiles...), which botocore reads itself.  Files
    up to ``part_size`` are one ``PutObject``; bigger ones are multipart
    uploads, ``concurrency`` parts at a time.  Timeouts are in seconds, per
    HTTP request; ``max_attempts`` counts every try of a request (botocore's
    standard retry mode, with its backoff, between them).
    """

    scheme: str = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str,
        namespace: str,
        part_size: int = 16 * MiB,
        *,
        concurrency: int = 4,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        _check_namespace(namespace)
        if not bucket or "/" in bucket:
            raise ValueError(f"an S3 bucket name is non-empty without '/', got {bucket!r}")
        if part_size < S3_MIN_PART_SIZE:
            raise ValueError(
                f"part_size is at least {S3_MIN_PART_SIZE} bytes (S3's minimum), got {part_size}"
            )
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts are at least 1")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.namespace = namespace
        self.part_size = part_size
        self.concurrency = concurrency
        self.run_id = secrets.token_hex(8)
        """Random per instance: this run's keys never meet an earlier run's."""
        # Every key this backend writes, lists or deletes starts with this.
        self._key_prefix = f"{self.prefix}/{namespace}/" if self.prefix else f"{namespace}/"
        self._timeouts = (connect_timeout, read_timeout, max_attempts)
        self._seq = 0
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._background: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"S3Backend(s3://{self.bucket}/{self._key_prefix})"

    def _require(self) -> Any:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not started (or is closed)")
        return self._client

    def _new_key(self) -> str:
        self._seq += 1
        return f"{self._key_prefix}{self.run_id}-{self._seq:08d}{SPILL_SUFFIX}"

    def _key_of(self, base: str) -> str:
        """The key of an object this backend wrote (``ValueError`` for any other URL)."""
        scheme, bucket, key = _split_base(base)
        if scheme != "s3" or bucket != self.bucket or not key.startswith(self._key_prefix):
            raise ValueError(f"{base!r} is not a spill file of {self!r}")
        return key

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self, cleanup: bool = True) -> int:
        """Connect, check the bucket, delete what earlier runs left under the namespace.

        Returns how many objects (and unfinished multipart uploads) it deleted.
        ``cleanup=False``: a reader of another node's files deletes nothing.
        """
        if self._client is not None:
            raise RuntimeError(f"{self!r} is started already")
        # Importing aiobotocore takes ~0.4 s: not on the event loop.
        session_mod = await asyncio.to_thread(importlib.import_module, "aiobotocore.session")
        config_mod = await asyncio.to_thread(importlib.import_module, "botocore.config")

        connect_timeout, read_timeout, max_attempts = self._timeouts
        config = config_mod.Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # botocore's "max_attempts" counts retries, "total_max_attempts" all tries.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=max(10, 2 * self.concurrency),
            # No SHA-256 of bodies on the event loop (botocore signs payloads
            # over plain http otherwise), and no extra CRC-32 of them: every
            # record carries its own CRC-32, checked after a restore.
            s3={"payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = session_mod.get_session()
        await asyncio.to_thread(_warm_loader, session)
        stack = contextlib.AsyncExitStack()
        where = f"s3://{self.bucket}/{self._key_prefix}"
        try:
            with _s3_errors(f"connecting to S3 for {where}"):
                self._client = await stack.enter_async_context(
                    session.create_client("s3", config=config)
                )
            await self._check_bucket()
            removed = await self._remove_leftovers() if cleanup else 0
        except BaseException:
            self._client = None
            await stack.aclose()
            raise
        self._stack = stack
        return removed

    async def _check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            with _s3_errors(f"checking spill bucket {self.bucket!r}"):
                await self._client.head_bucket(Bucket=self.bucket)
        except SpillIOError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError):
                status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404:
                    raise SpillIOError(
                        f"spill bucket {self.bucket!r} does not exist (create it, or fix "
                        f"the spill setting s3://{self.bucket}/{self.prefix})"
                    ) from cause
                if status == 403:
                    raise SpillIOError(
                        f"no access to spill bucket {self.bucket!r} with these credentials"
                    ) from cause
            raise

    async def _remove_leftovers(self) -> int:
        from botocore.exceptions import ClientError

        client = self._client
        where = f"s3://{self.bucket}/{self._key_prefix}"
        removed = 0
        with _s3_errors(f"removing earlier spill files under {where}"):
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._key_prefix
            )
            async for page in pages:
                for upload in page.get("Uploads", []):
                    with contextlib.suppress(ClientError):  # finished or aborted meanwhile
                        await client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key_prefix
            )
            async for page in pages:
                keys = [obj["Key"] for obj in page.get("Contents", [])]
                for i in range(0, len(keys), _S3_DELETE_BATCH):
                    batch = keys[i : i + _S3_DELETE_BATCH]
                    resp = await client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                    )
                    errors = resp.get("Errors", [])
                    if errors:
                        first = errors[0]
                        raise SpillIOError(
                            f"removing earlier spill files under {where}: {len(errors)} not "
                            f"deleted, e.g. {first.get('Key')}: {first.get('Code')} "
                            f"{first.get('Message', '')}"
                        )
                    removed += len(batch)
        return removed

    async def write(self, parts: Sequence[Buffer], total: int) -> str:
        """Upload the parts as one object (multipart from ``part_size`` on); return its URL."""
        client = self._require()
        views = _source_views(parts, total)
        key = self._new_key()
        base = _s3_base(self.bucket, key)
        doing = f"writing {total} bytes to {base}"
        if total <= self.part_size:
            try:
                body = _request_body(views)
                with _s3_errors(doing):
                    await client.put_object(
                        Bucket=self.bucket, Key=key, Body=body, ContentLength=total
                    )
            except BaseException:
                # Cancelled or timed out, the object may exist all the same.
                self._spawn(self._discard(key))
                raise
        else:
            await self._write_multipart(key, views, total, doing)
        # Every request is done: nothing reads the views any more.  (After an
        # error aiohttp may still be reading a body in its executor; the views
        # are then left to the garbage collector.)
        _release(views)
        return base

    async def _write_multipart(
        self, key: str, views: list[memoryview], total: int, doing: str
    ) -> None:
        part_size = max(self.part_size, -(-total // S3_MAX_PARTS))
        plan = _split_parts(views, part_size)
        await self._upload_parts(key, plan, doing)
        for part in plan:  # done: release the slices (see write)
            _release(part)

    async def _upload_parts(self, key: str, plan: list[list[memoryview]], doing: str) -> None:
        client = self._client
        upload_id: str | None = None
        etags: list[str | None] = [None] * len(plan)
        todo = iter(range(len(plan)))  # shared by the workers: each part is taken once

        async def worker() -> None:
            for i in todo:
                body = _request_body(plan[i])
                with _s3_errors(f"{doing} (part {i + 1} of {len(plan)})"):
                    resp = await client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=i + 1,
                        Body=body,
                        ContentLength=sum(len(v) for v in plan[i]),
                    )
                etags[i] = resp["ETag"]

        try:
            with _s3_errors(doing):
                created = await client.create_multipart_upload(Bucket=self.bucket, Key=key)
            upload_id = created["UploadId"]
            await _gather_or_cancel([worker() for _ in range(min(self.concurrency, len(plan)))])
            with _s3_errors(doing):
                await client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"ETag": e, "PartNumber": i + 1} for i, e in enumerate(etags)]
                    },
                )
        except BaseException:
            # A cancelled CreateMultipartUpload may have created the upload all
            # the same: then the cleanup looks it up.
            self._spawn(self._discard(key, multipart=True, upload_id=upload_id))
            raise

    async def _discard(
        self, key: str, *, multipart: bool = False, upload_id: str | None = None
    ) -> None:
        """Best effort: abort the key's uploads and delete it.

        A request still on its way may yet land after this; start() of the
        node's next run sweeps whatever is left.
        """
        client = self._client
        if client is None:
            return
        try:
            async with asyncio.timeout(_CLEANUP_TIMEOUT_S):
                if multipart:
                    ids = [upload_id] if upload_id is not None else []
                    if not ids:
                        resp = await client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
                        ids = [u["UploadId"] for u in resp.get("Uploads", []) if u["Key"] == key]
                    for uid in ids:
                        with contextlib.suppress(Exception):
                            await client.abort_multipart_upload(
                                Bucket=self.bucket, Key=key, UploadId=uid
                            )
                await client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - best effort, logged
            log.warning("spill cleanup failed", url=_s3_base(self.bucket, key), error=repr(exc))

    async def read_into(self, base: str, offset: int, dests: Sequence[memoryview]) -> None:
        """Fill ``dests`` from one ranged GET, copying the body as it arrives."""
        client = self._require()
        key = self._key_of(base)
        if offset < 0:
            raise ValueError(f"offset is >= 0, got {offset}")
        views = _dest_views(dests)
        total = sum(len(v) for v in views)
        if total == 0:
            return
        doing = f"reading {total} bytes at offset {offset} of {base}"
        try:
            with _s3_errors(doing, lost_if_missing=True):
                resp = await client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + total - 1}"
                )
                async with resp["Body"] as body:
                    content_range = resp.get("ContentRange") or ""
                    if not content_range.startswith(f"bytes {offset}-") and (
                        offset != 0 or content_range
                    ):
                        raise SpillIOError(
                            f"{doing}: the server answered the range with {content_range!r}"
                        )
                    length = int(resp.get("ContentLength", 0))
                    if length < total:
                        raise SpillCorruptError(
                            f"{doing}: the object ends {total - length} bytes before that"
                        )
                    done = 0
                    for view in views:
                        pos = 0
                        while pos < len(view):
                            chunk = await body.read(min(len(view) - pos, _S3_READ_CHUNK))
                            if not chunk:
                                raise SpillIOError(
                                    f"{doing}: the response ended after {done} bytes"
                                )
                            view[pos : pos + len(chunk)] = chunk
                            pos += len(chunk)
                            done += len(chunk)
        finally:
            _release(views)  # nothing else holds them; see _release

    async def delete(self, base: str) -> None:
        """Delete the object; a missing one is fine."""
        client = self._require()
        key = self._key_of(base)
        try:
            with _s3_errors(f"deleting {base}", lost_if_missing=True):
                await client.delete_object(Bucket=self.bucket, Key=key)
        except SpillCorruptError:
            pass  # not there: deleted already

    async def close(self) -> None:
        """Wait (bounded) for background cleanups, then close the client."""
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        stack, self._stack = self._stack, None
        self._client = None
        if stack is not None:
            await stack.aclose()


if TYPE_CHECKING:  # mypy checks that both implement the protocol

    def _conforms(local: LocalBackend, s3: S3Backend) -> list[SpillBackend]:
        return [local, s3]


# --- Choosing a backend -----------------------------------------------------


def open_backend(spec: str, namespace: str) -> SpillBackend:
    """The backend a spill setting names.

    ``s3://bucket/prefix`` is an :class:`S3Backend`; anything else is one or
    more local directories separated by commas (made absolute), a
    :class:`LocalBackend`.  Not started: call ``await backend.start()``.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a spill setting is a str, not {type(spec).__name__}")
    spec = spec.strip()
    if not spec:
        raise ValueError("the spill setting is empty: give directories or s3://bucket/prefix")
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"a spill setting s3://bucket/prefix needs a bucket, got {spec!r}")
        return S3Backend(bucket, prefix, namespace)
    if "://" in spec:
        raise ValueError(f"spill storage is local directories or s3://bucket/prefix, got {spec!r}")
    dirs = [os.path.abspath(os.path.expanduser(d.strip())) for d in spec.split(",") if d.strip()]
    if not dirs:
        raise ValueError(f"the spill setting names no directory: {spec!r}")
    return LocalBackend(dirs, namespace)
