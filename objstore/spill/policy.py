"""The spill policy, pure: which primaries leave memory, and in which fused files.

Nothing here does I/O, keeps time or knows asyncio.  The node's spill driver
tells :class:`SpillPolicy` what happened (a primary was sealed, read,
deleted; a write finished) and asks it what to do next; it does the writing
and freeing itself.  After Ray's ``LocalObjectManager``; its companions are
:class:`~objstore.spill.files.SpillFiles` (which file holds which copy) and
:class:`~objstore.spill.restore_queue.RestoreQueue` (restores, by file).

:class:`SpillPolicy`
    The primaries in memory, in LRU order, and which of them to spill now.
    Over ``floor(threshold * capacity)`` bytes of primaries it hands out a
    :class:`Batch` of the least recently used primaries, strictly in LRU order
    whatever their kind: those that already have a valid spill copy (restored
    ones) to free without writing, the others to write into one *fused* file,
    which is then filled up with more of them, least recently used first -- at
    least ``min_spilling_size`` bytes when that many exist (few large files,
    not many tiny ones), at most ``max_fused_object_count`` objects.  A hot
    object restored from a copy is thus not freed again before the colder
    ones (it would be spilled and restored over and over).

The driver's protocol for :class:`SpillPolicy` (each object's state is a
:class:`SpillState`; every change goes through :data:`TRANSITIONS`)::

      add(has_copy=False)                        add(has_copy=True)
              |                                          |
              v       WRITE: next_batch                  v       FREE: next_batch
          RESIDENT ---------------------> WRITING      COPIED ---------------------> FREEING
              ^                            |    |        ^  ^                            |
              +-------- WRITE_FAILED ------+    +--------+  +--------- CANCEL -----------+
                     written(ok=False)          WRITE_OK:            cancel(oid)
                                             written(ok=True)

    remove(oid) is accepted in every state: the object is deleted, or the
    driver freed its memory.

* ``add`` when a primary is sealed (``has_copy=False``) or restored from a
  spill file (``has_copy=True``: its copy is still valid); ``touch`` on a read;
  ``remove`` when it is deleted or its memory is freed.
* ``next_batch(extra)`` when memory runs short (``extra``: room a waiting
  create needs), after a seal, and after a batch finishes.  For a batch:

  - ``write``: write these objects to one file, then call
    ``written(batch_id, ok)`` exactly once.  It returns the objects of the
    batch still tracked (one removed during the write is skipped): on success
    they now have a copy -- record them with ``SpillFiles.add_file`` --
    and stay tracked until the driver calls ``remove`` for each one whose
    memory it frees.  A batch with an empty ``write`` needs no ``written``.
  - ``free_only``: these have a valid copy; free their memory (at once, or
    when the last client unpins them) and call ``remove``, or give up with
    ``cancel`` (the object becomes a candidate again, as the most recently
    used, so the next batch picks others first).  Until then their bytes
    count as leaving memory (``spilling_bytes``), so they are not asked for
    twice.

  After ``written(ok=True)`` the written objects count as primaries in memory
  again (``spilling_bytes`` dropped): remove the ones whose memory is freed
  before asking for the next batch, or they are handed out again as
  ``free_only``.
"""

from __future__ import annotations

import enum
import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from objstore.statemachine import StateMachine, TransitionError

if TYPE_CHECKING:
    from objstore.config import SpillConfig

__all__ = [
    "SpillState",
    "SpillEvent",
    "TRANSITIONS",
    "CANDIDATE_STATES",
    "InvalidSpillTransition",
    "spill_transition",
    "Batch",
    "SpillPolicy",
]


# ----------------------------------------------------------------------------- states


class SpillState(enum.Enum):
    """Where a primary in memory is with respect to spilling."""

    #: In memory, no spill copy: a candidate to write.
    RESIDENT = "resident"
    #: In memory with a valid spill copy: a candidate to free without writing.
    COPIED = "copied"
    #: In a write batch the driver has not finished (``written``).
    WRITING = "writing"
    #: Handed out as ``free_only``: the driver is to free it (``remove``) or ``cancel``.
    FREEING = "freeing"


class SpillEvent(enum.Enum):
    """Something that changes a tracked object's :class:`SpillState`."""

    #: ``next_batch`` put it in a batch's ``write``.
    WRITE = "write"
    #: ``next_batch`` put it in a batch's ``free_only``.
    FREE = "free"
    #: ``written(batch_id, ok=True)``: its copy is in a file now.
    WRITE_OK = "write_ok"
    #: ``written(batch_id, ok=False)``: the write failed; it is a candidate again.
    WRITE_FAILED = "write_failed"
    #: ``cancel(oid)``: the driver did not free it.
    CANCEL = "cancel"


