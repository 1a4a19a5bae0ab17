"""``ObjectRef``, and the counting of refs in this process.

Every live ``ObjectRef`` counts: made by ``put``, by unpickling, by
``from_hex``, or found inside a value ``get`` returned.  The process keeps one
count per object (:data:`tracker`); only its transitions leave the process
(first ref made, last ref gone, a ref pickled), batched, once per turn of the
event loop, to the node of every connected client (see docs/lifecycle.md).

Refs may be made and dropped on any thread (a thread pool unpickling, the
garbage collector): making and dropping only append to a deque, and the
counting happens on the event loop, under a lock that nothing else takes.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from objstore.errors import ObjectStoreError
from objstore.ids import OBJECT_ID_SIZE, object_id_from_hex

__all__ = ["ObjectRef", "current_client", "tracker", "RefTracker", "collecting", "collect_while"]

T = TypeVar("T")

# The client of the enclosing `async with objstore.connect()` block, for `await ref`.
current_client: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "objstore_client", default=None
)

_ADD = 1
_DROP = -1
_PICKLE = 0
# Events kept while no client is connected before they are counted in place.
_BACKLOG = 65536


class RefSink(Protocol):
    """A connected client: it tells its node what changed."""

    def _refs_changed(
        self, held: list[bytes], dropped: list[bytes], pickled: list[bytes]
    ) -> None: ...

    def _refs_loop(self) -> Any: ...


class RefTracker:
    """The process's count of live refs per object (see the module docstring)."""

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}
        self._events: deque[tuple[bytes, int]] = deque()
        self._lock = threading.Lock()
        self._sinks: weakref.WeakSet[Any] = weakref.WeakSet()
        self._loop: Any = None
        self._scheduled = False
        self.record_sites = os.environ.get("OBJSTORE_RECORD_CALL_SITES", "") not in ("", "0")
        # Where each counted object's first live ref was made (with record_sites).
        self.sites: dict[bytes, str] = {}
        self._pending_sites: dict[bytes, str] = {}

    # ------------------------------------------------------------ any thread
    def note(self, oid: bytes, what: int) -> None:
        self._events.append((oid, what))
        if self._scheduled:
            return
        loop = self._loop
        if loop is None:
            if len(self._events) > _BACKLOG:
                self.count()
            return
        self._scheduled = True
        try:
            if threading.get_ident() == getattr(loop, "_thread_id", None):
                loop.call_soon(self.flush)
            else:
                loop.call_soon_threadsafe(self.flush)
        except RuntimeError:  # the loop is closed
            self._scheduled = False
            self._loop = None

    def site(self, oid: bytes) -> None:
        """Remember where a ref was made (:func:`call_site`)."""
        where = call_site()
        if where:
            self._pending_sites.setdefault(oid, where)

    def made(self, oid: bytes) -> None:
        """A put on the event loop made the first ref to a new object: counted at
        once, with no event (its connection holds the object already)."""
        with self._lock:
            self.counts[oid] = self.counts.get(oid, 0) + 1

    def urgent(self) -> None:
        """A ref is being pickled: on the event loop's thread, tell the node now,
        so that its grace starts before the pickled bytes can leave the process
        (the node reads them before it sees the connection close, even if the
        process dies right after)."""
        loop = self._loop
        if loop is not None and threading.get_ident() == getattr(loop, "_thread_id", None):
            self.flush()

    @property
    def pending(self) -> bool:
        """Events not counted yet."""
        return bool(self._events)

    # ------------------------------------------------------------ the loop
    def count(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """Apply the queued events: (ids held now that were made or dropped in this
        batch, ids no longer held, ids pickled).  An id made and dropped within
        one batch is reported dropped: a put's connection holds it already."""
        touched: dict[bytes, None] = {}
        pickled: list[bytes] = []
        counts = self.counts
        events = self._events
        with self._lock:
            while True:
                try:
                    oid, what = events.popleft()
                except IndexError:
                    break
                if what == _PICKLE:
                    pickled.append(oid)
                    continue
                n = counts.get(oid, 0) + what
                if n > 0:
                    counts[oid] = n
                else:
                    counts.pop(oid, None)
                touched[oid] = None
            held = [o for o in touched if o in counts]
            dropped = [o for o in touched if o not in counts]
            if self.record_sites:
                pend, self._pending_sites = self._pending_sites, {}
                for o in held:
                    if o in pend:
                        self.sites.setdefault(o, pend[o])
                for o in dropped:
                    self.sites.pop(o, None)
        return held, dropped, pickled

    def flush(self) -> None:
        """Count what happened and tell every connected client."""
        self._scheduled = False
        held, dropped, pickled = self.count()
        if not (held or dropped or pickled):
            return
        for sink in list(self._sinks):
            sink._refs_changed(held, dropped, pickled)

    def attach(self, sink: Any, loop: Any) -> list[bytes]:
        """A client connected (or reconnected): it hears of changes from now on;
        returns every id this process holds, for it to announce."""
        self._sinks.add(sink)
        self._loop = loop
        self.flush()
        return list(self.counts)

    def detach(self, sink: Any) -> list[Any]:
        """A client closed: the others announce what this process still holds
        (refs of objects put through the closed one were held by it alone).
        Returns the clients that announced it."""
        self._sinks.discard(sink)
        if not self._sinks:
            self.flush()
            self._loop = None
            return []
        self.flush()
        held = list(self.counts)
        if not held:
            return []
        others = list(self._sinks)
        for other in others:
            other._refs_changed(held, [], [])
        return others

    def _after_fork(self) -> None:
        # The parent's clients are not ours: their sockets are shared with it.
        self._sinks = weakref.WeakSet()
        self._loop = None
        self._scheduled = False
        self._lock = threading.Lock()


def call_site() -> str:
    """file:line of the innermost frame outside objstore (OBJSTORE_RECORD_CALL_SITES=1)."""
    f = sys._getframe(1)
    while f is not None and f.f_globals.get("__name__", "").startswith("objstore"):
        f = f.f_back  # type: ignore[assignment]
    return f"{f.f_code.co_filename}:{f.f_lineno}" if f is not None else ""


tracker = RefTracker()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=tracker._after_fork)

