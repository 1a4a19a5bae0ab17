"""The async client: ``objstore.connect()``, put, get, wait, delete.

A client talks to its node over a Unix socket (length-prefixed protobuf
frames, pipelined by request id) and maps the node's arena itself, so reads
are zero-copy:

* ``put`` of a small value sends it inside one request; a larger one reserves
  room (one round trip), is copied straight into shared memory by threads
  (off the event loop), then sealed.
* ``get`` of an object this client put, or still holds a view of, needs no
  round trip; others take one round trip per call, however many refs.
* A zero-copy result (a numpy array, a ``memoryview``) keeps its object pinned
  on the node until the last Python reference to it is gone: a
  ``weakref.finalize`` on the view's base tells the node, in batches.

One module of about 800 lines, for a reason: it is the one public class users
hold, and its put and get paths (request ids, the pipelined connection, the
cache of owned mappings, the release batching) share state on the hot path
that splitting would turn into attribute hops across modules.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import inspect
import mmap
import os
import random
import socket
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, cast

import numpy as np
import structlog

from objstore.backoff import Backoff
from objstore.config import default_socket_path
from objstore.errors import (
    GetTimeoutError,
    NodeUnavailableError,
    ObjectReconstructionFailedError,
    ObjectStoreError,
    ProtocolError,
)
from objstore.ids import new_object_id
from objstore.protocol import (
    HEADER,
    FrameDecoder,
    encode_frame,
    error_to_exception,
    pb,
)
from objstore.protocol.handshake import handshake
from objstore.ref import ObjectRef, call_site, collect_while, current_client, tracker
from objstore.serialization import Serialized, deserialize, has_views, serialize
from objstore.shm import Mark, copy_all, copy_ranges, map_segment, split, warm

__all__ = ["Client", "ObjectRef", "connect"]

# Results smaller than this are copied out of shared memory rather than pinned:
# a copy of a few KiB costs less than the bookkeeping of a pinned view.
_COPY_BELOW = 16 * 1024
_CONNECT_TIMEOUT = 10.0
# Reconnect backoff after the connection to the node is lost.
_RECONNECT_FIRST_S = 0.05
_RECONNECT_MAX_S = 2.0

log = structlog.get_logger("objstore.client")


# Requests sent again to the next session when the connection dies under them.
_RETRIED = frozenset({"get", "wait"})


def _own_timeout(req: pb.Request, kind: str | None, bounded: bool) -> float | None:
    """A get's or wait's own timeout in seconds (None: none, or another request)."""
    if bounded or kind not in _RETRIED:
        return None
    ms = req.get.timeout_ms if kind == "get" else req.wait.timeout_ms
    return ms / 1000.0 if ms >= 0 else None


def _shorten(req: pb.Request, kind: str | None, timeout: float, elapsed: float) -> None:
    """A get or wait sent after waiting for the connection: what is left of its timeout."""
    body = req.get if kind == "get" else req.wait
    body.timeout_ms = max(0, int((timeout - elapsed) * 1000))


class _Cached:
    """What this client knows of an object it maps."""

    __slots__ = (
        "segment",
        "offset",
        "size",
        "meta",
        "views",
        "store_pins",
        "owned",
        "valid",
        "released",
    )

    def __init__(
        self, segment: int, offset: int, size: int, meta: bytes, owned: bool, store_pins: int
    ) -> None:
        self.segment = segment
        self.offset = offset
        self.size = size
        self.meta = meta
        # Live zero-copy holders over this object in this process.
        self.views = 0
        # Pins the node holds for this client (not counting ownership).
        self.store_pins = store_pins
        self.owned = owned
        # False once the node said the object was deleted (or spilled).
        self.valid = True
        # Its pins were given back (it left the cache).
        self.released = False


class _Protocol(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        client = self.client
        try:
            for frame in client._decoder.feed(data):
                client._on_reply(pb.Reply.FromString(frame))
        except Exception as exc:  # noqa: BLE001 - garbage from the node: nothing more can be trusted
            client._fail(ProtocolError(f"bad frame from the node: {exc}"))
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._connection_lost(self, exc)


class _TimedOut(Exception):
    """A bounded request got no reply within the client's ``request_timeout``."""


class _Lost(NodeUnavailableError):
    """The connection died under a request (its outcome is unknown); gets and waits retry."""


def reconnect_delays(rng: random.Random | None = None) -> Backoff:
    """The reconnect schedule: 50 ms doubling to 2 s, each delay with jitter (+-50%)."""
    return Backoff(_RECONNECT_FIRST_S, _RECONNECT_MAX_S, rng=rng)


