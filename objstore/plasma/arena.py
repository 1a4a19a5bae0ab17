"""Shared memory segments: the node's arena and file-backed fallback segments.

The arena is one ``memfd`` of ``--memory`` bytes, sealed against resizing and
mapped by the node; every client receives its file descriptor once over the
Unix socket and maps it too.  A memfd lives exactly as long as some process
holds it open or mapped, so nothing leaks when the node or a client dies
(unlike named POSIX segments).

Fallback segments are anonymous files (``O_TMPFILE``, unlinked from birth) in
the fallback directory, one per object that did not fit in the arena; they are
handed to clients the same way.

Fresh memfd pages cost a page fault on first touch (about 1 GB/s for a first
copy on this kind of machine), so the node faults the start of the arena in
from a background thread right after it is ready (``MADV_POPULATE_WRITE``) and
the allocator prefers low offsets; see ``bench/arena.py`` for the figures.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
import time

import structlog

from objstore.errors import ObjectStoreFullError, OutOfDiskError
from objstore.pages import (
    MADV_POPULATE_WRITE,
    address_of,
    lower_thread_priority,
    populate,
)

__all__ = ["Segment", "Arena", "FallbackSegment", "populate", "address_of", "MADV_POPULATE_WRITE"]

log = structlog.get_logger("objstore.plasma.arena")

_SEALS = (
    getattr(fcntl, "F_SEAL_SHRINK", 0x0002)
    | getattr(fcntl, "F_SEAL_GROW", 0x0004)
    | getattr(fcntl, "F_SEAL_SEAL", 0x0001)
)
_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
_POPULATE_STEP = 32 * 1024 * 1024


class Segment:
    """A mapped shared-memory region clients can map too (by its fd)."""

    __slots__ = ("segment_id", "fd", "size", "mm")

    def __init__(self, segment_id: int, fd: int, size: int, mm: mmap.mmap) -> None:
        self.segment_id = segment_id
        self.fd = fd
        self.size = size
        self.mm = mm

    def close(self) -> None:
        """Unmap and close; clients that mapped it keep their own mapping."""
        try:
            self.mm.close()
        except BufferError:
            # A view into the mapping is still alive in this process; the mapping
            # goes when it does.
            log.warning("segment still has exported views; left mapped", segment=self.segment_id)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Arena(Segment):
    """Segment 0: the node's main shared memory, a sealed memfd."""

    __slots__ = ("_prefault_threads", "_prefault_stop", "populated")

    def __init__(self, size: int) -> None:
        try:
            fd = os.memfd_create("objstore-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            raise ObjectStoreFullError(f"cannot create the arena: {exc.strerror}") from exc
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            raise ObjectStoreFullError(
                f"cannot map an arena of {size} bytes: {exc.strerror}"
            ) from exc
        super().__init__(0, fd, size, mm)
        self._prefault_threads: list[threading.Thread] = []
        self._prefault_stop = threading.Event()
        # Bytes from offset 0 known to be faulted in (only grows).
        self.populated = 0

    def start_prefault(
        self, nbytes: int, threads: int = 2, first: int = 0, own: bool = False
    ) -> threading.Event:
        """Fault in the first ``nbytes`` of the arena from background threads.

        Pages are faulted through a temporary mapping that is closed after, so
        they stay in the memfd (ready for clients) without counting in the
        node's own resident set.  Chunks are handed out in ascending order, so
        the low offsets the allocator prefers are warm first.  The returned
        event is set once the first ``first`` bytes are in (or prefaulting
        stopped).

        With ``own``, the node's own mapping's page tables are filled for the
        same range afterwards (``MADV_POPULATE_READ``, a few hundred ms per
        GiB): a node that receives objects from other nodes writes them with
        ``recv_into`` in its own thread, where ~262,000 minor faults per GiB
        halved the first transfer's speed.  Those pages count in the node's
        resident set as shared memory (they are the arena's, allocated anyway).
        """
        first_done = threading.Event()
        nbytes = min(nbytes, self.size)
        first = min(first, nbytes)
        if nbytes <= 0:
            first_done.set()
            return first_done
        try:
            tmp = mmap.mmap(
                self.fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            log.warning("cannot map the arena for prefaulting", error=exc.strerror)
            first_done.set()
            return first_done
        addr = address_of(tmp)
        # `contiguous`: every byte below it is faulted in; `finished` holds the
        # starts of chunks done above it.
        state = {"next": 0, "done": 0, "live": threads, "contiguous": 0}
        finished: set[int] = set()
        t0 = time.perf_counter()
        lock = threading.Lock()

        def work() -> None:
            lowered = False
            try:
                while not self._prefault_stop.is_set():
                    if not lowered and first_done.is_set():
                        lower_thread_priority()  # past what the ready line waits for
                        lowered = True
                    with lock:
                        pos = state["next"]
                        if pos >= nbytes:
                            return
                        state["next"] = pos + _POPULATE_STEP
                    end = min(nbytes, pos + _POPULATE_STEP)
                    if not populate(tmp, pos, end, write=True, addr=addr):
                        log.info("MADV_POPULATE_WRITE not supported; pages fault on first use")
                        return
                    with lock:
                        state["done"] += end - pos
                        self.populated = state["done"]
                        finished.add(pos)
                        while state["contiguous"] in finished:
                            finished.discard(state["contiguous"])
                            state["contiguous"] = min(nbytes, state["contiguous"] + _POPULATE_STEP)
                        if state["contiguous"] >= first:
                            first_done.set()
            except OSError as exc:
                log.warning("prefault stopped", error=str(exc))
            finally:
                with lock:
                    state["live"] -= 1
                    last = state["live"] == 0
                if last:
                    self.populated = state["done"]
                    first_done.set()
                    tmp.close()
                    log.info(
                        "arena prefaulted",
                        bytes=state["done"],
                        seconds=round(time.perf_counter() - t0, 3),
                    )
                    if own and state["done"]:
                        self._populate_own(state["done"])

        self._prefault_threads = [
            threading.Thread(target=work, name=f"objstore-prefault-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._prefault_threads:
            t.start()
        return first_done

    def _populate_own(self, nbytes: int) -> None:
        """Fill this process's page tables for ``[0, nbytes)`` (see :meth:`start_prefault`)."""
        t0 = time.perf_counter()
        try:
            addr = address_of(self.mm)
        except (ValueError, TypeError):
            return  # closed meanwhile
        for pos in range(0, nbytes, _POPULATE_STEP):
            if self._prefault_stop.is_set():
                return
            if not populate(
                self.mm, pos, min(nbytes, pos + _POPULATE_STEP), write=False, addr=addr
            ):
                return
        log.debug("own mapping populated", bytes=nbytes, seconds=round(time.perf_counter() - t0, 3))

    def close(self) -> None:
        """Stop prefaulting, then unmap and close the arena."""
        self._prefault_stop.set()
        for t in self._prefault_threads:
            t.join(timeout=10)
        super().close()


class FallbackSegment(Segment):
    """A file-backed segment on disk for one object that did not fit in the arena."""

    __slots__ = ()

    @classmethod
    def create(cls, segment_id: int, directory: str, size: int) -> FallbackSegment:
        """Create an anonymous file of ``size`` bytes in ``directory`` and map it.

        Space is reserved with ``posix_fallocate`` so that a full disk is an
        error now, not a SIGBUS when a client writes later.
        """
        map_size = max(size, 1)
        try:
            fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise _disk_error(exc, directory, size) from exc
            import tempfile

            fd, path = tempfile.mkstemp(prefix="objstore-fallback-", dir=directory)
            os.unlink(path)
        try:
            os.posix_fallocate(fd, 0, map_size)
            mm = mmap.mmap(
                fd, map_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            os.close(fd)
            raise _disk_error(exc, directory, size) from exc
        return cls(segment_id, fd, map_size, mm)


def _disk_error(exc: OSError, directory: str, size: int) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfDiskError(
            f"fallback directory {directory} has no room for {size} bytes: {exc.strerror}"
        )
    return ObjectStoreFullError(
        f"cannot create a fallback file of {size} bytes in {directory}: {exc.strerror}"
    )
