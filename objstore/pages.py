"""Page tables of shared mappings: faulting pages in ahead of use, from worker threads.

Shared by the node (the arena's prefault) and clients (warming their own
mapping before a large copy); see ``bench/arena.py`` for the figures.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from collections.abc import Callable

__all__ = [
    "MADV_POPULATE_READ",
    "MADV_POPULATE_WRITE",
    "address_of",
    "lower_thread_priority",
    "populate",
]

# Linux 5.14+: fault pages in for writing without touching them from Python.
MADV_POPULATE_WRITE: int = getattr(mmap, "MADV_POPULATE_WRITE", 23)
MADV_POPULATE_READ: int = getattr(mmap, "MADV_POPULATE_READ", 22)
_MADVISE_STEP = 4 * 1024 * 1024


def _load_madvise() -> Callable[[int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


# libc's madvise through ctypes releases the GIL for the whole call;
# mmap.madvise holds it (a 1 GiB populate would stall every other thread).
_madvise = _load_madvise()


def lower_thread_priority() -> None:
    """Make the calling thread yield the CPU to everything else (nice 19, Linux).

    Background faulting must not slow down the copies it exists to speed up.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass


def address_of(mm: mmap.mmap) -> int:
    """The address of a mapping (valid while it stays open)."""
    holder = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(holder)
    finally:
        del holder


def populate(mm: mmap.mmap, start: int, end: int, write: bool = True, addr: int = 0) -> bool:
    """Fault pages ``[start, end)`` of a shared mapping in.

    ``write=True`` (``MADV_POPULATE_WRITE``) allocates pages not yet in the
    memfd; ``write=False`` (``MADV_POPULATE_READ``) is about 3x faster for
    pages another process already populated and only fills this process's
    page tables.  Returns False when the kernel does not support it (then
    pages are simply faulted on first use).  Blocks: call it from a worker
    thread, never from the event loop.
    """
    page = mmap.PAGESIZE
    start -= start % page
    end = min(len(mm), end)
    if end <= start:
        return True
    advice = MADV_POPULATE_WRITE if write else MADV_POPULATE_READ
    if _madvise is not None:
        base = addr or address_of(mm)
        # Small steps: madvise holds the process's mmap lock while it faults
        # pages in, and any mmap/munmap elsewhere in the process (a thread
        # stack, a large allocation on the event loop's thread) waits for it.
        for pos in range(start, end, _MADVISE_STEP):
            n = min(_MADVISE_STEP, end - pos)
            if _madvise(base + pos, n, advice) != 0:
                err = ctypes.get_errno()
                if err in (errno.EINVAL, errno.ENOSYS):
                    return False
                raise OSError(err, os.strerror(err))
        return True
    try:
        for pos in range(start, end, _MADVISE_STEP):
            mm.madvise(advice, pos, min(_MADVISE_STEP, end - pos))
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOSYS):
            return False
        raise
    return True