_collector = threading.local()


@contextlib.contextmanager
def collecting() -> Iterator[list[bytes]]:
    """Within it, refs pickled on this thread are collected (a value being put:
    they are contained in it) instead of starting a borrow grace."""
    found: list[bytes] = []
    prev = getattr(_collector, "ids", None)
    _collector.ids = found
    try:
        yield found
    finally:
        _collector.ids = prev


def collect_while(fn: Callable[[Any], T], value: Any) -> tuple[T, bytes]:
    """``fn(value)`` (a put's serialization), and the ids of the refs it pickled
    (contained in the value), concatenated.  Allocates nothing when there are
    none: the put path runs this for every value."""
    local = _collector
    buf: list[bytes] | None = getattr(local, "buf", None)
    if buf is None:
        buf = local.buf = []
    prev = getattr(local, "ids", None)
    if prev is buf:  # nested (a value whose pickling puts): a fresh list
        buf = []
    local.ids = buf
    try:
        out = fn(value)
    finally:
        local.ids = prev
    if not buf:
        return out, b""
    ids = b"".join(buf)
    buf.clear()
    return out, ids


class ObjectRef:
    """A reference to an object in the store: small, hashable, picklable.

    While any ``ObjectRef`` to an object is alive in some process (or its
    pickled form is on its way, see docs/lifecycle.md), the object lives.
    ``ref.hex()`` and ``ObjectRef.from_hex(s)`` round-trip it.  ``await ref``
    gets the value through the client of the enclosing ``async with
    objstore.connect()`` block.
    """

    __slots__ = ("_id", "__weakref__")

    def __init__(self, object_id: bytes) -> None:
        if not isinstance(object_id, bytes) or len(object_id) != OBJECT_ID_SIZE:
            raise ValueError("an ObjectRef wraps a 20-byte object id")
        self._id = object_id
        tracker.note(object_id, _ADD)
        if tracker.record_sites:
            tracker.site(object_id)

    @classmethod
    def _of_put(cls, object_id: bytes) -> ObjectRef:
        """The ref a put returns (counted by :meth:`RefTracker.made`)."""
        ref = object.__new__(cls)
        ref._id = object_id
        tracker.made(object_id)
        if tracker.record_sites:
            tracker.site(object_id)
            tracker.sites.setdefault(object_id, tracker._pending_sites.pop(object_id, ""))
        return ref

    def __del__(self) -> None:
        try:
            oid = self._id
        except AttributeError:  # __init__ refused it
            return
        try:
            tracker.note(oid, _DROP)
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown: nothing left to tell
            pass

    @property
    def binary(self) -> bytes:
        """The 20-byte id."""
        return self._id

    def hex(self) -> str:
        """The id as 40 hex characters."""
        return self._id.hex()

    @classmethod
    def from_hex(cls, text: str) -> ObjectRef:
        """Parse :meth:`hex` output; ``ValueError`` for anything else.  The new
        ref holds its object from now on, if the object still exists."""
        return cls(object_id_from_hex(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        found = getattr(_collector, "ids", None)
        if found is not None:
            found.append(self._id)
        else:
            tracker.note(self._id, _PICKLE)
            tracker.urgent()
        return (ObjectRef, (self._id,))

    def __copy__(self) -> ObjectRef:
        return ObjectRef(self._id)

    def __deepcopy__(self, memo: Any) -> ObjectRef:
        return ObjectRef(self._id)

    def __await__(self) -> Any:
        client = current_client.get()
        if client is None:
            raise ObjectStoreError(
                "`await ref` needs an enclosing `async with objstore.connect()`; "
                "use `await client.get(ref)` otherwise"
            )
        return client.get(self).__await__()
