"""A client's side of shared memory: mapping segments, warming page tables, copying in.

Copies of large payloads run in worker threads (``numpy.copyto`` releases the
GIL), one contiguous share per thread; pages not yet in this process's page
tables are faulted in first with one ``madvise`` per share, which costs far
less than a fault per page during the copy (see ``bench/arena.py``).
"""

from __future__ import annotations

import mmap

import numpy as np

from objstore.pages import lower_thread_priority, populate
from objstore.serialization import Serialized

__all__ = ["Mark", "warm", "map_segment", "copy_all", "copy_ranges", "split"]


class Mark:
    """A high-water mark shared with a background thread (int writes are atomic)."""

    __slots__ = ("upto",)

    def __init__(self) -> None:
        self.upto = 0


def warm(mm: mmap.mmap, nbytes: int, mark: Mark, start: int = 0) -> None:
    """Fill this process's page tables for ``[start, nbytes)`` of a segment (in a thread).

    ``mark.upto`` follows the progress when the range starts at the mark.
    """
    step = 64 << 20
    if start:  # the background part: leave the CPU to the copies
        lower_thread_priority()
    try:
        for pos in range(start, nbytes, step):
            end = min(nbytes, pos + step)
            if not populate(mm, pos, end, write=False):
                return
            mark.upto = end
    except (OSError, ValueError, BufferError):  # closed meanwhile: nothing to warm
        return


def map_segment(fd: int, size: int) -> mmap.mmap:
    """Map a segment's file descriptor, shared and writable (the caller closes the fd)."""
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def copy_all(mm: mmap.mmap, base: int, ser: Serialized, dst: memoryview, mark: Mark) -> None:
    """Copy a whole payload in this thread (see :func:`copy_ranges`)."""
    copy_ranges(mm, base, dst, [(p, o, 0, len(p)) for p, o in zip(ser.parts, ser.offsets)], mark)


def copy_ranges(
    mm: mmap.mmap,
    base: int,
    dst: memoryview,
    jobs: list[tuple[memoryview, int, int, int]],
    mark: Mark,
) -> None:
    """Copy ``part[a:b]`` to ``dst[off+a : off+b]`` for each job.

    Pages above ``mark`` are faulted in first with one ``madvise`` per job,
    which costs far less than a fault per page during the copy.
    """
    for part, off, a, b in jobs:
        if b - a >= 1 << 20:
            if base + off + b > mark.upto:
                populate(mm, base + off + a, base + off + b, write=False)
            np.copyto(
                np.frombuffer(dst, np.uint8, count=b - a, offset=off + a),
                np.frombuffer(part, np.uint8, count=b - a, offset=a),
            )
        else:
            dst[off + a : off + b] = part[a:b]


def split(ser: Serialized, n: int) -> list[list[tuple[memoryview, int, int, int]]]:
    """Split the payload's parts into ``n`` jobs of about equal bytes."""
    total = sum(len(p) for p in ser.parts)
    share = -(-total // n)
    share = (share + 4095) & ~4095
    jobs: list[list[tuple[memoryview, int, int, int]]] = [[] for _ in range(n)]
    j = 0
    room = share
    for part, off in zip(ser.parts, ser.offsets):
        pos, end = 0, len(part)
        while pos < end:
            take = min(room, end - pos)
            jobs[j].append((part, off, pos, pos + take))
            pos += take
            room -= take
            if room == 0 and j < n - 1:
                j += 1
                room = share
    return [job for job in jobs if job]
