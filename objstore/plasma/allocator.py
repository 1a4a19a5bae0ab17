"""Offsets inside the arena: a segregated-fit allocator that tracks only free extents.

Nothing is recorded per live allocation (the arena may hold millions of objects):
the caller hands the size back to :meth:`Allocator.free`.  Sizes and offsets are
kept in units of ``alignment`` bytes, and a free extent is known by its END:
allocating from the front of an extent then leaves its place in every index alone.
Free extents are found by end in a dict (end -> start), in a two-level sorted list
of ends (bisect; finds the extent after a freed block, which catches double frees),
and in TLSF-style size classes (8 per power of two; lazy min-heaps of ends plus a
bitmap of the non-empty classes).  An allocation takes the lowest-addressed extent
of the first class whose members all fit, after a look at a few extents of the
request's own class; that class is scanned in full only before giving up, so
``allocate`` returns None exactly when no free extent fits.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from heapq import heappop, heappush

__all__ = ["DEFAULT_ALIGNMENT", "Allocator"]

DEFAULT_ALIGNMENT = 64
_SUB_BITS = 3  # 2**_SUB_BITS size classes per power of two
_SUB = 1 << _SUB_BITS
_EXACT = 2 * _SUB  # sizes below this many units have a class of their own
_SCAN = 4  # extents of the request's own class looked at before a larger class
_LOAD = 512  # index blocks are split above 2 * _LOAD ends, merged below _LOAD // 4


def _size_class(u: int) -> int:
    """Size class of ``u`` units: non-decreasing in ``u``, and ``u`` itself below ``_EXACT``."""
    if u < _EXACT:
        return u
    sh = u.bit_length() - 1 - _SUB_BITS
    return ((sh + 1) << _SUB_BITS) | ((u >> sh) & (_SUB - 1))


def _class_min(c: int) -> int:
    """Smallest size in units that falls in class ``c`` (the inverse of ``_size_class``)."""
    if c <= _EXACT:
        return c
    return (_SUB | (c & (_SUB - 1))) << ((c >> _SUB_BITS) - 1)


_CLASS_MIN = [_class_min(c) for c in range(_size_class(1 << 64) + 3)]


class Allocator:
    """Hands out aligned offsets in an arena of ``capacity`` bytes; not thread-safe.

    Invariants (units; an extent is ``[_by_end[e], e)``):

    * Free extents are non-empty, never overlap and never touch: neighbours are
      always merged.
    * ``_blocks`` concatenated is the sorted list of the keys of ``_by_end``; no
      block is empty, ``_maxes[i] == _blocks[i][-1]``, and when there are several
      blocks none holds fewer than ``_LOAD // 4`` ends.
    * ``_free`` is the sum of the free sizes; ``_counts[c]`` is the number of free
      extents in class ``c``, and bit ``c`` of ``_bitmap`` is set iff it is non-zero.
    * Every free extent of class ``c`` has an entry (its end) in the heap ``_bins[c]``;
      other entries are stale (extent gone, or now in another class), dropped lazily
      or used only if the extent they name still fits.  Count zero: heap emptied.
    * ``_largest`` is the largest free size, or -1 when it must be recomputed.
    """

    __slots__ = (
        "_bins",
        "_bitmap",
        "_blocks",
        "_by_end",
        "_cap",
        "_counts",
        "_free",
        "_largest",
        "_mask",
        "_maxes",
        "_shift",
    )

    def __init__(self, capacity: int, alignment: int = DEFAULT_ALIGNMENT) -> None:
        """Manage ``capacity`` bytes (rounded down to a multiple of ``alignment``)."""
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a positive power of two, got {alignment}")
        if capacity < alignment:
            raise ValueError(
                f"capacity must be at least the alignment ({alignment} bytes), got {capacity}"
            )
        self._shift = alignment.bit_length() - 1
        self._mask = alignment - 1
        self._cap = self._free = self._largest = cap = capacity >> self._shift
        self._by_end = {cap: 0}
        self._blocks = [[cap]]
        self._maxes = [cap]
        n_classes = _size_class(cap) + 2  # + 1: the next class up from a top-class request
        self._bins: list[list[int]] = [[] for _ in range(n_classes)]
        self._counts = [0] * n_classes
        self._bitmap = 0
        self._enter(cap, cap)

    # ---------------------------------------------------------------- public
    @staticmethod
    def allocated_size(size: int, alignment: int = DEFAULT_ALIGNMENT) -> int:
        """Bytes a request of ``size`` occupies: rounded up to ``alignment``, at least one unit.

        Pass the allocator's ``alignment`` if it is not the default.
        """
        if size < 0:
            raise ValueError(f"size cannot be negative, got {size}")
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a positive power of two, got {alignment}")
        return max(size + alignment - 1 & -alignment, alignment)

    @property
    def alignment(self) -> int:
        """Alignment of every offset and block size, in bytes."""
        return 1 << self._shift

    @property
    def capacity(self) -> int:
        """Bytes managed (the requested capacity rounded down to ``alignment``)."""
        return self._cap << self._shift

    @property
    def used(self) -> int:
        """Bytes in allocated blocks."""
        return (self._cap - self._free) << self._shift

    @property
    def free_bytes(self) -> int:
        """Bytes in free extents (not necessarily contiguous)."""
        return self._free << self._shift

    @property
    def largest_free(self) -> int:
        """Size in bytes of the largest free extent, 0 when full (cached)."""
        if self._largest < 0:
            best = 0
            if self._bitmap:
                c = self._bitmap.bit_length() - 1
                top = _CLASS_MIN[c + 1] - 1
                by_end = self._by_end
                for e in self._bins[c]:
                    sz = e - by_end.get(e, e)
                    if sz > best:
                        best = sz
                        if sz >= top:
                            break
            self._largest = best
        return self._largest << self._shift

    @property
    def free_extents(self) -> int:
        """Number of free extents (1 for an empty arena, 0 for a full one)."""
        return len(self._by_end)

    def extents(self) -> list[tuple[int, int]]:
        """Free extents as ``(offset, size)`` in bytes, sorted by offset (for tests and debugging)."""
        sh = self._shift
        by_end = self._by_end
        return [(by_end[e] << sh, (e - by_end[e]) << sh) for blk in self._blocks for e in blk]

    def allocate(self, size: int) -> int | None:
        """Offset of a free block of ``allocated_size(size)`` bytes, or None if none fits."""
        if size > 0:
            u = (size + self._mask) >> self._shift
        elif size == 0:
            u = 1
        else:
            raise ValueError(f"size cannot be negative, got {size}")
        if u > self._free or 0 <= self._largest < u:
            return None
        by_end = self._by_end
        e = own = 0  # own: the request's class, when it may hold extents too small for it
        if u < _EXACT:
            c = u
        else:
            sh = u.bit_length() - 1 - _SUB_BITS
            c = ((sh + 1) << _SUB_BITS) | ((u >> sh) & (_SUB - 1))
            if u & ((1 << sh) - 1):
                if self._counts[c]:
                    own = c
                    for t in self._bins[c][:_SCAN]:
                        if t - by_end.get(t, t) >= u:
                            e = t
                            break
                c += 1
        if not e:
            m = self._bitmap >> c
            if m:
                # Every extent of this class fits, so an entry that does not is stale.
                c += (m & -m).bit_length() - 1
                heap = self._bins[c]
                e = heap[0]
                while e - by_end.get(e, e) < u:
                    heappop(heap)
                    e = heap[0]
                if e - by_end[e] - u < _CLASS_MIN[c]:
                    heappop(heap)  # the extent leaves this class: drop its entry now
            else:  # last resort: the lowest fitting extent of the request's own class
                for t in self._bins[own] if own else ():
                    if t - by_end.get(t, t) >= u and (not e or t < e):
                        e = t
                if not e:
                    return None
        # Take the first u units of the extent [s, e).
        s = by_end[e]
        sz = e - s
        self._free -= u
        if sz >= self._largest:
            self._largest = -1
        if sz < _EXACT:  # _size_class(sz), inlined
            c = sz
        else:
            sh = sz.bit_length() - 1 - _SUB_BITS
            c = ((sh + 1) << _SUB_BITS) | ((sz >> sh) & (_SUB - 1))
        if sz > u:  # the rest keeps its end, so its index entry; only its class may change
            by_end[e] = s + u
            if sz - u < _CLASS_MIN[c]:
                self._enter(e, sz - u, c)
        else:
            del by_end[e]
            self._unclass(c)
            b = bisect_left(self._maxes, e)
            self._ix_del(b, bisect_left(self._blocks[b], e))
        return s << self._shift

    def free(self, offset: int, size: int) -> None:
        """Give back the block at ``offset`` allocated with ``size``, merging free neighbours.

        Raises ValueError for a misaligned offset, a block outside the arena, or one
        that overlaps a free extent (a double free).
        """
        if size > 0:
            u = (size + self._mask) >> self._shift
        elif size == 0:
            u = 1
        else:
            raise ValueError(f"size cannot be negative, got {size}")
        if offset < 0 or offset & self._mask:
            raise ValueError(f"offset {offset} is negative or not a multiple of {self._mask + 1}")
        s = offset >> self._shift
        e = s + u
        if e > self._cap:
            raise ValueError(f"block [{offset}, {e << self._shift}) lies outside the arena")
        by_end = self._by_end
        maxes = self._maxes
        b = bisect_right(maxes, s)
        j = right = 0  # (b, j): index position of the first extent ending after s
        if b < len(maxes):
            blk = self._blocks[b]
            j = bisect_right(blk, s)
            right = blk[j]
            rs = by_end[right]
            if rs < e:  # it must not start before e
                sh = self._shift
                raise ValueError(
                    f"double free: block [{offset}, {e << sh}) overlaps the free extent "
                    f"[{rs << sh}, {right << sh})"
                )
            if rs != e:
                right = 0  # not adjacent
        self._free += u
        left = by_end.pop(s, -1)  # start of the extent ending at s, if any
        if left >= 0:
            lc = _size_class(s - left)
            if j:
                j -= 1
            else:
                b -= 1
                j = len(self._blocks[b]) - 1
            if right:  # both neighbours: the left one's end s leaves the index
                self._unclass(lc)
                by_end[right] = left
                self._grow(right, right - e, right - left)
                self._ix_del(b, j)
            else:  # the left neighbour's end moves from s to e, at the same index position
                by_end[e] = left
                blk = self._blocks[b]
                blk[j] = e
                if maxes[b] == s:
                    maxes[b] = e
                self._enter(e, e - left, lc)
        elif right:  # the right neighbour now starts at s: its end stays put
            by_end[right] = s
            self._grow(right, right - e, right - s)
        else:
            by_end[e] = s
            self._ix_insert(b, j, e)
            self._enter(e, u)

    def __repr__(self) -> str:
        return (
            f"Allocator(capacity={self.capacity}, alignment={self.alignment}, "
            f"used={self.used}, free_extents={self.free_extents})"
        )

    # -------------------------------------------------------------- internal
    def _enter(self, e: int, sz: int, old: int = 0) -> None:
        """File the free extent of ``sz`` units ending at ``e`` under its size class.

        With ``old``, first account for one extent leaving class ``old``.
        """
        counts = self._counts
        if old:
            n = counts[old] - 1
            counts[old] = n
            if not n:
                self._bitmap ^= 1 << old
                self._bins[old].clear()
        if sz < _EXACT:  # _size_class(sz), inlined
            c = sz
        else:
            sh = sz.bit_length() - 1 - _SUB_BITS
            c = ((sh + 1) << _SUB_BITS) | ((sz >> sh) & (_SUB - 1))
        n = counts[c]
        counts[c] = n + 1
        if not n:
            self._bitmap |= 1 << c
        heap = self._bins[c]
        heappush(heap, e)
        if len(heap) > 2 * n + 64:  # mostly stale: rebuild (amortised O(1) per push)
            by_end = self._by_end
            lo, hi = _CLASS_MIN[c], _CLASS_MIN[c + 1]
            heap[:] = sorted({t for t in heap if lo <= t - by_end.get(t, t) < hi})
        if 0 <= self._largest < sz:
            self._largest = sz

    def _unclass(self, c: int) -> None:
        """Account for a free extent leaving class ``c`` (its heap entry goes stale)."""
        n = self._counts[c] - 1
        self._counts[c] = n
        if not n:
            self._bitmap ^= 1 << c
            self._bins[c].clear()

    def _grow(self, e: int, old: int, new: int) -> None:
        """The free extent ending at ``e`` grew from ``old`` to ``new`` units."""
        c = _size_class(old)
        if new >= _CLASS_MIN[c + 1]:
            self._enter(e, new, c)
        elif 0 <= self._largest < new:
            self._largest = new

    def _ix_insert(self, b: int, j: int, e: int) -> None:
        """Insert end ``e`` at position ``j`` of block ``b`` (``b`` may be one past the end)."""
        blocks = self._blocks
        if b == len(blocks):
            if not blocks:
                blocks.append([e])
                self._maxes.append(e)
                return
            b -= 1
            blk = blocks[b]
            blk.append(e)
            self._maxes[b] = e
        else:
            blk = blocks[b]
            blk.insert(j, e)
        if len(blk) > 2 * _LOAD:
            blocks.insert(b + 1, blk[_LOAD:])
            del blk[_LOAD:]
            self._maxes.insert(b, blk[-1])

    def _ix_del(self, b: int, j: int) -> None:
        """Delete the end at position ``j`` of block ``b``, merging a block grown too small."""
        blocks = self._blocks
        maxes = self._maxes
        blk = blocks[b]
        del blk[j]
        if len(blocks) == 1 and not blk:
            blocks.clear()
            maxes.clear()
            return
        if len(blocks) == 1 or len(blk) >= max(_LOAD // 4, 1):
            if j == len(blk):
                maxes[b] = blk[-1]
            return
        if b + 1 == len(blocks):
            b -= 1
        left = blocks[b]
        left += blocks.pop(b + 1)
        del maxes[b + 1]
        maxes[b] = left[-1]
        if len(left) > 2 * _LOAD:
            blocks.insert(b + 1, left[_LOAD:])
            del left[_LOAD:]
            maxes.insert(b, left[-1])
