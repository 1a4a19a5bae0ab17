"""Restores asked for and handed out, one per object, grouped by file (pure).

However many gets wait for a spilled object, :class:`RestoreQueue` holds one
restore of it; the pending restores of one file are handed out together
(:class:`RestoreGroup`), sorted by offset, so that the spill manager reads
records that follow each other with one call.  No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["RestoreItem", "RestoreGroup", "RestoreQueue"]


class RestoreItem(NamedTuple):
    """One object to read back: ``size`` bytes at ``offset`` of its file."""

    object_id: bytes
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class RestoreGroup:
    """Objects of one file to restore together, sorted by offset."""

    file_key: str
    items: tuple[RestoreItem, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the objects (not of the gaps between them)."""
        return sum(item.size for item in self.items)

    @property
    def start(self) -> int:
        """Offset of the first byte to read."""
        return self.items[0].offset

    @property
    def end(self) -> int:
        """Offset just past the last byte to read."""
        return max(item.offset + item.size for item in self.items)


class RestoreQueue:
    """Restores asked for (pending) and handed out (in flight), one per object.

    :meth:`request` for each get of a spilled object; :meth:`take` hands out
    every pending restore, grouped by file; :meth:`done` when one finished or
    failed (a failed one may be requested again).
    """

    __slots__ = ("_pending", "_pending_file", "_in_flight", "_in_flight_bytes")

    def __init__(self) -> None:
        """Nothing pending, nothing in flight."""
        # file -> its pending restores, oid -> item; files in the order first asked for.
        # Invariant: oid in _pending[f] iff _pending_file[oid] == f; no empty file kept.
        self._pending: dict[str, dict[bytes, RestoreItem]] = {}
        self._pending_file: dict[bytes, str] = {}
        # oid -> its restore handed out by take().  Disjoint from _pending_file.
        self._in_flight: dict[bytes, RestoreItem] = {}
        # Invariant: == sum of the sizes in _in_flight.
        self._in_flight_bytes = 0

    def request(self, oid: bytes, file_key: str, offset: int, size: int) -> bool:
        """Restore ``oid`` from ``size`` bytes at ``offset`` of ``file_key``.

        True if this starts a new restore; False if one is pending or in flight
        already (the caller just waits for it).  :class:`ValueError` for a
        negative offset or size.
        """
        if offset < 0 or size < 0:
            raise ValueError(f"offset and size must be >= 0, got {offset}, {size}")
        if oid in self._pending_file or oid in self._in_flight:
            return False
        self._pending.setdefault(file_key, {})[oid] = RestoreItem(oid, offset, size)
        self._pending_file[oid] = file_key
        return True

    def take(self, max_bytes: int) -> list[RestoreGroup]:
        """Hand out every pending restore, now in flight, in groups by file.

        Files come in the order first asked for; each file's objects sorted by
        offset, cut into groups of at most ``max_bytes`` (a single larger
        object makes a group alone).  :class:`ValueError` if ``max_bytes < 1``.
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        groups: list[RestoreGroup] = []
        for file_key, pending in self._pending.items():
            group: list[RestoreItem] = []
            group_bytes = 0
            for item in sorted(pending.values(), key=lambda it: (it.offset, it.object_id)):
                if group and group_bytes + item.size > max_bytes:
                    groups.append(RestoreGroup(file_key, tuple(group)))
                    group, group_bytes = [], 0
                group.append(item)
                group_bytes += item.size
                self._in_flight[item.object_id] = item
                self._in_flight_bytes += item.size
            groups.append(RestoreGroup(file_key, tuple(group)))
        self._pending.clear()
        self._pending_file.clear()
        return groups

    def done(self, oid: bytes) -> None:
        """``oid``'s restore finished or failed; :class:`KeyError` if not in flight."""
        item = self._in_flight.pop(oid, None)
        if item is None:
            raise KeyError(f"no restore of {oid.hex()} in flight")
        self._in_flight_bytes -= item.size

    def cancel(self, oid: bytes) -> bool:
        """Drop ``oid``'s pending restore (e.g. it was deleted); whether one was pending.

        A restore in flight is not touched (False): the driver ends its read,
        then calls :meth:`done`.
        """
        file_key = self._pending_file.pop(oid, None)
        if file_key is None:
            return False
        pending = self._pending[file_key]
        del pending[oid]
        if not pending:
            del self._pending[file_key]
        return True

    def is_pending(self, oid: bytes) -> bool:
        """Whether ``oid``'s restore waits for :meth:`take`."""
        return oid in self._pending_file

    def is_in_flight(self, oid: bytes) -> bool:
        """Whether ``oid``'s restore was handed out and is not done."""
        return oid in self._in_flight

    @property
    def pending(self) -> int:
        """Restores waiting for :meth:`take`."""
        return len(self._pending_file)

    @property
    def in_flight(self) -> int:
        """Restores handed out and not done."""
        return len(self._in_flight)

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of the restores in flight."""
        return self._in_flight_bytes

    def __repr__(self) -> str:
        return f"<RestoreQueue pending={self.pending} in_flight={self.in_flight}>"

    def check(self) -> None:
        """Assert the internal invariants (tests call it after every step)."""
        total = 0
        for file_key, pending in self._pending.items():
            assert pending, f"file {file_key!r} kept with nothing pending"
            total += len(pending)
            for oid, item in pending.items():
                assert item.object_id == oid and self._pending_file[oid] == file_key
                assert item.offset >= 0 and item.size >= 0
        assert total == len(self._pending_file)
        assert not set(self._pending_file) & set(self._in_flight), "pending and in flight"
        assert all(item.object_id == oid for oid, item in self._in_flight.items())
        assert self._in_flight_bytes == sum(item.size for item in self._in_flight.values())