class Client:
    """A connection to the local node.  Make one with :func:`connect`."""

    def __init__(
        self,
        socket_path: str,
        warm: bool = True,
        request_timeout: float | None = 60.0,
        reconnect: bool = True,
    ) -> None:
        if request_timeout is not None and request_timeout <= 0:
            raise ValueError(f"request_timeout must be None or > 0, got {request_timeout}")
        self.socket_path = socket_path
        self._warm = warm
        self._request_timeout = request_timeout
        # Bytes from the arena's start whose page tables this process has filled.
        self._warm_mark = Mark()
        self.node_id = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(1 << 30)
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[pb.Reply]] = {}
        # request id -> what to do with the reply of a request whose caller was cancelled.
        self._orphans: dict[int, Callable[[pb.Reply], None]] = {}
        # Replies that came for a request whose caller gave up in the same loop
        # turn (cancelled or timed out, not resumed yet): it undoes them.
        self._late: dict[int, pb.Reply] = {}
        # (deadline, request id) of bounded requests in the order sent: one timer
        # for all of them (asyncio.timeout per request costs ~4 us of a put's ~60).
        self._deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._segments: dict[int, mmap.mmap] = {}
        self._cache: dict[bytes, _Cached] = {}
        self._dead: list[tuple[bytes, _Cached]] = []
        self._dead_lock = threading.Lock()
        self._flush_scheduled = False
        self._release_batch: list[bytes] = []
        self._closed_exc: BaseException | None = None
        # Zero-copy holders alive in this process (all objects).
        self._live_views = 0
        self._executor: ThreadPoolExecutor | None = None
        self._inline_max = 64 * 1024
        self._parallel_min = 4 * 1024 * 1024
        self._threads = 1
        self._max_frame = 64 * 1024 * 1024
        self._token: contextvars.Token[Client | None] | None = None
        self._map_lock: asyncio.Lock | None = None
        # Ids the node counts this connection as holding (docs/lifecycle.md).
        self._held: set[bytes] = set()
        # put(recreate=fn): the callables, recreations running, and failures.
        self._recreators: dict[bytes, Callable[[], Any]] = {}
        # The names of named objects among them: a recreation registers it again.
        self._recreate_names: dict[bytes, str] = {}
        self._recreating: dict[bytes, asyncio.Future[None]] = {}
        self._recreate_failed: dict[bytes, ObjectReconstructionFailedError] = {}
        self._recreate_tasks: set[asyncio.Task[None]] = set()
        self._max_recreations = 3
        self._session_node = b""
        self._reconnect = reconnect
        # The session's protocol; a loss reported by an older one is ignored.
        self._protocol: _Protocol | None = None
        # Counts sessions: a mapping or reply of an earlier one is never used in a later one.
        self._session = 0
        # While the connection is lost (reconnecting): when it was lost, the future
        # calls wait on (its result: back; its exception: closed), the reconnect task.
        self._lost_at: float | None = None
        self._back: asyncio.Future[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        # Ids this client had in earlier sessions -> the node id of that session: a
        # get of one carries it (Get.earlier_ids), so the node says ObjectLostError
        # at once when no copy is left instead of waiting for it.
        self._earlier: dict[bytes, bytes] = {}

    # ------------------------------------------------------------------ connection
    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._map_lock = asyncio.Lock()
        sock, reply, mm = await self._open_session()
        await self._start_session(sock, reply, mm)

    async def _open_session(self) -> tuple[socket.socket, pb.HelloReply, mmap.mmap]:
        """Handshake and map the arena (and start the copy threads, warm the pages)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                sock, reply, fd = await handshake(loop, self.socket_path, 0)
        except TimeoutError as exc:
            raise NodeUnavailableError(
                f"the node at {self.socket_path} did not answer within {_CONNECT_TIMEOUT}s"
            ) from exc
        try:
            self._inline_max = reply.inline_max_bytes
            self._parallel_min = reply.parallel_copy_min_bytes
            self._threads = max(1, reply.copy_threads)
            self._max_frame = reply.max_frame_bytes or self._max_frame
            self._max_recreations = reply.max_recreations or self._max_recreations
            mm0 = map_segment(fd, reply.segment_size)
            # Start the copy threads now: creating a thread maps its stack, which
            # would wait behind a running populate (it holds the mmap lock).
            if self._executor is None:
                pool = self._pool()
                barrier = threading.Barrier(self._threads)
                started = [pool.submit(barrier.wait, 5.0) for _ in range(self._threads)]
                await asyncio.gather(*(asyncio.wrap_future(f) for f in started))
            pool = self._pool()
            mark = Mark()
            if self._warm and reply.warm_bytes:
                # What the node faulted in before it was ready: now, split over
                # the copy threads; the rest of its prefault in the background.
                now = reply.warm_now_bytes
                if now:
                    share = -(-now // self._threads)
                    share += -share % (1 << 20)
                    warming = [
                        pool.submit(warm, mm0, min(now, s + share), Mark(), s)
                        for s in range(0, now, share)
                    ]
                    await asyncio.gather(*(asyncio.wrap_future(f) for f in warming))
                    mark.upto = now
                threading.Thread(
                    target=warm,
                    args=(mm0, reply.warm_bytes, mark, now),
                    name="objstore-warm",
                    daemon=True,
                ).start()
            self._warm_mark = mark
        except BaseException:
            sock.close()
            if self._executor is not None and self._session == 0:
                self._executor.shutdown(wait=False)
                self._executor = None
            raise
        finally:
            os.close(fd)
        return sock, reply, mm0

    async def _start_session(
        self, sock: socket.socket, reply: pb.HelloReply, mm0: mmap.mmap
    ) -> None:
        """Make a handshaken socket this client's session, then let waiting calls go."""
        loop = asyncio.get_running_loop()
        self._drop_session_state()
        self._session += 1
        self._segments = {0: mm0}
        self.node_id = reply.node_id
        self._decoder = FrameDecoder(1 << 30)
        protocol = _Protocol(self)
        self._protocol = protocol
        try:
            transport, _ = await loop.create_unix_connection(lambda: protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._transport = transport
        self._session_opened()
        back, self._back = self._back, None
        self._lost_at = None
        if back is not None and not back.done():
            back.set_result(None)

    def _session_opened(self) -> None:
        """A session with the node began (first connect or reconnect): tell the
        node what this process holds."""
        self._held.clear()
        ids = tracker.attach(self, self._loop)
        if ids:
            self._refs_changed(ids, [], [])
        restarted = bool(self._session_node) and self._session_node != self.node_id
        self._session_node = self.node_id
        if restarted:
            # The node's objects went with it: make again what this process
            # can and still refers to.
            counts = tracker.counts
            for oid in list(self._recreators):
                if oid in counts:
                    self._start_recreate(oid)

    def _refs_loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def _refs_changed(self, held: list[bytes], dropped: list[bytes], pickled: list[bytes]) -> None:
        """This process's refs changed (from :data:`objstore.ref.tracker`): tell the node."""
        if self._transport is None:
            return  # between sessions: the next one announces what is held then
        mine = self._held
        add = [o for o in held if o not in mine]
        mine.update(add)
        gone = [o for o in dropped if o in mine]
        cache = self._cache
        for oid in gone:
            mine.discard(oid)
            self._recreators.pop(oid, None)
            self._recreate_names.pop(oid, None)
            self._recreate_failed.pop(oid, None)
            entry = cache.get(oid)
            if entry is not None and entry.owned and entry.views <= 0:
                # Nothing here can read it any more: give the mapping back with
                # the drop, so that the node frees the memory at once.
                entry.valid = False
                self._maybe_release(oid, entry)
        if not (add or gone or pickled):
            return
        self._flush_releases()
        req = pb.Request()
        body = req.refs
        if add:
            body.added_ids = b"".join(add)
            if tracker.record_sites:
                sites = tracker.sites
                body.added_sites.extend(sites.get(o, "") for o in add)
        if gone:
            body.dropped_ids = b"".join(gone)
        if pickled:
            body.pickled_ids = b"".join(pickled)
        self._send_oneway(req)

    def _drop_session_state(self) -> None:
        """Forget what belonged to the session that ended: cached locations, pins, orphans.

        Views handed out stay valid (their mmaps stay alive with them); their
        pins died with the old connection, so they are never released to a
        later session's node.  The ids are remembered (``_earlier``).
        """
        old = self.node_id
        for oid, entry in self._cache.items():
            entry.valid = False
            entry.released = True
            self._earlier[oid] = old
        for oid in self._held:  # refs alive in this process, read here or not
            self._earlier.setdefault(oid, old)
        self._cache.clear()
        self._release_batch.clear()
        self._orphans.clear()

    def _connection_lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        """The session's connection closed: reconnect, or fail for good (``reconnect=False``)."""
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._transport = None
        why = f"connection to the node at {self.socket_path} was lost" + (f": {exc}" if exc else "")
        if not self._reconnect or self._closed_exc is not None or self._loop is None:
            self._fail(NodeUnavailableError(why))
            return
        loop = self._loop
        self._lost_at = loop.time()
        self._back = loop.create_future()
        log.warning(
            "connection to the node lost; reconnecting",
            socket=self.socket_path,
            node_id=self.node_id.hex(),
            error=str(exc) if exc else None,
        )
        lost = _Lost(why)
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(lost)
        # Nothing of the old session is served any more (gets wait for the next one).
        self._drop_session_state()
        self._reconnector = loop.create_task(self._reconnect_loop(), name="objstore-reconnect")

    async def _reconnect_loop(
        self, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
    ) -> None:
        """Try the socket again with backoff until a node serves it (or the client closes)."""
        delays = reconnect_delays()
        assert self._loop is not None
        old = self.node_id
        lost_at = self._lost_at if self._lost_at is not None else self._loop.time()
        while self._closed_exc is None:
            await sleep(delays.failed())
            try:
                sock, reply, mm = await self._open_session()
            except (ObjectStoreError, OSError) as exc:
                log.debug("reconnect failed", socket=self.socket_path, error=str(exc))
                continue
            if self._closed_exc is not None:
                sock.close()
                return
            try:
                await self._start_session(sock, reply, mm)
            except (ObjectStoreError, OSError) as exc:
                log.debug("reconnect failed", socket=self.socket_path, error=str(exc))
                continue
            gap = self._loop.time() - lost_at
            log.info(
                "connection to the node is back",
                socket=self.socket_path,
                gap_s=round(gap, 3),
                node_id=self.node_id.hex(),
                restarted=self.node_id != old,
                attempts=delays.failures,
            )
            return

    async def close(self) -> None:
        """Close the client.  Views already handed out stay valid.

        No new requests are accepted.  While zero-copy views from this client
        are alive, the connection stays open so the node keeps their memory
        (and this client's unnamed objects); it closes when the last view dies.
        """
        self._fail(NodeUnavailableError("the client was closed"))
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()
        told = tracker.detach(self)
        reconnector, self._reconnector = self._reconnector, None
        if reconnector is not None and reconnector is not asyncio.current_task():
            reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconnector
        if told and self._transport is not None:
            await self._announced_by(told)
        self._flush_releases()
        if self._live_views <= 0:
            self._close_transport()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def _announced_by(self, others: list[Any]) -> None:
        """Wait (1 s at most) until the node has read what the other clients on
        this node just announced for the process: each answers one request, and
        a node serves a connection's messages in order.  Closed first, this
        connection could be read before them, and the node would free what only
        it held although the process still refers to it."""
        same = [
            o
            for o in others
            if isinstance(o, Client)
            and o.socket_path == self.socket_path
            and o._loop is self._loop
            and o._transport is not None
            and o._closed_exc is None
        ]
        if not same:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.gather(*(o.stats() for o in same), return_exceptions=True)

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        # Mappings are not closed: live views may still point into them, and
        # they go away with the last of those views.
        self._segments.clear()

    async def __aenter__(self) -> Self:
        self._token = current_client.set(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._token is not None:
            try:
                current_client.reset(self._token)
            except ValueError:  # exited in another context
                current_client.set(None)
            self._token = None
        await self.close()

    def _fail(self, exc: BaseException) -> None:
        """Fail for good: every call in flight, calls waiting for a reconnect, and later ones."""
        if self._closed_exc is None:
            self._closed_exc = exc
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)
        back, self._back = self._back, None
        if back is not None and not back.done():
            back.set_exception(exc)
            back.exception()  # retrieved: waiters may have gone

    def _check_open(self) -> None:
        """Raise unless calls may go on: connected, or reconnecting (they wait in ``_call``)."""
        if self._closed_exc is not None:
            raise self._closed_exc
        if self._transport is None and self._back is None:
            raise NodeUnavailableError("the client is not connected")

    async def _wait_back(self, deadline: float | None, what: str) -> None:
        """Wait for the connection to come back, until ``deadline`` (loop time)."""
        assert self._loop is not None
        while (back := self._back) is not None:
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(back)
            except TimeoutError:
                lost_at = self._lost_at if self._lost_at is not None else self._loop.time()
                raise NodeUnavailableError(
                    f"the node at {self.socket_path} has been gone for "
                    f"{self._loop.time() - lost_at:.2f}s (connection lost; reconnecting): "
                    f"gave up on a {what} request"
                ) from None
        self._check_open()

    # ------------------------------------------------------------------ requests
    def _send_request(self, req: pb.Request) -> asyncio.Future[pb.Reply]:
        self._check_open()
        transport = self._transport
        if transport is None:
            raise NodeUnavailableError(f"the node at {self.socket_path} is not connected")
        assert self._loop is not None
        req_id = self._next_id
        self._next_id = req_id + 1
        req.id = req_id
        fut: asyncio.Future[pb.Reply] = self._loop.create_future()
        self._pending[req_id] = fut
        if tracker.pending:
            tracker.flush()  # refs made or dropped before this request go first
        if self._release_batch:
            self._flush_releases()
        data = req.SerializeToString()
        if len(data) > self._max_frame:
            del self._pending[req_id]
            raise ObjectStoreError(
                f"request of {len(data)} bytes is over the node's frame limit of {self._max_frame}"
            )
        transport.write(HEADER.pack(len(data)) + data)
        return fut

    async def _call(
        self,
        req: pb.Request,
        on_orphan: Callable[[pb.Reply], None] | None = None,
        bounded: bool = True,
    ) -> pb.Reply:
        """Send a request and wait for its reply.

        If the caller is cancelled first, ``on_orphan`` gets the reply when it
        comes (to undo what the node did: release pins, abort a create).
        ``bounded`` requests fail with :class:`NodeUnavailableError` when the
        node does not answer within the client's ``request_timeout``; gets and
        waits bound themselves by their own ``timeout``.

        While the connection is lost, a call waits for it within the same
        bound (a get or wait without a timeout: ``request_timeout``).  A request
        in flight when it is lost fails at once (its outcome is unknown), but a
        get or wait is sent again to the next session, with what is left of its
        timeout.
        """
        assert self._loop is not None
        loop = self._loop
        start = loop.time()
        if self._back is None and not self._earlier:
            # Connected, and no ids of an earlier session to flag: the common case.
            try:
                return await self._call_once(req, on_orphan, bounded)
            except _Lost as lost:
                kind = req.WhichOneof("body")
                if kind not in _RETRIED:
                    raise NodeUnavailableError(
                        f"{lost} while a {kind} request was in flight (its outcome is unknown)"
                    ) from None
        return await self._call_retrying(req, on_orphan, bounded, start)

    async def _call_retrying(
        self,
        req: pb.Request,
        on_orphan: Callable[[pb.Reply], None] | None,
        bounded: bool,
        start: float,
    ) -> pb.Reply:
        """:meth:`_call` while the connection is lost or was (``start``: the call's)."""
        assert self._loop is not None
        loop = self._loop
        kind = req.WhichOneof("body")
        own = _own_timeout(req, kind, bounded)
        while True:
            if self._back is not None:
                # One deadline for the call; a get or wait without a timeout may
                # wait request_timeout for the connection, from now.
                if own is not None:
                    deadline: float | None = start + own
                elif self._request_timeout is None:
                    deadline = None
                else:
                    now = loop.time()
                    deadline = (now if kind in _RETRIED else start) + self._request_timeout
                await self._wait_back(deadline, kind or "")
            if own is not None:
                _shorten(req, kind, own, loop.time() - start)
            self._mark_earlier(req, kind)
            try:
                return await self._call_once(req, on_orphan, bounded)
            except _Lost as lost:
                if kind not in _RETRIED:
                    raise NodeUnavailableError(
                        f"{lost} while a {kind} request was in flight (its outcome is unknown)"
                    ) from None

    def _mark_earlier(self, req: pb.Request, kind: str | None) -> None:
        """Flag a get's ids that this client had in an earlier session (see ``_earlier``)."""
        if kind != "get" or not self._earlier:
            return
        body = req.get
        del body.earlier_ids[:]
        del body.earlier_node_ids[:]
        earlier = self._earlier
        nodes: dict[bytes, None] = {}
        for oid in body.object_ids:
            node = earlier.get(oid)
            if node is not None:
                body.earlier_ids.append(oid)
                nodes[node] = None
        body.earlier_node_ids.extend(n for n in nodes if n)

    async def _call_once(
        self,
        req: pb.Request,
        on_orphan: Callable[[pb.Reply], None] | None,
        bounded: bool,
    ) -> pb.Reply:
        fut = self._send_request(req)
        rid = req.id
        if bounded and self._request_timeout is not None:
            self._add_deadline(rid, self._request_timeout)
        try:
            reply = await fut
        except (asyncio.CancelledError, _TimedOut) as exc:
            # Cancelled (an outer timeout arrives here as a cancellation), or our
            # own timeout: the reply may still come; undo what it did then.
            if self._pending.pop(rid, None) is not None:
                if on_orphan is not None:
                    self._orphans[rid] = on_orphan
            else:
                late = self._late.pop(rid, None)
                if late is not None and on_orphan is not None and not late.HasField("error"):
                    on_orphan(late)
                    self._schedule_flush()
            if isinstance(exc, _TimedOut):
                raise NodeUnavailableError(
                    f"the node at {self.socket_path} did not answer a "
                    f"{req.WhichOneof('body')} request within {self._request_timeout}s"
                ) from None
            raise
        deadlines = self._deadlines
        if deadlines:
            pending = self._pending
            while deadlines and deadlines[0][1] not in pending:
                deadlines.popleft()  # answered (in order, mostly): nothing to time out
        if reply.HasField("error"):
            raise error_to_exception(reply.error)
        return reply

    def _add_deadline(self, rid: int, timeout: float) -> None:
        assert self._loop is not None
        deadline = self._loop.time() + timeout
        self._deadlines.append((deadline, rid))
        if self._deadline_timer is None:
            self._deadline_timer = self._loop.call_at(deadline, self._expire_requests)

    def _expire_requests(self) -> None:
        """The earliest bounded request's deadline came: fail those past theirs
        (:class:`_TimedOut`, turned into NodeUnavailableError by their callers)."""
        self._deadline_timer = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        deadlines, pending = self._deadlines, self._pending
        while deadlines:
            deadline, rid = deadlines[0]
            fut = pending.get(rid)
            if fut is None or fut.done():
                deadlines.popleft()
            elif deadline <= now:
                deadlines.popleft()
                # Left in _pending: a reply that comes before the caller resumes
                # goes to _late, and the caller undoes it.
                fut.set_exception(_TimedOut())
            else:
                self._deadline_timer = loop.call_at(deadline, self._expire_requests)
                return

    def _on_reply(self, reply: pb.Reply) -> None:
        if reply.id == 0:
            if reply.HasField("invalidate"):
                self._on_invalidate(reply.invalidate.object_ids)
            elif reply.HasField("recreate"):
                for oid in reply.recreate.object_ids:
                    self._start_recreate(oid)
            return
        fut = self._pending.pop(reply.id, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(reply)
            else:
                self._late[reply.id] = reply  # its caller resumes next and undoes it
            return
        orphan = self._orphans.pop(reply.id, None)
        if orphan is not None and not reply.HasField("error"):
            orphan(reply)
            self._schedule_flush()

    # ------------------------------------------------------------------ mappings
    async def _segment(self, segment: int) -> mmap.mmap:
        mm = self._segments.get(segment)
        if mm is not None:
            return mm
        assert self._map_lock is not None and self._loop is not None
        # A location from this session is mapped from this session's node only.
        session, node_id = self._session, self.node_id
        async with self._map_lock:
            mm = self._segments.get(segment)
            if mm is not None and self._session == session:
                return mm
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                sock, reply, fd = await handshake(self._loop, self.socket_path, segment)
            sock.close()
            try:
                if self._session != session or reply.node_id != node_id:
                    raise NodeUnavailableError(
                        f"the connection to the node at {self.socket_path} was lost "
                        f"while mapping segment {segment}"
                    )
                mm = map_segment(fd, reply.segment_size)
            finally:
                os.close(fd)
            self._segments[segment] = mm
            return mm

    # ------------------------------------------------------------------ views and pins
    def _make_holder(self, oid: bytes, entry: _Cached) -> np.ndarray:
        mm = self._segments[entry.segment]
        holder = np.frombuffer(mm, np.uint8, count=entry.size, offset=entry.offset)
        holder.flags.writeable = False
        entry.views += 1
        self._live_views += 1
        # The entry itself, not the id: a spilled object's entry may be replaced
        # by a fresh one (new location) while views of the old one live.
        weakref.finalize(holder, self._view_dead, oid, entry)
        return holder

    def _view_dead(self, oid: bytes, entry: _Cached) -> None:
        # May run in any thread, at any point (garbage collection): only queue.
        with self._dead_lock:
            self._dead.append((oid, entry))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if threading.get_ident() == getattr(loop, "_thread_id", None):
                loop.call_soon(self._process_dead)
            else:
                loop.call_soon_threadsafe(self._process_dead)
        except RuntimeError:  # loop closed meanwhile
            pass

    def _process_dead(self) -> None:
        with self._dead_lock:
            dead, self._dead = self._dead, []
            self._flush_scheduled = False
        for oid, entry in dead:
            self._live_views -= 1
            entry.views -= 1
            if entry.views <= 0:
                self._maybe_release(oid, entry)
        self._flush_releases()
        if self._live_views <= 0 and self._closed_exc is not None:
            self._close_transport()

    def _maybe_release(self, oid: bytes, entry: _Cached) -> None:
        """Give pins back once no view is left (owned objects stay until deleted)."""
        if entry.views > 0:
            return
        if entry.owned and entry.valid:  # owned objects stay mapped until invalidated
            return
        if self._cache.get(oid) is entry:
            del self._cache[oid]
        elif entry.released:
            return
        entry.released = True
        n = entry.store_pins + (1 if entry.owned else 0)
        if n:
            self._release_batch.extend([oid] * n)
        if entry.segment != 0:
            mm = self._segments.pop(entry.segment, None)
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    pass

    def _schedule_flush(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon(self._flush_releases)

    def _send_oneway(self, req: pb.Request) -> None:
        """Send a request that gets no reply (id 0), if the connection is still up."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            req.id = 0
            transport.write(encode_frame(req.SerializeToString()))

    def _flush_releases(self) -> None:
        if not self._release_batch:
            return
        batch, self._release_batch = self._release_batch, []
        req = pb.Request()
        req.release.object_ids.extend(batch)
        self._send_oneway(req)

    def _on_invalidate(self, ids: Iterable[bytes]) -> None:
        for oid in ids:
            entry = self._cache.get(oid)
            if entry is None or not entry.valid:
                continue
            entry.valid = False
            self._maybe_release(oid, entry)
        self._flush_releases()

    def _value(self, oid: bytes, entry: _Cached) -> Any:
        mm = self._segments[entry.segment]
        off, size = entry.offset, entry.size
        if size < _COPY_BELOW:
            return deserialize(entry.meta, mm[off : off + size])  # one copy, no pin
        view = memoryview(mm)[off : off + size]
        try:
            if not has_views(entry.meta, view):
                return deserialize(entry.meta, view)
            return deserialize(entry.meta, view, lambda: self._make_holder(oid, entry))
        finally:
            view.release()

    # ------------------------------------------------------------------ put
    async def put(
        self,
        value: Any,
        name: str | None = None,
        *,
        recreate: Callable[[], Any] | None = None,
        replicas: int = 1,
    ) -> ObjectRef:
        """Store a value; returns its :class:`ObjectRef`.

        ``name`` makes the object findable by name and keeps it alive until it
        is deleted; a taken name raises :class:`~objstore.errors.ObjectExistsError`.
        An unnamed object lives while a ref to it is alive anywhere (see
        docs/lifecycle.md).  ``recreate``: a callable (sync or async, no
        arguments) that returns the value again; when every copy of the object
        is lost while this client is alive, it is run and the result stored
        under the same id (at most ``lifecycle.max_recreations`` attempts).
        ``replicas``: keep copies on this many distinct live nodes of the
        cluster (chosen by free memory, never evicted while the object lives,
        made again elsewhere when a node holding one dies); the put returns
        once they are all sealed, or raises
        :class:`~objstore.errors.NodeUnavailableError` (the object is deleted
        then) when the cluster cannot make them within ``request_timeout``
        (and ``lifecycle.replica_timeout_s``).
        """
        self._check_open()
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas is an int >= 1, got {replicas!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"a name is a non-empty str, got {name!r}")
        if recreate is not None and not callable(recreate):
            raise TypeError(f"recreate must be a callable, got {type(recreate).__name__}")
        oid = new_object_id()
        await self._store(oid, value, name, recreate is not None, False)
        if replicas > 1:
            await self._replicate(oid, replicas)
        self._held.add(oid)  # the node counts the put's connection as holding it
        if recreate is not None:
            self._recreators[oid] = recreate
            if name is not None:
                self._recreate_names[oid] = name
        return ObjectRef._of_put(oid)

    async def _store(
        self, oid: bytes, value: Any, name: str | None, recreatable: bool, recreated: bool
    ) -> None:
        ser, contained = collect_while(serialize, value)
        site = call_site() if tracker.record_sites else ""
        if ser.size <= self._inline_max:
            req = pb.Request()
            body = req.put_inline
            body.object_id = oid
            body.data = ser.to_bytes()
            _describe(body, ser.meta, name, contained, site, recreatable, recreated)
            reply = await self._call(req, lambda _r: self._delete_orphan(oid))
            self._cache[oid] = _Cached(
                reply.put.segment, reply.put.offset, ser.size, ser.meta, True, 0
            )
            return
        req = pb.Request()
        body2 = req.create
        body2.object_id = oid
        body2.data_size = ser.size
        _describe(body2, ser.meta, name, contained, site, recreatable, recreated)
        reply = await self._call(req, lambda _r: self._abort(oid))
        segment, offset = reply.put.segment, reply.put.offset
        try:
            mm = await self._segment(segment)
            await self._write(mm, offset, ser)
            seal = pb.Request()
            seal.seal.object_id = oid
            await self._call(seal)
        except BaseException:
            self._abort(oid)
            raise
        self._cache[oid] = _Cached(segment, offset, ser.size, ser.meta, True, 0)

    async def _replicate(self, oid: bytes, replicas: int) -> None:
        """Wait until ``replicas`` nodes keep the object; delete it if they cannot."""
        req = pb.Request()
        body = req.replicate
        body.object_id = oid
        body.replicas = replicas
        if self._request_timeout is not None:
            # The node gives up first, so its error (which says why) comes back.
            body.timeout_ms = max(1, int(self._request_timeout * 900))
        try:
            await self._call(req)
        except BaseException:
            self._cache.pop(oid, None)
            self._delete_orphan(oid)
            raise

    # ------------------------------------------------------------------ recreation
    def _start_recreate(self, oid: bytes) -> None:
        """Every copy of an object this client put with ``recreate=`` is lost: make it again."""
        if oid not in self._recreators or oid in self._recreating or self._loop is None:
            return
        self._earlier.pop(oid, None)  # not lost for gets: it is being made again
        self._recreate_failed.pop(oid, None)
        fut: asyncio.Future[None] = self._loop.create_future()
        self._recreating[oid] = fut
        task = self._loop.create_task(self._recreate(oid, fut), name="objstore-recreate")
        self._recreate_tasks.add(task)
        task.add_done_callback(self._recreate_tasks.discard)

    async def _recreate(self, oid: bytes, fut: asyncio.Future[None]) -> None:
        fn = self._recreators[oid]
        errors: list[str] = []
        try:
            for attempt in range(1, self._max_recreations + 1):
                try:
                    value = fn()
                    if inspect.isawaitable(value):
                        value = await value
                    # The entry cached for the lost copy is replaced by the new one.
                    old = self._cache.pop(oid, None)
                    if old is not None:
                        old.valid = False
                    await self._store(oid, value, self._recreate_names.get(oid), True, True)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the user's callable; reported below
                    errors.append(f"attempt {attempt}: {type(exc).__name__}: {exc}")
                    log.warning(
                        "recreating a lost object failed",
                        object_id=oid.hex(),
                        attempt=attempt,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    continue
                log.info("lost object recreated", object_id=oid.hex(), attempt=attempt)
                fut.set_result(None)
                return
            message = "; ".join(errors)
            err = ObjectReconstructionFailedError(
                f"object {oid.hex()} is lost and recreating it failed "
                f"{len(errors)} time(s): {message}"
            )
            self._recreate_failed[oid] = err
            req = pb.Request()
            req.recreate_failed.object_id = oid
            req.recreate_failed.message = message[:4000]
            self._send_oneway(req)
            fut.set_exception(err)
            fut.exception()  # retrieved: gets raise it themselves
        finally:
            self._recreating.pop(oid, None)
            if not fut.done():
                fut.cancel()

    async def _wait_recreations(self, ids: Iterable[bytes], timeout: float | None) -> None:
        """Gets of objects being recreated here wait for them (within ``timeout``)."""
        for oid in ids:
            err = self._recreate_failed.get(oid)
            if err is not None:
                raise err
        futs = [f for oid in ids if (f := self._recreating.get(oid)) is not None]
        if not futs:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(asyncio.shield(f) for f in futs))
        except TimeoutError:
            raise GetTimeoutError(
                f"get timed out after {timeout}s waiting for a recreation"
            ) from None

    def _delete_orphan(self, oid: bytes) -> None:
        """An inline put whose caller was cancelled landed: delete it (nobody has its ref)."""
        req = pb.Request()
        req.delete.object_ids.append(oid)
        self._send_oneway(req)
        # Nothing is cached for it, so the invalidation will find nothing: let
        # go of the owner's hold now (the node takes requests in order).
        req = pb.Request()
        req.release.object_ids.append(oid)
        self._send_oneway(req)

    def _abort(self, oid: bytes) -> None:
        """Drop an object this client created but will not seal."""
        req = pb.Request()
        req.abort.object_id = oid
        self._send_oneway(req)

    async def _write(self, mm: mmap.mmap, offset: int, ser: Serialized) -> None:
        """Copy a payload into shared memory, off the event loop.

        Copy threads cannot be stopped: if the put is cancelled, this waits for
        them to finish before letting the caller abort (and the node reuse the
        memory), so a cancelled put never writes into someone else's object.
        """
        dst = memoryview(mm)[offset : offset + ser.size]
        pool = self._pool()
        mark = self._warm_mark if mm is self._segments.get(0) else Mark()
        if ser.size < self._parallel_min or self._threads == 1:
            cfs = [pool.submit(copy_all, mm, offset, ser, dst, mark)]
        else:
            cfs = [
                pool.submit(copy_ranges, mm, offset, dst, job, mark)
                for job in split(ser, self._threads)
            ]
        try:
            await asyncio.gather(*(asyncio.wrap_future(cf) for cf in cfs))
        except BaseException:
            for cf in cfs:
                cf.cancel()
            for cf in cfs:
                while not cf.done():
                    try:
                        await asyncio.shield(asyncio.wrap_future(cf))
                    except BaseException:  # noqa: S112, BLE001 - keep waiting; the first error is re-raised
                        continue
            raise
        finally:
            dst.release()

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._threads, thread_name_prefix="objstore-copy"
            )
        return self._executor

    # ------------------------------------------------------------------ get
    async def get(
        self, refs: ObjectRef | str | Sequence[ObjectRef], timeout: float | None = None
    ) -> Any:
        """The value of a ref, a list of values for a list of refs, or the value of a name.

        Waits for objects not sealed yet; raises
        :class:`~objstore.errors.GetTimeoutError` after ``timeout`` seconds
        (``None``: wait as long as it takes).
        """
        if isinstance(refs, ObjectRef):
            oid = refs._id
            entry = self._cache.get(oid)
            if (
                entry is not None
                and entry.valid
                and self._closed_exc is None
                and (self._transport is not None or self._back is not None)
                and not self._recreating
                and not self._recreate_failed
                and (timeout is None or timeout >= 0)
            ):
                # Mapped here already: what _get_many does for it, without its lists.
                return self._value(oid, entry)
            return (await self._get_many([oid], None, timeout))[0]
        if isinstance(refs, str):
            if not refs:
                raise ValueError("a name is a non-empty str")
            return (await self._get_many([], refs, timeout))[0]
        if isinstance(refs, (list, tuple)):
            ids = []
            for r in refs:
                if not isinstance(r, ObjectRef):
                    raise TypeError(f"get takes ObjectRefs, a list of them, or a name; got {r!r}")
                ids.append(r._id)
            return await self._get_many(ids, None, timeout)
        raise TypeError(
            f"get takes an ObjectRef, a list of ObjectRefs, or a name; got {type(refs).__name__}"
        )

    async def _get_many(
        self, ids: list[bytes], name: str | None, timeout: float | None
    ) -> list[Any]:
        self._check_open()
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, got {timeout}")
        if self._recreating or self._recreate_failed:
            await self._wait_recreations(ids, timeout)
        cache = self._cache
        results: list[Any] = [None] * len(ids)
        missing: list[int] = []
        for i, oid in enumerate(ids):
            entry = cache.get(oid)
            if entry is not None and entry.valid:
                results[i] = self._value(oid, entry)
            else:
                missing.append(i)
        if not missing and name is None:
            return results
        req = pb.Request()
        body = req.get
        # One request for every id not mapped here yet (duplicates asked once).
        want = list(dict.fromkeys(ids[i] for i in missing))
        body.object_ids.extend(want)
        if name is not None:
            body.name = name
        body.timeout_ms = -1 if timeout is None else int(timeout * 1000)
        try:
            if timeout is None:
                reply = await self._call(req, self._release_orphan_get, bounded=False)
            else:
                # The node enforces the timeout; this bound covers a node that is stuck.
                async with asyncio.timeout(timeout + 5.0):
                    reply = await self._call(req, self._release_orphan_get, bounded=False)
        except TimeoutError as exc:
            if isinstance(exc, GetTimeoutError):
                raise
            raise GetTimeoutError(f"get timed out after {timeout}s") from exc
        got: dict[bytes, _Cached] = {}
        for info in reply.get.objects:
            oid = info.object_id
            entry = cache.get(oid)
            if entry is None or not entry.valid:
                entry = _Cached(info.segment, info.offset, info.data_size, info.metadata, False, 0)
                cache[oid] = entry
            entry.store_pins += 1  # the node pins for every client, the owner too
            got[oid] = entry
        try:
            for entry in got.values():
                if entry.segment not in self._segments:
                    await self._segment(entry.segment)
            for i in missing:
                oid = ids[i]
                results[i] = self._value(oid, got[oid])
            if name is not None:
                oid = reply.get.objects[-1].object_id
                results.append(self._value(oid, got[oid]))
        finally:
            for oid, entry in got.items():
                self._maybe_release(oid, entry)
            self._flush_releases()
        return results if name is None else results[-1:]

    def _release_orphan_get(self, reply: pb.Reply) -> None:
        """A get whose caller was cancelled was answered: give the node its pins back."""
        for info in reply.get.objects:
            self._release_batch.append(info.object_id)

    # ------------------------------------------------------------------ wait / delete / misc
    async def wait(
        self,
        refs: Sequence[ObjectRef],
        num_returns: int = 1,
        timeout: float | None = None,
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """Wait until ``num_returns`` of ``refs`` are ready (or ``timeout``); returns (ready, pending)."""
        refs = list(refs)
        if not all(isinstance(r, ObjectRef) for r in refs):
            raise TypeError("wait takes a list of ObjectRefs")
        if len(set(refs)) != len(refs):
            raise ValueError("wait takes distinct ObjectRefs")
        if not 0 <= num_returns <= len(refs):
            raise ValueError(f"num_returns must be in 0..{len(refs)}, got {num_returns}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, got {timeout}")
        cache = self._cache
        local = {r for r in refs if (e := cache.get(r._id)) is not None and e.valid}
        if len(local) >= num_returns:
            ready = [r for r in refs if r in local][: max(num_returns, len(local))]
            return ready, [r for r in refs if r not in local]
        req = pb.Request()
        body = req.wait
        body.object_ids.extend(r._id for r in refs)
        body.num_returns = num_returns
        body.timeout_ms = -1 if timeout is None else int(timeout * 1000)
        if timeout is None:
            reply = await self._call(req, bounded=False)
        else:
            async with asyncio.timeout(timeout + 5.0):
                reply = await self._call(req, bounded=False)
        ready_ids = set(reply.wait.ready)
        return [r for r in refs if r._id in ready_ids], [r for r in refs if r._id not in ready_ids]

    async def delete(self, refs: ObjectRef | str | Sequence[ObjectRef]) -> int:
        """Delete objects (by ref, list of refs, or name); returns how many were deleted.

        Memory is freed once no process holds a view of them.
        """
        req = pb.Request()
        body = req.delete
        body.SetInParent()
        if isinstance(refs, ObjectRef):
            body.object_ids.append(refs._id)
        elif isinstance(refs, str):
            if not refs:
                raise ValueError("a name is a non-empty str")
            body.name = refs
        elif isinstance(refs, (list, tuple)):
            if not refs:
                return 0
            for r in refs:
                if not isinstance(r, ObjectRef):
                    raise TypeError(
                        f"delete takes ObjectRefs, a list of them, or a name; got {r!r}"
                    )
                body.object_ids.append(r._id)
        else:
            raise TypeError(
                f"delete takes an ObjectRef, a list of ObjectRefs, or a name; got {type(refs).__name__}"
            )
        reply = await self._call(req)
        return reply.delete.deleted

    async def contains(self, ref: ObjectRef) -> bool:
        """Whether the node holds a sealed copy of the object."""
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"contains takes an ObjectRef, got {type(ref).__name__}")
        req = pb.Request()
        req.contains.object_id = ref._id
        return (await self._call(req)).contains.present

    async def stats(self) -> dict[str, Any]:
        """The node's counters (memory, objects, clients)."""
        req = pb.Request()
        req.stats.SetInParent()
        st = (await self._call(req)).stats
        out: dict[str, Any] = {f.name: getattr(st, f.name) for f in st.DESCRIPTOR.fields}
        out["node_id"] = st.node_id.hex()
        return out

    async def list_objects(self, limit: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Objects on the node (at most ``limit``; 0: all) and the total count."""
        req = pb.Request()
        req.list_objects.limit = limit
        lst = (await self._call(req)).list_objects
        out = [
            {
                "object_id": o.object_id.hex(),
                "size": o.data_size,
                "state": o.state,
                "name": o.name,
                "primary": o.primary,
                "pins": o.pins,
                "segment": o.segment,
                "format": o.metadata.decode(errors="replace"),
                "spill_url": o.spill_url,
                "owner_pid": o.owner_pid,
                "holder_pids": list(o.holder_pids),
                "contained_in": [c.hex() for c in o.contained_in],
                "grace": o.grace,
                "borrowed": o.borrowed,
                "call_sites": list(o.call_sites),
            }
            for o in lst.objects
        ]
        return out, lst.total


def _describe(
    body: Any,
    meta: bytes,
    name: str | None,
    contained: bytes,
    site: str,
    recreatable: bool,
    recreated: bool,
) -> None:
    """The fields a PutInline and a Create share (protobuf sets only those given)."""
    body.metadata = meta
    if name:
        body.name = name
    if contained:
        body.contained_ids = contained
    if site:
        body.call_site = site
    if recreatable:
        body.recreatable = True
    if recreated:
        body.recreated = True


class _Connector:
    """What :func:`connect` returns: ``await`` it, or use it with ``async with``."""

    def __init__(
        self,
        socket_path: str | None,
        warm: bool,
        request_timeout: float | None,
        reconnect: bool = True,
    ) -> None:
        self._path = socket_path or os.environ.get("OBJSTORE_SOCKET") or default_socket_path()
        self._warm = warm
        self._request_timeout = request_timeout
        self._reconnect = reconnect
        self._client: Client | None = None

    def __await__(self) -> Any:
        return self._open().__await__()

    async def _open(self) -> Client:
        client = Client(self._path, self._warm, self._request_timeout, self._reconnect)
        await client._connect()
        return client

    async def __aenter__(self) -> Client:
        self._client = await self._open()
        return await self._client.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        assert self._client is not None
        await self._client.__aexit__(*exc)


def connect(
    socket: str | None = None,
    *,
    reconnect: bool = True,
    warm: bool = True,
    request_timeout: float | None = 60.0,
) -> _Connector:
    """Connect to the local node.

    ``async with objstore.connect() as client: ...`` or
    ``client = await objstore.connect()`` (then ``await client.close()``).
    The socket is ``socket``, else ``$OBJSTORE_SOCKET``, else the default path.
    ``warm`` fills this process's page tables for the node's prefaulted part of
    the arena in a background thread, so that the first large puts copy at
    full speed; short-lived tools pass ``warm=False``.
    ``request_timeout`` bounds every request but gets and waits (those take
    their own ``timeout``): a node that does not answer within it raises
    :class:`~objstore.errors.NodeUnavailableError`.
    ``reconnect``: when the connection to the node is lost (it was killed or
    restarted), reconnect with backoff (50 ms doubling to 2 s, with jitter)
    once a node serves the socket again; calls meanwhile wait within their own
    timeouts, then raise ``NodeUnavailableError`` (see docs/lifecycle.md).
    ``reconnect=False``: every call after the loss raises ``NodeUnavailableError``.
    """
    return _Connector(socket, warm, request_timeout, reconnect)
