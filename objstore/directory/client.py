"""The node's link to the directory, and a small admin client for tools.

:class:`DirectoryClient` keeps a node registered: it connects, registers,
reports every object it holds (a *full report*), then runs three loops on one
channel: heartbeats, batched location reports (one in flight at a time, up to
``max_report`` changes each, so changes batch themselves under load and go
out at once when quiet) and one subscription stream.  When anything fails it
tears the session down, waits with exponential backoff and jitter, and starts
again: register, full report, resubscribe.  Gets waiting on the node carry on
through a directory restart.

The client reads its node through a :class:`~objstore.directory.api.NodeView`
(the full report's snapshot, usage for heartbeats) and tells it what the
directory says through a :class:`~objstore.directory.api.DirectoryListener`
(updates of subscribed objects, frees, dead nodes, objects put here that
became borrowed or unborrowed).  The hooks the node calls (``added``,
``removed``, ``deleted``, ``spilled``, ``borrowed``, ``unborrowed``,
``watch``, ``unwatch``) only touch the pure books of
:mod:`objstore.directory.book`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket as _socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, Self, TypeVar

import grpclib.const
import structlog
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError

from objstore.auth import Credentials, member_credentials
from objstore.config import Config, SecurityConfig
from objstore.directory.api import DirectoryListener, Link, NodeView, SnapshotEntry
from objstore.directory.book import ReportBatch, ReportBook, WatchBook
from objstore.directory.codec import join_ids, pb, table_addresses, table_to_rows, usage_to_pb
from objstore.directory.guard import open_channel
from objstore.directory.state import split_ids
from objstore.errors import (
    AuthenticationError,
    ConfigError,
    NodeUnavailableError,
    ObjectStoreError,
)
from objstore.ids import NODE_ID_SIZE
from objstore.locations import ObjectRow
from objstore.status import grpc_to_error
from objstore.streak import FailureStreak
from objstore.tasks import TaskSet, race

__all__ = [
    "DirectoryClient",
    "DirectoryAdmin",
    "GrpcLink",
    "parse_address",
    "error_from_grpc",
    "refusal",
    # Re-exported from objstore.directory.api: the seams the client takes.
    "NodeView",
    "DirectoryListener",
    "Link",
]

log = structlog.get_logger("objstore.directory.client")

_PREFIX = "/objstore.directory.v1.Directory/"
T = TypeVar("T")
# Failures that mean "try again later", not "the request is wrong".
_TRANSIENT = (OSError, ConnectionError, StreamTerminatedError, TimeoutError)
# Reconnection backoff: 0.05 s doubling to 2 s, times a jitter factor in [0.5, 1.5).
_RECONNECT_FIRST_S = 0.05
_RECONNECT_MAX_S = 2.0
_RECONNECT_JITTER = 0.5
# Pause between two tries of one request.
_RETRY_S = 0.05


def parse_address(text: str, setting: str = "node.directory") -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), with a clear error."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def error_from_grpc(exc: GRPCError, what: str) -> ObjectStoreError:
    """A directory status as the error a user of objstore catches."""
    return grpc_to_error(exc.status, exc.message or str(exc.status), what)


def refusal(exc: BaseException, address: str, who: str, hint: str) -> AuthenticationError | None:
    """``exc`` as the AuthenticationError it stands for, or None if it is no refusal.

    UNAUTHENTICATED (the directory refused the proof) and a failed TLS
    handshake both mean this side's credentials are not the cluster's; no
    retry mends that.  ``who`` is "this node" or "this tool"; ``hint`` says
    which flags give it the right ones.
    """
    if isinstance(exc, GRPCError) and exc.status is Status.UNAUTHENTICATED:
        return AuthenticationError(
            f"the directory at {address} refused {who}'s cluster token "
            f"({exc.message or 'no reason given'}); {hint}"
        )
    if isinstance(exc, ssl.SSLError):
        return AuthenticationError(
            f"the TLS handshake with the directory at {address} failed ({exc.reason or exc}); "
            f"give {who} a certificate and key signed by the cluster's CA (--tls-cert, "
            "--tls-key) and that CA (--tls-ca), or no TLS flags if the cluster runs without TLS"
        )
    return None


_NODE_HINT = "give this node the head's token with --token-file"


class GrpcLink:
    """The directory over gRPC (grpclib, one HTTP/2 connection) with the node's credentials."""

    def __init__(self, host: str, port: int, credentials: Credentials) -> None:
        self.channel = open_channel(host, port, credentials)
        self.stub = pb.DirectoryStub(self.channel)

    def open_stream(self) -> Any:
        return self.channel.request(
            _PREFIX + "Subscribe",
            grpclib.const.Cardinality.STREAM_STREAM,
            pb.SubscribeRequest,
            pb.Notification,
        )

    def close(self) -> None:
        self.channel.close()


