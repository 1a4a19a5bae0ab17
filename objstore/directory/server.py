"""The directory's gRPC server (grpclib), run by the head node.

Every call must first prove the cluster token: :class:`~objstore.directory.guard.Gate`
refuses one without a valid proof (UNAUTHENTICATED) before its handler runs;
with TLS credentials the server also requires a client certificate from the
cluster's CA.  Each RPC decodes its request, calls
:class:`~objstore.directory.state.DirectoryState`
and encodes the answer; errors become gRPC statuses (see directory.proto).
Requests are read with a size limit before they are buffered.  Node death is
found by a timer that checks heartbeats; durable state is written behind, in
batches, by :class:`~objstore.directory.persist.WriteBehind`.

Each node's ``Subscribe`` stream is served by two tasks: one reads
subscription changes, one sends the current state of changed objects, the
ids the node must free and, to a primary node, the objects that became
borrowed or unborrowed.  Errors become gRPC statuses through the one table in
:mod:`objstore.status`.  :meth:`DirectoryServer.stop` ends every request, stream
and connection, so a directory started again on the same port is the only one
its clients reach.  A subscriber that does not read blocks only its own
sender (HTTP/2 flow control); its pending changes coalesce per object, so its
cost is bounded by its subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import socket
import struct
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpclib.const
import grpclib.server
import structlog
from grpclib import GRPCError
from grpclib.const import Status

from objstore.auth import Credentials
from objstore.config import Config
from objstore.directory.codec import pb, rows_to_table, usage_from_pb, usage_to_pb
from objstore.directory.guard import Gate, server_ssl
from objstore.directory.persist import MemoryStore, StateStore, WriteBehind, open_store
from objstore.directory.state import (
    DirectoryState,
    InvalidRequestError,
    NotRegisteredError,
    Subscriber,
    split_ids,
)
from objstore.errors import NodeUnavailableError, ObjectStoreError
from objstore.ids import NODE_ID_SIZE, OBJECT_ID_SIZE
from objstore.status import error_to_grpc
from objstore.tasks import TaskSet, race

__all__ = ["DirectoryServer"]

log = structlog.get_logger("objstore.directory.server")

_PREFIX = "/objstore.directory.v1.Directory/"
# Requests larger than this are handled one per event loop turn.
_HEAVY_BYTES = 16 * 1024
# Rows per notification message, and frees (or borrow changes) per message.
_NOTIFY_ROWS = 2000
_NOTIFY_FREES = 10000

M = TypeVar("M")


def _as_grpc(exc: BaseException) -> GRPCError:
    """The gRPC error a client sees for ``exc`` (see :func:`objstore.status.error_to_grpc`)."""
    status, message = error_to_grpc(exc)
    return GRPCError(status, message)


async def _recv_limited(stream: grpclib.server.Stream[Any, Any], limit: int) -> Any:
    """Read and decode one request (see :func:`_recv_raw`)."""
    data = await _recv_raw(stream, limit)
    return None if data is None else _decode(stream, data)


def _decode(stream: grpclib.server.Stream[Any, Any], data: bytes) -> Any:
    try:
        return stream._codec.decode(data, stream._recv_type)
    except Exception as exc:
        raise _as_grpc(InvalidRequestError(f"malformed request: {exc}")) from exc


async def _recv_raw(stream: grpclib.server.Stream[Any, Any], limit: int) -> bytes | None:
    """Read one request's bytes, refusing one longer than ``limit`` before buffering it.

    grpclib reads a whole message of any announced length; this reads the
    5-byte gRPC prefix first (through the stream's HTTP/2 stream and codec,
    which grpclib keeps as attributes) and checks the length.  A compressed or
    oversized message is refused with gRPC's own statuses for those (no
    objstore error stands for them).
    """
    h2 = stream._stream
    meta = await h2.recv_data(5)
    if not meta:
        return None
    if len(meta) != 5:
        raise _as_grpc(InvalidRequestError("truncated message prefix"))
    compressed, size = struct.unpack(">?I", meta)
    if compressed:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not served")
    if size > limit:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED, f"a request of {size} bytes is over the limit of {limit}"
        )
    data = await h2.recv_data(size)
    if len(data) != size:
        raise _as_grpc(InvalidRequestError("truncated message"))
    return bytes(data)


class _Service:
    """The ``Directory`` service's handlers (mapped by :meth:`__mapping__`)."""

    def __init__(self, server: DirectoryServer) -> None:
        self.server = server
        self.state = server.state
        self.cfg = server.config.directory
        self._heavy = asyncio.Semaphore(1)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        routes: dict[str, tuple[Callable[..., Any], type, type]] = {
            "Register": (self.register, pb.RegisterRequest, pb.RegisterReply),
            "Heartbeat": (self.heartbeat, pb.HeartbeatRequest, pb.HeartbeatReply),
            "Report": (self.report, pb.LocationReport, pb.ReportReply),
            "Lookup": (self.lookup, pb.LookupRequest, pb.LocationTable),
            "ReserveName": (self.reserve_name, pb.ReserveNameRequest, pb.ReserveNameReply),
            "ResolveName": (self.resolve_name, pb.ResolveNameRequest, pb.LocationTable),
            "Delete": (self.delete, pb.DeleteRequest, pb.DeleteReply),
            "ClusterStatus": (self.cluster_status, pb.ClusterStatusRequest, pb.ClusterStatusReply),
            "ListObjects": (self.list_objects, pb.ListObjectsRequest, pb.LocationTable),
            "Relay": (self.relay, pb.RelayRequest, pb.RelayReply),
        }
        out = {
            _PREFIX + name: grpclib.const.Handler(
                functools.partial(self._unary, name, fn), unary, req, rep
            )
            for name, (fn, req, rep) in routes.items()
        }
        out[_PREFIX + "Subscribe"] = grpclib.const.Handler(
            self._subscribe,
            grpclib.const.Cardinality.STREAM_STREAM,
            pb.SubscribeRequest,
            pb.Notification,
        )
        return out

    async def _unary(
        self,
        name: str,
        fn: Callable[[Any], Awaitable[Any]],
        stream: grpclib.server.Stream[Any, Any],
    ) -> None:
        data = await _recv_raw(stream, self.cfg.max_message_bytes)
        if data is None:
            raise _as_grpc(InvalidRequestError("no request message"))
        try:
            if len(data) > _HEAVY_BYTES:
                # Big requests (reports, batch lookups) take turns, one per loop
                # turn: a hundred nodes reporting at once then delay a small
                # lookup by one report's work, not by all of them.
                async with self._heavy:
                    await asyncio.sleep(0)
                    reply = await fn(_decode(stream, data))
            else:
                reply = await fn(_decode(stream, data))
        except GRPCError:
            raise
        except Exception as exc:
            err = _as_grpc(exc)
            if err.status is Status.INTERNAL:  # not one of ours: a bug
                log.exception("directory request failed", rpc=name)
            raise err from exc
        await stream.send_message(reply)

    # -- helpers
    def _address(self, node_id: bytes) -> str:
        node = self.state.nodes.get(node_id)
        return node.address if node is not None and node.alive else ""

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _ids(self, blob: bytes, what: str = "object ids") -> list[bytes]:
        ids = split_ids(blob, what=what)
        if len(ids) > self.cfg.max_lookup:
            raise InvalidRequestError(
                f"{what}: {len(ids)} ids in one request; at most {self.cfg.max_lookup}"
            )
        return ids

    # -- RPCs
    async def register(self, req: pb.RegisterRequest) -> pb.RegisterReply:
        node = self.state.register(
            req.node_id,
            req.session,
            self._now(),
            time.time(),
            address=req.address,
            socket=req.socket,
            hostname=req.hostname,
            pid=req.pid,
            usage=usage_from_pb(req.usage),
        )
        log.info(
            "node registered",
            node_id=req.node_id.hex(),
            pid=node.pid,
            hostname=node.hostname,
            objects=len(node.objects),
        )
        return pb.RegisterReply(
            heartbeat_s=self.cfg.heartbeat_s,
            node_timeout_s=self.cfg.node_timeout_s,
            max_report=self.cfg.max_report,
            directory_id=self.server.directory_id,
        )

    async def heartbeat(self, req: pb.HeartbeatRequest) -> pb.HeartbeatReply:
        self.state.heartbeat(req.node_id, req.session, usage_from_pb(req.usage), self._now())
        return pb.HeartbeatReply()

    async def report(self, req: pb.LocationReport) -> pb.ReportReply:
        added = split_ids(req.added_ids)
        removed = split_ids(req.removed_ids)
        deleted = split_ids(req.deleted_ids)
        spilled = split_ids(req.spilled_ids)
        borrowed = split_ids(req.borrowed_ids)
        unborrowed = split_ids(req.unborrowed_ids)
        replicated = split_ids(req.replicas_ids)
        recreatable = split_ids(req.recreatable_ids)
        if len(req.replicas_counts) != len(replicated):
            raise InvalidRequestError("report: replicated ids and counts differ in length")
        n = len(added)
        if len(req.added_sizes) != n or (req.added_primary and len(req.added_primary) != n):
            raise InvalidRequestError("report: added ids, sizes and primary flags differ in length")
        if len(req.named_index) != len(req.names) or any(i >= n for i in req.named_index):
            raise InvalidRequestError("report: names do not match the added ids")
        if len(req.spilled_urls) != len(spilled):
            raise InvalidRequestError("report: spilled ids and URLs differ in length")
        total = (
            n
            + len(removed)
            + len(deleted)
            + len(spilled)
            + len(borrowed)
            + len(unborrowed)
            + len(replicated)
            + len(recreatable)
        )
        if total > self.cfg.max_report:
            raise InvalidRequestError(
                f"report: {total} entries in one report; at most {self.cfg.max_report}"
            )
        primary = req.added_primary or [False] * n
        self.state.report(
            req.node_id,
            req.session,
            self._now(),
            added=zip(added, req.added_sizes, primary),
            names=dict(zip(req.named_index, req.names)) if req.names else None,
            removed=removed,
            deleted=deleted,
            spilled=zip(spilled, req.spilled_urls),
            borrowed=borrowed,
            unborrowed=unborrowed,
            replicas=zip(replicated, req.replicas_counts),
            recreatable=recreatable,
            sync_begin=req.sync_begin,
            sync_end=req.sync_end,
        )
        if req.sync_end:
            node = self.state.nodes[req.node_id]
            log.info(
                "node reported in full",
                node_id=req.node_id.hex(),
                objects=len(node.objects),
                borrowed=len(self.state.borrowers.borrowed_by(req.node_id)),
            )
        return pb.ReportReply()

    async def lookup(self, req: pb.LookupRequest) -> pb.LocationTable:
        return rows_to_table(self.state.lookup(self._ids(req.object_ids)), address_of=self._address)

    async def reserve_name(self, req: pb.ReserveNameRequest) -> pb.ReserveNameReply:
        self.state.reserve_name(
            req.node_id, req.session, req.name, req.object_id, req.size, self._now()
        )
        return pb.ReserveNameReply()

    async def resolve_name(self, req: pb.ResolveNameRequest) -> pb.LocationTable:
        oid = self.state.resolve_name(req.name)
        return rows_to_table([self.state.row(oid)], address_of=self._address)

    async def delete(self, req: pb.DeleteRequest) -> pb.DeleteReply:
        ids = self._ids(req.object_ids)
        for name in req.names:
            ids.append(self.state.resolve_name(name))  # an unknown name: NOT_FOUND
        n = self.state.delete(ids, requester=req.node_id or None)
        return pb.DeleteReply(deleted=n)

    async def relay(self, req: pb.RelayRequest) -> pb.RelayReply:
        oid = req.object_id
        if len(oid) != OBJECT_ID_SIZE:
            raise InvalidRequestError(f"relay: an object id is {OBJECT_ID_SIZE} bytes")
        if req.detach:
            self.state.unrelay(req.node_id, req.session, oid)
            return pb.RelayReply()
        exclude = split_ids(req.exclude, NODE_ID_SIZE, what="excluded node ids")
        source = self.state.relay(req.node_id, req.session, oid, exclude, self._now())
        if source is None:
            return pb.RelayReply()
        log.debug(
            "relay attached",
            object_id=oid.hex(),
            node_id=req.node_id.hex(),
            source=source.hex(),
            excluded=len(exclude),
        )
        return pb.RelayReply(source=source, address=self._address(source))

    async def cluster_status(self, req: pb.ClusterStatusRequest) -> pb.ClusterStatusReply:
        now = self._now()
        st = self.state
        nodes = []
        for node in st.nodes.values():
            nodes.append(
                pb.NodeStatus(
                    node_id=node.node_id,
                    address=node.address,
                    socket=node.socket,
                    hostname=node.hostname,
                    pid=node.pid,
                    alive=node.alive,
                    usage=usage_to_pb(node.usage),
                    silent_s=max(0.0, now - node.last_seen),
                    registered_at=node.registered_at,
                    head=node.node_id == self.server.head_node_id,
                    locations=len(node.objects),
                )
            )
        return pb.ClusterStatusReply(
            nodes=nodes,
            objects=len(st.objects),
            locations=st.n_locations,
            subscriptions=st.n_subscriptions,
            spilled_objects=st.spilled_objects,
            spilled_bytes=st.spilled_bytes,
            store=self.server.store.describe,
            uptime_s=now - self.server.started,
            lost_objects=st.n_lost,
        )

    async def list_objects(self, req: pb.ListObjectsRequest) -> pb.LocationTable:
        # At most max_lookup rows: building a million rows would stall the loop.
        limit = min(req.limit or 1000, self.cfg.max_lookup)
        rows = []
        for oid in self.state.objects:
            rows.append(self.state.row(oid))
            if len(rows) >= limit:
                break
        return rows_to_table(rows, total=len(self.state.objects), address_of=self._address)

    # -- subscriptions
    async def _subscribe(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        limit = self.cfg.max_message_bytes
        await self.serve_subscription(lambda: _recv_limited(stream, limit), stream.send_message)

    async def serve_subscription(
        self,
        recv: Callable[[], Awaitable[Any]],
        send: Callable[[pb.Notification], Awaitable[None]],
    ) -> None:
        """One node's subscription stream, over gRPC or in-process (:class:`~objstore.directory.local.LocalLink`)."""
        first = await recv()
        if first is None:
            return
        state = self.state
        try:
            state.live_node(first.node_id, first.session)
        except NotRegisteredError as exc:
            raise _as_grpc(exc) from exc
        wake = asyncio.Event()
        sub = Subscriber(first.node_id, wake.set)
        old = state.attach(sub)
        if old is not None:
            log.info("a node opened a new subscription stream", node_id=first.node_id.hex())
        self.server.streams.add(sub)

        def apply(msg: pb.SubscribeRequest) -> None:
            if msg.unsubscribe_ids:
                state.unsubscribe(sub, self._ids(msg.unsubscribe_ids))
            if msg.subscribe_ids:
                state.subscribe(sub, self._ids(msg.subscribe_ids))

        async def reader() -> None:
            msg = first
            while msg is not None:
                apply(msg)
                msg = await recv()

        async def sender() -> None:
            while True:
                await wake.wait()
                wake.clear()
                if sub.closed:
                    return
                while True:
                    rows = state.take_pending(sub, _NOTIFY_ROWS)
                    frees = state.take_frees(sub.node_id, _NOTIFY_FREES)
                    borrowed, unborrowed = state.take_borrow_notes(sub.node_id, _NOTIFY_FREES)
                    replicate = state.take_replications(sub.node_id, _NOTIFY_FREES)
                    dead, sub.dead_nodes = sub.dead_nodes, []
                    if not (rows or frees or dead or borrowed or unborrowed or replicate):
                        break
                    note = pb.Notification(
                        replicate_ids=b"".join(replicate),
                        free_ids=b"".join(frees),
                        dead_nodes=b"".join(dead),
                        borrowed_ids=b"".join(borrowed),
                        unborrowed_ids=b"".join(unborrowed),
                    )
                    if rows:
                        note.updates = rows_to_table(rows, address_of=self._address)
                    await send(note)
                    if sub.closed:
                        return

        try:
            try:
                await race(reader(), sender())
            except ObjectStoreError as err:
                raise _as_grpc(err) from err
            if sub.closed:
                raise _as_grpc(
                    NodeUnavailableError(
                        "subscription stream closed: replaced by a newer one, "
                        "or the node was declared dead"
                    )
                )
        finally:
            self.server.streams.discard(sub)
            if not sub.closed:
                state.drop_subscriber(sub)


class DirectoryServer:
    """The directory: state, its durable store, the gRPC server, the death timer."""

    def __init__(
        self,
        config: Config,
        head_node_id: bytes | None = None,
        store: StateStore | None = None,
        *,
        credentials: Credentials,
    ) -> None:
        self.config = config
        self.credentials = credentials
        dc = config.directory
        self.state = DirectoryState(
            node_timeout=dc.node_timeout_s,
            deleted_memory=dc.deleted_memory,
            max_subscriptions=dc.max_subscriptions,
            replica_timeout=config.lifecycle.replica_timeout_s,
            relay_fanout=max(1, config.transfer.relay_fanout),
        )
        self.store = store or open_store(dc.store, dc.state_dir)
        self.persist = WriteBehind(
            self.store,
            self.state.encode_node,
            self.state.encode_object,
            interval=dc.flush_interval_s,
        )
        self.head_node_id = head_node_id
        self.directory_id = os.urandom(NODE_ID_SIZE)
        self.streams: set[Subscriber] = set()
        self.service: _Service | None = None
        self._server: _GrpcServer | None = None
        # Every call proves the cluster token before its handler runs (None: --insecure).
        self.gate = Gate(credentials.token) if credentials.token is not None else None
        # The death timer and the head's in-process subscription streams.
        self.tasks = TaskSet("directory")
        self.host = ""
        self.port = 0
        self.started = 0.0
        self.stopped = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, host: str, port: int) -> None:
        """Load the durable state, then serve on ``host:port`` (0: any free port)."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        nodes, objects = await self.store.load()
        self.state.load(nodes, objects, loop.time())
        if objects:
            gc.freeze()  # the records just loaded live long (see _watch_deaths)
        if nodes or objects:
            log.info(
                "directory state recovered",
                store=self.store.describe,
                nodes=len(nodes),
                objects=len(objects),
                seconds=round(time.perf_counter() - t0, 3),
            )
        if not isinstance(self.store, MemoryStore):
            # Nothing durable to write for the in-memory store: skip the bookkeeping.
            self.state.on_dirty_node = self.persist.mark_node
            self.state.on_dirty_object = self.persist.mark_object
            self.persist.start()
        self.service = _Service(self)
        self._server = _GrpcServer([self.service])
        if self.gate is not None:
            self.gate.attach(self._server)
        try:
            await self._server.start(
                host, port, reuse_address=True, ssl=server_ssl(self.credentials)
            )
        except OSError as exc:
            self._server = None
            await self.persist.close(5.0)
            await self.store.close()
            raise ObjectStoreError(
                f"directory: cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        listener: Any = self._server._server
        sock: socket.socket = listener.sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self.started = loop.time()
        self.tasks.spawn(self._watch_deaths(), name="directory-deaths")
        log.info(
            "directory serving",
            address=self.address,
            store=self.store.describe,
            authentication="token" if self.gate is not None else "off (--insecure)",
            tls=self.credentials.tls is not None,
        )

    async def _watch_deaths(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(0.5, self.config.directory.node_timeout_s / 4)
        frozen_at = 0
        while True:
            await asyncio.sleep(period)
            # Object records live long: once their number has grown by a
            # quarter, move everything alive to the permanent generation, so
            # full collections (228 ms with a million records) skip them.
            n = len(self.state.objects)
            if n > 50_000 and n > frozen_at * 1.25:
                gc.freeze()
                frozen_at = n
            for nid in self.state.silent_nodes(loop.time()):
                node = self.state.nodes[nid]
                if node.alive:
                    await self._declare_dead(nid)
            if self.state.replicas.wants:
                late = self.state.check_replicas(loop.time())
                if late:
                    log.warning("replica copies not made in time; other nodes asked", objects=late)

    async def _declare_dead(self, node_id: bytes) -> None:
        """Remove a dead node's copies a slice at a time, letting the loop serve others."""
        t0 = time.perf_counter()
        node = self.state.nodes[node_id]
        lost = 0
        for lost in self.state.declare_dead_steps(node_id):
            await asyncio.sleep(0)
        # Every other node stops serving the dead one's transfers.
        for sub in self.streams:
            if sub.node_id != node_id and not sub.closed:
                sub.dead_nodes.append(node_id)
                sub.wake()
        log.warning(
            "node declared dead",
            node_id=node_id.hex(),
            pid=node.pid,
            silent_s=self.config.directory.node_timeout_s,
            objects_lost=lost,
            seconds=round(time.perf_counter() - t0, 3),
        )

    async def stop(self) -> None:
        """Stop serving: end every request, stream and connection; write what is
        left of the state.  A second call does nothing."""
        if self.stopped:
            return
        self.stopped = True
        # The death timer and the in-process streams (their clients see the end).
        await self.tasks.close()
        if self._server is not None:
            self._server.close()
            for sub in list(self.streams):
                self.state.drop_subscriber(sub)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server.close_connections()
        await self.persist.close(10.0)
        await self.store.close()


class _GrpcServer(grpclib.server.Server):
    """grpclib's server, closing its open connections too when told.

    grpclib's ``close`` stops the listener and cancels running requests but
    leaves open connections to their peers, which would go on sending
    heartbeats and reports to a stopped directory.
    """

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        self._protocols: weakref.WeakSet[Any] = weakref.WeakSet()

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close_connections(self) -> None:
        """Close every connection still open (their peers see them drop)."""
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is not None:
                connection.close()
