"""The node's memory: the arena and its allocator, fallback segments, eviction order.

:class:`Memory` hands out ``(segment, offset)`` places for objects and takes
them back.  Segment 0 is the arena (one memfd, :class:`~objstore.plasma.arena.Arena`);
every other segment is a file-backed :class:`~objstore.plasma.arena.FallbackSegment`
holding exactly one object, made in a thread when the arena is full.  It
knows nothing of objects but the LRU order of the evictable ones
(:class:`~objstore.plasma.eviction.EvictionPolicy`): which copies to evict is
its call, dropping them from the table is the store's.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable

import structlog

from objstore.config import Config, format_size
from objstore.errors import ObjectStoreFullError, OutOfDiskError
from objstore.plasma.allocator import Allocator
from objstore.plasma.arena import Arena, FallbackSegment, Segment
from objstore.plasma.eviction import EvictionPolicy

__all__ = ["Memory"]

log = structlog.get_logger("objstore.plasma.memory")


def _close_unused_segment(fut: asyncio.Future[FallbackSegment]) -> None:
    """A fallback segment finished creating after its create was cancelled."""
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


class Memory:
    """The arena, the fallback segments and the eviction order of one node."""

    def __init__(self, config: Config) -> None:
        pc = config.plasma
        self.capacity = config.memory_bytes
        self.arena = Arena(self.capacity)
        self.allocator = Allocator(self.capacity)
        self.eviction = EvictionPolicy()
        self.fallback_dir = pc.fallback_dir or tempfile.gettempdir()
        self.fallback_max = pc.fallback_max_bytes
        self.fallback_used = 0
        self._next_segment = 1
        # segment id -> segment; every fallback segment holds exactly one object
        # (or one allocation being made ready for one).
        self.segments: dict[int, Segment] = {0: self.arena}
        self._fallback_warned = False

    # ------------------------------------------------------------ queries
    @property
    def used(self) -> int:
        """Bytes allocated in the arena."""
        return self.allocator.used

    @property
    def largest_free(self) -> int:
        return self.allocator.largest_free

    @property
    def free_bytes(self) -> int:
        """Arena bytes free or held by evictable copies."""
        return self.capacity - self.allocator.used + self.eviction.evictable_bytes

    def allocated_size(self, size: int) -> int:
        """What an object of ``size`` bytes takes of the arena (alignment included)."""
        return self.allocator.allocated_size(size)

    def view(self, segment: int, offset: int, size: int) -> memoryview:
        """A writable view of ``size`` bytes at (segment, offset) in the node's mapping."""
        return memoryview(self.segments[segment].mm)[offset : offset + size]

    # ------------------------------------------------------------ allocation
    def allocate_now(self, size: int, evict: Callable[[bytes], None]) -> tuple[int, int] | None:
        """Arena room for ``size`` bytes, evicting copies (``evict(oid)`` drops one
        from the table, which gives its memory back here) until a block fits."""
        offset = self.allocator.allocate(size)
        if offset is not None:
            return 0, offset
        need = self.allocator.allocated_size(size)
        # Least recently used copies, `need` bytes at a time, until a block fits
        # (the free bytes may be there already, but in pieces).
        while self.eviction.evictable_bytes:
            for oid in self.eviction.choose_victims(need):
                evict(oid)
            offset = self.allocator.allocate(size)
            if offset is not None:
                return 0, offset
        return None

    async def allocate_fallback(self, size: int, pinned_bytes: int) -> tuple[int, int]:
        """A file-backed segment for one object (made in a thread: it touches the disk)."""
        if size + self.fallback_used > self.fallback_max:
            raise self.full_error(size, pinned_bytes)
        # Bookkeeping first, so concurrent creates see the room as taken.
        segment_id = self._next_segment
        self._next_segment += 1
        self.fallback_used += size
        fut = asyncio.get_running_loop().run_in_executor(
            None, FallbackSegment.create, segment_id, self.fallback_dir, size
        )
        try:
            seg = await asyncio.shield(fut)
        except asyncio.CancelledError:
            self.fallback_used -= size
            fut.add_done_callback(_close_unused_segment)
            raise
        except OutOfDiskError as exc:
            self.fallback_used -= size
            raise ObjectStoreFullError(f"{self.full_error(size, pinned_bytes)}; {exc}") from exc
        except BaseException:
            self.fallback_used -= size
            raise
        self.fallback_used += seg.size - size
        self.segments[segment_id] = seg
        if not self._fallback_warned:
            self._fallback_warned = True
            log.warning(
                "arena full: using file-backed fallback allocations",
                directory=self.fallback_dir,
                size=size,
            )
        return segment_id, 0

    def release(self, segment: int, offset: int, size: int) -> None:
        """Give back what an allocation returned."""
        if segment < 0:
            return  # spilled: holds no memory
        if segment == 0:
            self.allocator.free(offset, size)
        else:
            seg = self.segments.pop(segment)
            self.fallback_used -= seg.size
            seg.close()

    def full_error(self, size: int, pinned_bytes: int) -> ObjectStoreFullError:
        """The error of a create that found no room anywhere."""
        return ObjectStoreFullError(
            f"no room for an object of {format_size(size)} ({size} bytes): the arena holds "
            f"{format_size(self.capacity)} with {format_size(self.allocator.used)} in use "
            f"({format_size(pinned_bytes)} pinned, largest free block "
            f"{format_size(self.allocator.largest_free)}), and the fallback holds "
            f"{format_size(self.fallback_used)} of {format_size(self.fallback_max)}"
        )

    def close(self) -> None:
        """Release every segment (the node is shutting down)."""
        for seg in list(self.segments.values()):
            seg.close()
        self.segments.clear()