class DirectoryClient:
    """Keeps one node registered, reporting and subscribed; see the module docstring."""

    def __init__(
        self,
        config: Config,
        node_id: bytes,
        node: NodeView,
        listener: DirectoryListener,
        *,
        address: str = "",
        socket: str = "",
        link: Callable[[], Link] | None = None,
        credentials: Credentials,
    ) -> None:
        if not config.node.directory:
            raise ConfigError("node.directory: a directory client needs the directory's HOST:PORT")
        self.config = config
        self.credentials = credentials
        self.host, self.port = parse_address(config.node.directory)
        # How to reach the directory: gRPC, or in-process on the head node.
        self._link = link or (lambda: GrpcLink(self.host, self.port, credentials))
        self.node_id = node_id
        self.session = os.urandom(16)
        self.address = address
        self.socket = socket
        self._node = node
        self._listener = listener
        self.book = ReportBook()
        self.watches = WatchBook()
        self.registered = asyncio.Event()
        self._report_evt = asyncio.Event()
        self._inflight = False
        # Callers of flush_reports waiting for the book to drain (each removes its own).
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._watch_evt = asyncio.Event()
        # The directory refused this node's credentials before it ever registered:
        # start() raises ``self.refused`` instead of retrying until its timeout.
        self._refused_evt = asyncio.Event()
        self.refused: AuthenticationError | None = None
        # Whether the current run of refusals was logged as an error already.
        self._refusal_logged = False
        self._tasks: TaskSet | None = None
        self._stub: Any = None
        # One warning per run of failed sessions; the reconnection backoff.
        self._streak = FailureStreak(
            log,
            "directory connection lost; reconnecting",
            "registered with the directory",
            first=_RECONNECT_FIRST_S,
            maximum=_RECONNECT_MAX_S,
            jitter=_RECONNECT_JITTER,
        )
        self.max_report = config.directory.max_report
        self.heartbeat_s = config.directory.heartbeat_s
        self.timeout = config.directory.request_timeout_s
        self.registrations = 0
        self.reports_sent = 0
        self.notifications = 0
        self.directory_id = b""
        # Node id -> data plane address, from every table the directory sent.
        self.addresses: dict[bytes, str] = {}

    # ------------------------------------------------------------ store hooks (hot path)
    def added(self, oid: bytes, size: int, primary: bool, name: str = "") -> None:
        """A copy was sealed here (``primary``: this node put it)."""
        self.book.added(oid, size, primary, name)
        self._report_evt.set()

    def removed(self, oid: bytes) -> None:
        """A copy left this node (evicted), the object lives on elsewhere."""
        self.book.removed(oid)
        self._report_evt.set()

    def deleted(self, oid: bytes) -> None:
        """The object was deleted here: the directory frees it everywhere."""
        self.book.deleted(oid)
        self._report_evt.set()

    def spilled(self, oid: bytes, url: str) -> None:
        """The object has a spill copy at ``url``."""
        self.book.spilled(oid, url)
        self._report_evt.set()

    def borrowed(self, oid: bytes) -> None:
        """This node's processes now hold refs to ``oid``, put on another node."""
        self.book.borrows[oid] = True
        self._report_evt.set()

    def unborrowed(self, oid: bytes) -> None:
        """This node's processes hold no ref to ``oid`` (put on another node) any more."""
        self.book.borrows[oid] = False
        self._report_evt.set()

    def replicas(self, oid: bytes, count: int) -> None:
        """``oid``, put here, must be kept on ``count`` distinct live nodes."""
        self.book.replicas[oid] = count
        self._report_evt.set()

    def recreatable(self, oid: bytes) -> None:
        """``oid``, put here, can be recreated by its owner (put with recreate=fn)."""
        self.book.recreatable[oid] = None
        self._report_evt.set()

    def watch(self, oid: bytes) -> None:
        """One more local interest in a remote object (subscribed on the first)."""
        if self.watches.watch(oid):
            self._watch_evt.set()

    def unwatch(self, oid: bytes) -> None:
        """One interest fewer (unsubscribed after the last)."""
        if self.watches.unwatch(oid):
            self._watch_evt.set()

    # ------------------------------------------------------------ life
    async def start(self, timeout: float | None = None) -> None:
        """Connect and register; raises NodeUnavailableError if that fails within ``timeout``,
        AuthenticationError at once if the directory refuses this node's credentials."""
        if self._tasks is not None:
            raise RuntimeError("the directory client is started already")
        self._tasks = TaskSet("directory-client")
        self._tasks.spawn(self._run(), name="directory-client")
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                await race(self.registered.wait(), self._refused_evt.wait())
            if self.refused is not None and not self.registered.is_set():
                raise self.refused
        except TimeoutError:
            why = self._streak.last_error
            await self.stop()
            raise NodeUnavailableError(
                f"cannot register with the directory at {self.host}:{self.port} "
                f"within {limit:g}s (is the head node running?"
                + (f" {why})" if why is not None else ")")
                + _tls_hint(self.credentials, "this node", _root(why))
            ) from None
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close the session and end every task of the client (no unregistering: the
        directory finds the node silent, or hears from it again when it restarts)."""
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            await tasks.close()
        self.registered.clear()
        self._stub = None

    async def _run(self) -> None:
        addr = f"{self.host}:{self.port}"
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                refused = refusal(exc, addr, "this node", _NODE_HINT)
                if refused is not None and not self.registrations:
                    # Never admitted: retrying cannot help; start() raises it.
                    self.refused = refused
                    self._refused_evt.set()
                    return
                if refused is not None and not self._refusal_logged:
                    # Admitted before (the head restarted with another token?):
                    # say so once, and keep trying in case it is put right.
                    self._refusal_logged = True
                    log.error(
                        "the directory refuses this node; retrying",
                        error=str(refused),
                        directory=addr,
                    )
                err = refused or NodeUnavailableError(_describe(exc))
                err.__cause__ = exc
                delay = self._streak.failed(err, directory=addr)
            self.registered.clear()
            self._stub = None
            await asyncio.sleep(delay)

    async def _session(self) -> NoReturn:
        """Register, report in full, then serve until something fails (it always raises)."""
        link = self._link()
        try:
            stub = link.stub
            reply = await stub.register(
                pb.RegisterRequest(
                    node_id=self.node_id,
                    session=self.session,
                    address=self.address,
                    socket=self.socket,
                    hostname=_socket.gethostname(),
                    pid=os.getpid(),
                    usage=usage_to_pb(self._node.usage()),
                ),
                timeout=self.timeout,
            )
            self.heartbeat_s = reply.heartbeat_s or self.heartbeat_s
            self.max_report = min(self.max_report, reply.max_report or self.max_report)
            if self.directory_id and reply.directory_id != self.directory_id:
                log.info("directory restarted; registered again", node_id=self.node_id.hex())
            self.directory_id = reply.directory_id
            # The full report replaces every change not sent yet: both are read
            # from the node in this same step, with no await between.
            self.book.clear()
            objects = self._node.snapshot()
            spilled = self._node.spilled_snapshot()
            borrowed = self._node.borrowed_snapshot()
            replicated = self._node.replicas_snapshot()
            recreatable = self._node.recreatable_snapshot()
            await self._full_report(stub, objects, spilled, borrowed, replicated, recreatable)
            self._wake_flushers()  # the full report carried every change made before it
            self.registrations += 1
            self._refusal_logged = False
            self._stub = stub
            self.registered.set()
            fields = {
                "directory": f"{self.host}:{self.port}",
                "objects": len(objects),
                "borrowed": len(borrowed),
            }
            if self._streak.failures:
                self._streak.ok(**fields)  # "registered with the directory", failures=N
            else:
                log.info("registered with the directory", **fields)
            await race(self._heartbeats(stub), self._reports(stub), self._subscription(link))
            raise ConnectionError("directory session ended")
        finally:
            link.close()

    async def _full_report(
        self,
        stub: Any,
        objects: list[SnapshotEntry],
        spilled: Sequence[tuple[bytes, str]] = (),
        borrowed: Sequence[bytes] = (),
        replicated: Sequence[tuple[bytes, int]] = (),
        recreatable: Sequence[bytes] = (),
    ) -> None:
        step = self.max_report
        # The copies first, then the spill URLs of those that have one, then
        # the borrows (the directory replaces this node's borrow set with
        # them), then the replica counts of primaries here, then which of
        # them their owners can recreate.
        nc = -(-len(objects) // step)
        ns = nc + -(-len(spilled) // step)
        nb = ns + -(-len(borrowed) // step)
        nr = nb + -(-len(replicated) // step)
        n = max(1, nr + -(-len(recreatable) // step))
        for i in range(n):
            if i < nc:
                batch = ReportBatch(added=objects[i * step : (i + 1) * step])
            elif i < ns:
                j = i - nc
                batch = ReportBatch(spilled=list(spilled[j * step : (j + 1) * step]))
            elif i < nb:
                j = i - ns
                batch = ReportBatch(borrowed=list(borrowed[j * step : (j + 1) * step]))
            elif i < nr:
                j = i - nb
                batch = ReportBatch(replicas=list(replicated[j * step : (j + 1) * step]))
            else:
                j = i - nr
                batch = ReportBatch(recreatable=list(recreatable[j * step : (j + 1) * step]))
            await stub.report(
                self._report_msg(batch, sync_begin=i == 0, sync_end=i == n - 1),
                timeout=self.timeout,
            )

    def _report_msg(
        self, batch: ReportBatch, sync_begin: bool = False, sync_end: bool = False
    ) -> pb.LocationReport:
        named_index = []
        names = []
        for i, (_, _, _, name) in enumerate(batch.added):
            if name:
                named_index.append(i)
                names.append(name)
        return pb.LocationReport(
            node_id=self.node_id,
            session=self.session,
            added_ids=join_ids(a[0] for a in batch.added),
            added_sizes=[a[1] for a in batch.added],
            added_primary=[a[2] for a in batch.added],
            named_index=named_index,
            names=names,
            removed_ids=join_ids(batch.removed),
            deleted_ids=join_ids(batch.deleted),
            spilled_ids=join_ids(s[0] for s in batch.spilled),
            spilled_urls=[s[1] for s in batch.spilled],
            borrowed_ids=join_ids(batch.borrowed),
            unborrowed_ids=join_ids(batch.unborrowed),
            replicas_ids=join_ids(r[0] for r in batch.replicas),
            replicas_counts=[r[1] for r in batch.replicas],
            recreatable_ids=join_ids(batch.recreatable),
            sync_begin=sync_begin,
            sync_end=sync_end,
        )

    async def _heartbeats(self, stub: Any) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await stub.heartbeat(
                pb.HeartbeatRequest(
                    node_id=self.node_id,
                    session=self.session,
                    usage=usage_to_pb(self._node.usage()),
                ),
                timeout=self.timeout,
            )

    async def _reports(self, stub: Any) -> None:
        """Send the book: the first change after a quiet spell at once, then at
        most one report per ``report_interval_s`` unless a full one is waiting.

        A report costs a few hundred microseconds of CPU on each side (HTTP/2 in
        Python), so reports are rate-limited rather than sent per change: at
        10,000 puts/s one report carries ~50 changes.
        """
        loop = asyncio.get_running_loop()
        interval = self.config.directory.report_interval_s
        last = -interval
        while True:
            await self._report_evt.wait()
            wait = last + interval - loop.time()
            if wait > 0 and len(self.book) < self.max_report and not self._flush_waiters:
                await asyncio.sleep(wait)
            self._report_evt.clear()
            if not len(self.book):
                self._wake_flushers()
                continue
            batch = self.book.take(self.max_report)
            self._inflight = True
            try:
                await stub.report(self._report_msg(batch), timeout=self.timeout)
            except BaseException:
                self.book.requeue(batch)
                raise
            finally:
                self._inflight = False
            last = loop.time()
            self.reports_sent += 1
            if len(self.book):
                self._report_evt.set()
            else:
                self._wake_flushers()

    def _wake_flushers(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def flush_reports(self) -> None:
        """Wait until every change made here so far has reached the directory.

        Called before requests whose answer depends on this node's own recent
        changes (a name freed by a delete here, then claimed again).
        """
        if not len(self.book) and not self._inflight:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(fut)
        self._report_evt.set()
        try:
            await fut
        finally:
            # Woken or cancelled: no longer waiting (a stale waiter would make
            # the reporter skip its rate limit).
            with contextlib.suppress(ValueError):
                self._flush_waiters.remove(fut)

    async def _subscription(self, link: Link) -> None:
        chunk = self.config.directory.max_lookup
        async with link.open_stream() as stream:
            ids = self.watches.resubscribe_all()
            await stream.send_message(
                pb.SubscribeRequest(
                    node_id=self.node_id, session=self.session, subscribe_ids=join_ids(ids[:chunk])
                )
            )
            for i in range(chunk, len(ids), chunk):
                await stream.send_message(
                    pb.SubscribeRequest(subscribe_ids=join_ids(ids[i : i + chunk]))
                )

            async def writer() -> None:
                while True:
                    await self._watch_evt.wait()
                    self._watch_evt.clear()
                    sub, unsub = self.watches.take_changes()
                    for i in range(0, max(len(sub), len(unsub)), chunk):
                        await stream.send_message(
                            pb.SubscribeRequest(
                                subscribe_ids=join_ids(sub[i : i + chunk]),
                                unsubscribe_ids=join_ids(unsub[i : i + chunk]),
                            )
                        )

            async def reader() -> None:
                while True:
                    note = await stream.recv_message()
                    if note is None:
                        raise ConnectionError("the directory closed the subscription stream")
                    self.notifications += 1
                    if note.free_ids:
                        self._listener.on_free(split_ids(note.free_ids))
                    if note.dead_nodes:
                        dead = note.dead_nodes
                        self._listener.on_dead(
                            [dead[i : i + NODE_ID_SIZE] for i in range(0, len(dead), NODE_ID_SIZE)]
                        )
                    # Borrowed first: an id is in one of the two lists only.
                    if note.borrowed_ids:
                        self._listener.on_borrowed(split_ids(note.borrowed_ids))
                    if note.unborrowed_ids:
                        self._listener.on_unborrowed(split_ids(note.unborrowed_ids))
                    if note.replicate_ids:
                        self._listener.on_replicate(split_ids(note.replicate_ids))
                    if note.updates is not None and note.updates.object_ids:
                        self.addresses.update(table_addresses(note.updates))
                        self._listener.on_update(table_to_rows(note.updates))

            await race(writer(), reader())

    # ------------------------------------------------------------ requests for the node
    async def _call(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run one RPC, retrying through reconnections until the request timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last: BaseException | None = None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                why = last or self._streak.last_error
                raise NodeUnavailableError(
                    f"{what}: the directory at {self.host}:{self.port} did not answer within "
                    f"{self.timeout:g}s ({_describe(why) if why else 'not registered'})"
                )
            stub = self._stub
            if stub is None or not self.registered.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self.registered.wait()
                continue
            try:
                async with asyncio.timeout(left):
                    await self.flush_reports()
                    return await fn(stub)
            except GRPCError as exc:
                if exc.status is not Status.FAILED_PRECONDITION:
                    addr = f"{self.host}:{self.port}"
                    refused = refusal(exc, addr, "this node", _NODE_HINT)
                    raise (refused or error_from_grpc(exc, what)) from exc
                # Not registered there (any more): the session re-registers.
                last = exc
            except _TRANSIENT as exc:
                last = exc
            await asyncio.sleep(min(_RETRY_S, max(0.0, deadline - loop.time())))

    async def reserve_name(self, name: str, oid: bytes, size: int) -> None:
        """Claim ``name`` for an object about to be created here (ObjectExistsError if taken)."""
        msg = pb.ReserveNameRequest(
            node_id=self.node_id, session=self.session, name=name, object_id=oid, size=size
        )
        await self._call("reserve name", lambda s: s.reserve_name(msg, timeout=self.timeout))

    async def resolve_name(self, name: str) -> ObjectRow:
        """The row of the object named ``name`` (ObjectNotFoundError if none)."""
        msg = pb.ResolveNameRequest(name=name)
        table = await self._call(
            "resolve name", lambda s: s.resolve_name(msg, timeout=self.timeout)
        )
        return table_to_rows(table)[0]

    async def delete(self, oids: list[bytes], names: Sequence[str] = ()) -> int:
        """Delete objects (by id and by name) everywhere; returns how many the directory knew."""
        msg = pb.DeleteRequest(node_id=self.node_id, object_ids=join_ids(oids), names=list(names))
        reply = await self._call("delete", lambda s: s.delete(msg, timeout=self.timeout))
        return reply.deleted

    async def lookup(self, oids: list[bytes]) -> list[ObjectRow]:
        """The current row of each object, in order."""
        msg = pb.LookupRequest(object_ids=join_ids(oids))
        return table_to_rows(
            await self._call("lookup", lambda s: s.lookup(msg, timeout=self.timeout))
        )

    async def relay(self, oid: bytes, exclude: Sequence[bytes] = ()) -> tuple[bytes, str] | None:
        """Receive ``oid`` through the relay tree: (node id, address) to pull it from,
        or None when no copy has room for another receiver (see
        :mod:`objstore.directory.relays`)."""
        msg = pb.RelayRequest(
            node_id=self.node_id, session=self.session, object_id=oid, exclude=b"".join(exclude)
        )
        reply = await self._call("relay", lambda s: s.relay(msg, timeout=self.timeout))
        if not reply.source:
            return None
        return reply.source, reply.address

    async def unrelay(self, oid: bytes) -> None:
        """This node stopped receiving ``oid``: nobody is to be attached to it any more."""
        msg = pb.RelayRequest(
            node_id=self.node_id, session=self.session, object_id=oid, detach=True
        )
        await self._call("relay detach", lambda s: s.relay(msg, timeout=self.timeout))


def _root(exc: BaseException | None) -> BaseException | None:
    """The error a session failed with, under the NodeUnavailableError it was wrapped in."""
    return exc.__cause__ if exc is not None and exc.__cause__ is not None else exc


def _tls_hint(credentials: Credentials, who: str, exc: BaseException | None) -> str:
    """Why a TLS connection may have dropped: a directory closes one whose
    certificate its CA did not sign, and the client only sees the drop."""
    if credentials.tls is None or not isinstance(exc, StreamTerminatedError | ConnectionError):
        return ""
    return f" (with TLS: does the directory trust {who}'s certificate? Check --tls-cert/--tls-ca)"


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    if isinstance(exc, GRPCError):
        return f"{exc.status.name}: {exc.message}"
    return str(exc) or type(exc).__name__


_TOOL_HINT = (
    "pass a copy of the head's token with --token-file FILE (the head publishes it, "
    "for its own user on its own machine, where this tool finds it by itself)"
)


class DirectoryAdmin:
    """A plain client of the directory for tools, tests and benchmarks.

    Without ``credentials`` it takes the token the head published on this
    machine (ConfigError if there is none).
    """

    def __init__(
        self, address: str, timeout: float = 10.0, credentials: Credentials | None = None
    ) -> None:
        self.host, self.port = parse_address(address, "--directory")
        self.timeout = timeout
        # Tools on the head's machine find the token the head published.
        self.credentials = credentials or member_credentials(SecurityConfig(), address)
        self.channel = open_channel(self.host, self.port, self.credentials)
        self.stub = pb.DirectoryStub(self.channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    async def _call(self, what: str, coro: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await coro
        except (GRPCError, ssl.SSLError) as exc:
            address = f"{self.host}:{self.port}"
            refused = refusal(exc, address, "this tool", _TOOL_HINT)
            if refused is not None:
                raise AuthenticationError(f"{what}: {refused}") from exc
            if isinstance(exc, GRPCError):
                raise error_from_grpc(exc, what) from exc
            raise NodeUnavailableError(
                f"{what}: cannot reach the directory at {address}: {_describe(exc)}"
            ) from exc
        except _TRANSIENT as exc:
            raise NodeUnavailableError(
                f"{what}: cannot reach the directory at {self.host}:{self.port}: "
                f"{_describe(exc)}{_tls_hint(self.credentials, 'this tool', exc)}"
            ) from exc

    async def cluster_status(self) -> pb.ClusterStatusReply:
        return await self._call("status", self.stub.cluster_status(pb.ClusterStatusRequest()))

    async def list_objects(self, limit: int = 1000) -> tuple[list[ObjectRow], int]:
        table = await self._call(
            "memory", self.stub.list_objects(pb.ListObjectsRequest(limit=limit))
        )
        return table_to_rows(table), table.total

    async def lookup(self, oids: list[bytes]) -> list[ObjectRow]:
        table = await self._call(
            "lookup", self.stub.lookup(pb.LookupRequest(object_ids=join_ids(oids)))
        )
        return table_to_rows(table)
