"""Least-recently-used eviction policy for evictable objects, apart from any I/O.

Modelled on Ray's ``eviction_policy.h`` ``LRUCache``.  The store's primary
copies are never evicted; only *evictable* objects -- secondary copies pulled
from other nodes that no client pins -- are added here.  The policy only
decides *which* objects to evict; the caller frees their memory.

All of :meth:`EvictionPolicy.add`, :meth:`~EvictionPolicy.remove` and
:meth:`~EvictionPolicy.touch` are O(1); :meth:`~EvictionPolicy.choose_victims`
is O(number of victims).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["EvictionPolicy"]


class EvictionPolicy:
    """LRU order over evictable objects, keyed by object id, with their sizes."""

    __slots__ = ("_evictable_bytes", "_lru")

    def __init__(self) -> None:
        """Start with no evictable objects."""
        # Least recently used first, most recently used last.
        self._lru: OrderedDict[bytes, int] = OrderedDict()
        # Invariant: evictable_bytes == sum(self._lru.values())
        self._evictable_bytes = 0

    def add(self, object_id: bytes, size: int) -> None:
        """Make ``object_id`` evictable, as the most recently used object.

        Raises :class:`ValueError` if it is evictable already or ``size < 0``.
        """
        if size < 0:
            raise ValueError(f"object size must be >= 0, got {size}")
        if object_id in self._lru:
            raise ValueError(f"object {object_id.hex()} is evictable already")
        self._lru[object_id] = size
        self._evictable_bytes += size

    def remove(self, object_id: bytes) -> bool:
        """Make ``object_id`` no longer evictable (pinned again, or deleted).

        Returns whether it was evictable.
        """
        size = self._lru.pop(object_id, None)
        if size is None:
            return False
        self._evictable_bytes -= size
        return True

    def touch(self, object_id: bytes) -> None:
        """Mark ``object_id`` as most recently used; a no-op if it is not evictable."""
        if object_id in self._lru:
            self._lru.move_to_end(object_id)

    def choose_victims(self, needed: int) -> list[bytes]:
        """Pick objects to evict so that at least ``needed`` bytes are freed.

        Takes least recently used objects first until their sizes sum to at
        least ``needed``, or all of them if that is not enough.  The chosen ids
        are removed from the policy; the caller must free them.
        ``choose_victims(0)`` returns ``[]``; a negative ``needed`` raises
        :class:`ValueError`.
        """
        if needed < 0:
            raise ValueError(f"needed bytes must be >= 0, got {needed}")
        victims: list[bytes] = []
        freed = 0
        while freed < needed and self._lru:
            object_id, size = self._lru.popitem(last=False)
            self._evictable_bytes -= size
            freed += size
            victims.append(object_id)
        return victims

    @property
    def evictable_bytes(self) -> int:
        """Total size of all evictable objects."""
        return self._evictable_bytes

    def __contains__(self, object_id: object) -> bool:
        """Whether ``object_id`` is evictable."""
        return object_id in self._lru

    def __len__(self) -> int:
        """Number of evictable objects."""
        return len(self._lru)

    def __repr__(self) -> str:
        return f"<EvictionPolicy objects={len(self._lru)} bytes={self._evictable_bytes}>"