_S = SpillState
_E = SpillEvent

#: The one table of legal transitions: ``(state, event) -> new state``.  ``touch``
#: changes no state and ``remove`` ends the tracking, in every state.
TRANSITIONS: dict[tuple[SpillState, SpillEvent], SpillState] = {
    (_S.RESIDENT, _E.WRITE): _S.WRITING,
    (_S.WRITING, _E.WRITE_OK): _S.COPIED,
    (_S.WRITING, _E.WRITE_FAILED): _S.RESIDENT,
    (_S.COPIED, _E.FREE): _S.FREEING,
    (_S.FREEING, _E.CANCEL): _S.COPIED,
}

#: States whose objects may be handed out by ``next_batch`` (in no batch now).
CANDIDATE_STATES: frozenset[SpillState] = frozenset({_S.RESIDENT, _S.COPIED})

del _S, _E


class InvalidSpillTransition(TransitionError, ValueError):
    """An event arrived that the object's current :class:`SpillState` does not accept."""

    what = "spill transition"


_MACHINE: StateMachine[SpillState, SpillEvent] = StateMachine(TRANSITIONS, InvalidSpillTransition)

#: ``spill_transition(state, event, object_id=None)``: the new state, or
#: :class:`InvalidSpillTransition`.
spill_transition = _MACHINE.transition


# ----------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class Batch:
    """Work handed out by :meth:`SpillPolicy.next_batch`.

    ``write``: objects to write, in LRU order, into one fused file (then call
    :meth:`SpillPolicy.written`; not needed when ``write`` is empty).
    ``free_only``: objects with a valid copy already, to free without writing
    (then :meth:`SpillPolicy.remove` or :meth:`SpillPolicy.cancel` each).
    The two are disjoint and neither repeats an object.
    """

    batch_id: int
    write: tuple[bytes, ...]
    free_only: tuple[bytes, ...]
    write_bytes: int
    free_bytes: int


@dataclass(slots=True)
class _Entry:
    """One tracked primary."""

    size: int
    state: SpillState
    # Recency: a larger stamp is more recently used.  Unique across the policy's life.
    stamp: int
    # The batch that handed it out while WRITING or FREEING; None in a candidate state.
    batch: int | None = None


class SpillPolicy:
    """Primaries in memory in LRU order, and which of them to spill or free now.

    See the module docstring for the driver's protocol.  ``add``, ``touch``,
    ``remove``, ``cancel`` and ``need`` cost O(log n) at most; ``next_batch``
    and ``written`` O(k log n) for k objects in the batch.
    """

    __slots__ = (
        "capacity",
        "threshold",
        "min_spilling_size",
        "max_fused_object_count",
        "limit",
        "_entries",
        "_bytes",
        "_count",
        "_heap",
        "_writing",
        "_stamp",
        "_last_batch_id",
    )

    def __init__(
        self,
        capacity: int,
        threshold: float,
        min_spilling_size: int,
        max_fused_object_count: int,
    ) -> None:
        """A policy for an arena of ``capacity`` bytes; settings as in ``SpillConfig``.

        Raises :class:`ValueError` for a negative capacity or ``min_spilling_size``,
        a threshold outside ``[0, 1]`` or ``max_fused_object_count < 1``.
        """
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if min_spilling_size < 0:
            raise ValueError(f"min_spilling_size must be >= 0, got {min_spilling_size}")
        if max_fused_object_count < 1:
            raise ValueError(f"max_fused_object_count must be >= 1, got {max_fused_object_count}")
        self.capacity = capacity
        self.threshold = threshold
        self.min_spilling_size = min_spilling_size
        self.max_fused_object_count = max_fused_object_count
        #: Primary bytes that may stay in memory: ``floor(threshold * capacity)``.
        self.limit = math.floor(threshold * capacity)
        # Every tracked primary (in memory), whatever its state.
        self._entries: dict[bytes, _Entry] = {}
        # Invariant: _bytes[s] / _count[s] == sum of sizes / number of the entries in state s.
        self._bytes: dict[SpillState, int] = dict.fromkeys(SpillState, 0)
        self._count: dict[SpillState, int] = dict.fromkeys(SpillState, 0)
        # Candidates in LRU order: a min-heap of (stamp, oid) per candidate state.  An
        # entry is current iff _entries[oid] is in that state with that stamp; every
        # object in a candidate state has exactly one current entry in its state's heap,
        # the rest are stale (dropped as they surface, or by compaction to <= 2n + 64).
        self._heap: dict[SpillState, list[tuple[int, bytes]]] = {s: [] for s in CANDIDATE_STATES}
        # Write batches handed out and not finished: batch id -> its objects still
        # tracked, in LRU order.  Invariant: oid in _writing[b] iff _entries[oid] is
        # WRITING with batch b.  A batch stays here, empty or not, until written().
        self._writing: dict[int, dict[bytes, None]] = {}
        self._stamp = 0
        self._last_batch_id = 0

    @classmethod
    def from_config(cls, capacity: int, config: SpillConfig) -> SpillPolicy:
        """A policy for an arena of ``capacity`` bytes with ``config``'s settings."""
        return cls(
            capacity,
            config.threshold,
            config.min_spilling_size,
            config.max_fused_object_count,
        )

    # -- bookkeeping
    def _get(self, oid: bytes) -> _Entry:
        entry = self._entries.get(oid)
        if entry is None:
            raise KeyError(f"object {oid.hex()} is not a tracked primary")
        return entry

    def _next_stamp(self) -> int:
        self._stamp += 1
        return self._stamp

    def _enter(self, oid: bytes, entry: _Entry) -> None:
        """Count ``entry`` in its state; a candidate also goes on its state's heap."""
        self._bytes[entry.state] += entry.size
        self._count[entry.state] += 1
        heap = self._heap.get(entry.state)
        if heap is not None:
            heapq.heappush(heap, (entry.stamp, oid))
            self._trim(entry.state)

    def _leave(self, entry: _Entry) -> None:
        """Stop counting ``entry`` in its state (its heap entry, if any, goes stale)."""
        self._bytes[entry.state] -= entry.size
        self._count[entry.state] -= 1
        if entry.state in CANDIDATE_STATES:
            self._trim(entry.state)

    def _current(self, state: SpillState, stamp: int, oid: bytes) -> bool:
        entry = self._entries.get(oid)
        return entry is not None and entry.state is state and entry.stamp == stamp

    def _trim(self, state: SpillState) -> None:
        """Keep a candidate heap within 2n + 64 entries (n: objects in that state)."""
        heap = self._heap[state]
        count = self._count[state]
        if count == 0:
            heap.clear()  # every entry left is stale
        elif len(heap) > 2 * count + 64:
            heap[:] = [(s, o) for s, o in heap if self._current(state, s, o)]
            heapq.heapify(heap)

    def _peek(self, state: SpillState) -> tuple[int, bytes] | None:
        """``(stamp, oid)`` of the least recently used object in candidate ``state``.

        It stays on top of its heap; the stale entries above it are dropped.
        """
        heap = self._heap[state]
        while heap:
            stamp, oid = heap[0]
            if self._current(state, stamp, oid):
                return stamp, oid
            heapq.heappop(heap)
        return None

    def _pop_into(self, state: SpillState, batch_id: int) -> bytes:
        """Hand out the object :meth:`_peek` just found on top of ``state``'s heap.

        Off its heap and into batch ``batch_id``: to write if RESIDENT, to free if
        COPIED.  Call only right after a ``_peek(state)`` that was not None.
        """
        _, oid = heapq.heappop(self._heap[state])
        event = SpillEvent.WRITE if state is SpillState.RESIDENT else SpillEvent.FREE
        self._move(oid, self._entries[oid], event, batch_id)
        return oid

    def _move(self, oid: bytes, entry: _Entry, event: SpillEvent, batch: int | None) -> None:
        new = spill_transition(entry.state, event, oid)
        self._leave(entry)
        entry.state = new
        entry.batch = batch
        self._enter(oid, entry)

    # -- events from the driver
    def add(self, oid: bytes, size: int, has_copy: bool = False) -> None:
        """A primary of ``size`` bytes is in memory (sealed, or restored), most recently used.

        ``has_copy``: a valid spill copy exists (a restored object), so it can be
        freed without writing.  Raises :class:`ValueError` if it is tracked already
        or ``size < 0``.
        """
        if size < 0:
            raise ValueError(f"object size must be >= 0, got {size}")
        if oid in self._entries:
            raise ValueError(f"object {oid.hex()} is tracked already")
        state = SpillState.COPIED if has_copy else SpillState.RESIDENT
        entry = self._entries[oid] = _Entry(size, state, self._next_stamp())
        self._enter(oid, entry)

    def touch(self, oid: bytes) -> None:
        """``oid`` was read: make it the most recently used.

        An object in a batch stays in it (its new recency counts when it comes
        back as a candidate).  Raises :class:`KeyError` if it is not tracked.
        """
        entry = self._get(oid)
        entry.stamp = self._next_stamp()
        heap = self._heap.get(entry.state)
        if heap is not None:
            heapq.heappush(heap, (entry.stamp, oid))  # the old entry goes stale
            self._trim(entry.state)

    def remove(self, oid: bytes) -> None:
        """``oid`` was deleted, or its memory freed: stop tracking it, in any state.

        One removed while in a write batch is left out of what
        :meth:`written` returns.  Raises :class:`KeyError` if it is not tracked.
        """
        entry = self._get(oid)
        del self._entries[oid]
        self._leave(entry)
        if entry.state is SpillState.WRITING:
            assert entry.batch is not None
            del self._writing[entry.batch][oid]

    def cancel(self, oid: bytes) -> None:
        """The driver will not free ``oid``, handed out as ``free_only``.

        It becomes a candidate again, as the most recently used.  Raises
        :class:`KeyError` if it is not tracked and :class:`InvalidSpillTransition`
        if it is not in a ``free_only``.
        """
        entry = self._get(oid)
        spill_transition(entry.state, SpillEvent.CANCEL, oid)  # raises before any change
        entry.stamp = self._next_stamp()
        self._move(oid, entry, SpillEvent.CANCEL, None)

    def written(self, batch_id: int, ok: bool) -> tuple[bytes, ...]:
        """The write of batch ``batch_id`` finished (``ok``) or failed.

        Returns the batch's objects still tracked, in the batch's order.  With
        ``ok`` they now have a spill copy and stay tracked until ``remove``;
        otherwise they are candidates to write again, at their place in the LRU
        order.  Either way their bytes leave ``spilling_bytes``.  Raises
        :class:`KeyError` for a batch with no write in flight.
        """
        members = self._writing.pop(batch_id, None)
        if members is None:
            raise KeyError(f"no write in flight for batch {batch_id}")
        event = SpillEvent.WRITE_OK if ok else SpillEvent.WRITE_FAILED
        for oid in members:
            self._move(oid, self._entries[oid], event, None)
        return tuple(members)

    # -- decisions
    def need(self, extra: int = 0) -> int:
        """Bytes that should leave memory now.

        ``max(0, primary_bytes - spilling_bytes - limit) + extra``, where
        ``extra`` is room a waiting create needs (>= 0, else :class:`ValueError`).
        """
        if extra < 0:
            raise ValueError(f"extra must be >= 0, got {extra}")
        return max(0, self.primary_bytes - self.spilling_bytes - self.limit) + extra

    def next_batch(self, extra: int = 0, force: bool = False) -> Batch | None:
        """The next objects to free or spill, or None if nothing should or can go now.

        Strictly least recently used first, whatever the kind: while the batch
        does not cover ``need(extra)`` (``free_bytes + write_bytes < need``), the
        least recently used candidate goes in -- into ``free_only`` if it has a
        copy (COPIED), into ``write`` if not (RESIDENT).  That walk stops early
        when the next one is RESIDENT and ``write`` holds
        ``max_fused_object_count`` objects already: the next batch goes on from
        there, in LRU order.  Then, if ``write`` is not empty, it is filled up
        (fusing) with more RESIDENT objects in LRU order, skipping COPIED ones,
        until it holds ``max_fused_object_count`` objects or
        ``max(left, min_spilling_size)`` bytes, where ``left = need -
        free_bytes`` is what ``write`` must cover (``write_bytes >= left`` iff
        the need is covered).

        If the RESIDENT candidates total less than ``min_spilling_size`` while
        another write is in flight, nothing is written unless ``force``: better
        to wait for that write than to write a small file.  The walk then skips
        RESIDENT objects and takes only COPIED ones, in LRU order (the batch
        holds only ``free_only``, or is None).
        """
        need = self.need(extra)
        if need == 0:
            return None
        batch_id = self._last_batch_id + 1
        resident_bytes = self._bytes[SpillState.RESIDENT]
        may_write = force or not self._writing or resident_bytes >= self.min_spilling_size
        free_only: list[bytes] = []
        free_bytes = 0
        write: list[bytes] = []
        write_bytes = 0
        while free_bytes + write_bytes < need:
            copied = self._peek(SpillState.COPIED)
            resident = self._peek(SpillState.RESIDENT) if may_write else None
            # Stamps are unique: the smaller one is the less recently used.
            if resident is not None and (copied is None or resident[0] < copied[0]):
                if len(write) == self.max_fused_object_count:
                    break  # the file is full: the next batch goes on in LRU order
                write.append(self._pop_into(SpillState.RESIDENT, batch_id))
                write_bytes += self._entries[write[-1]].size
            elif copied is not None:
                free_only.append(self._pop_into(SpillState.COPIED, batch_id))
                free_bytes += self._entries[free_only[-1]].size
            else:
                break  # no candidate left that may go now
        # Fusing.  left: the part of the need that free_only leaves to the write
        # (the need is covered iff write_bytes >= left; <= 0 if free_only covers it).
        # A non-empty write is filled up with the next RESIDENT ones in LRU order
        # (COPIED ones left where they are) to max(left, min_spilling_size) bytes.
        left = need - free_bytes
        target = max(left, self.min_spilling_size)
        while write and len(write) < self.max_fused_object_count and write_bytes < target:
            if self._peek(SpillState.RESIDENT) is None:
                break
            write.append(self._pop_into(SpillState.RESIDENT, batch_id))
            write_bytes += self._entries[write[-1]].size
        if not write and not free_only:
            return None
        self._last_batch_id = batch_id
        if write:
            self._writing[batch_id] = dict.fromkeys(write)
        return Batch(batch_id, tuple(write), tuple(free_only), write_bytes, free_bytes)

    # -- views
    @property
    def primary_bytes(self) -> int:
        """Bytes of the tracked primaries (all in memory, in a batch or not)."""
        return sum(self._bytes.values())

    @property
    def spilling_bytes(self) -> int:
        """Bytes of the objects in batches not finished (writing, or to free)."""
        return self._bytes[SpillState.WRITING] + self._bytes[SpillState.FREEING]

    @property
    def writes_in_flight(self) -> int:
        """Write batches handed out whose :meth:`written` has not come."""
        return len(self._writing)

    def bytes_in(self, state: SpillState) -> int:
        """Bytes of the tracked objects in ``state``."""
        return self._bytes[state]

    def state(self, oid: bytes) -> SpillState:
        """``oid``'s state; :class:`KeyError` if it is not tracked."""
        return self._get(oid).state

    def has_copy(self, oid: bytes) -> bool:
        """Whether ``oid`` has a valid spill copy; :class:`KeyError` if it is not tracked."""
        return self._get(oid).state in (SpillState.COPIED, SpillState.FREEING)

    def batch_of(self, oid: bytes) -> int | None:
        """The batch ``oid`` is in (writing or to free), else None; KeyError if untracked."""
        return self._get(oid).batch

    def order(self) -> list[bytes]:
        """Every tracked object, least recently used first (O(n log n); for tests)."""
        return [oid for oid, _ in sorted(self._entries.items(), key=lambda kv: kv[1].stamp)]

    def __contains__(self, oid: object) -> bool:
        """Whether ``oid`` is a tracked primary."""
        return oid in self._entries

    def __len__(self) -> int:
        """Number of tracked primaries."""
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"<SpillPolicy objects={len(self._entries)} primary={self.primary_bytes}"
            f" spilling={self.spilling_bytes} limit={self.limit}"
            f" writes_in_flight={len(self._writing)}>"
        )

    def check(self) -> None:
        """Assert the internal invariants (tests call it after every step)."""
        assert self.limit == math.floor(self.threshold * self.capacity)
        sizes = dict.fromkeys(SpillState, 0)
        counts = dict.fromkeys(SpillState, 0)
        stamps: set[int] = set()
        for oid, e in self._entries.items():
            assert e.size >= 0, (oid, e)
            sizes[e.state] += e.size
            counts[e.state] += 1
            assert 0 < e.stamp <= self._stamp and e.stamp not in stamps, (oid, e)
            stamps.add(e.stamp)
            if e.state in CANDIDATE_STATES:
                assert e.batch is None, (oid, e)
            else:
                assert e.batch is not None and 0 < e.batch <= self._last_batch_id, (oid, e)
            if e.state is SpillState.WRITING:
                assert e.batch in self._writing and oid in self._writing[e.batch], (oid, e)
        assert sizes == self._bytes, (sizes, self._bytes)
        assert counts == self._count, (counts, self._count)
        for batch_id, members in self._writing.items():
            assert 0 < batch_id <= self._last_batch_id
            for oid in members:
                e = self._entries[oid]
                assert e.state is SpillState.WRITING and e.batch == batch_id, (oid, e)
        assert set(self._heap) == CANDIDATE_STATES
        for state, heap in self._heap.items():
            current = [oid for stamp, oid in heap if self._current(state, stamp, oid)]
            assert len(current) == len(set(current)) == self._count[state], (state, current)
            assert len(heap) <= 2 * self._count[state] + 64, (state, len(heap))
            if not self._count[state]:
                assert not heap
            assert all(heap[(i - 1) // 2] <= heap[i] for i in range(1, len(heap)))
