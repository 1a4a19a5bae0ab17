"""The node's Unix socket server for local clients: frames in, service calls, frames out.

Each connection starts with ``Hello`` / ``HelloReply`` on the raw socket: the
reply carries the arena's (or a fallback segment's) file descriptor over
SCM_RIGHTS.  A session connection is then handed to an asyncio protocol that
decodes length-prefixed ``Request`` frames and writes ``Reply`` frames.
Requests that need no waiting are answered inside ``data_received``, in
order, and the replies of one read go out in one write; requests that wait
(gets of unsealed objects, creates that must make room, waits) run as tasks.

What a request means (names, gets that wait, deletes across the cluster) is
the object service's business (:class:`~objstore.plasma.api.LocalObjects`);
this module only decodes, calls and encodes.  A malformed, truncated or
oversized frame closes that connection only, and is logged; the node keeps
serving everyone else.

Who may connect is the kernel's word (``SO_PEERCRED``), read as each
connection is accepted: the node's own uid, ``node.allowed_uids``, or a
primary gid in ``node.allowed_gids``.  Anyone else gets a ``HelloReply``
with ``ERROR_CODE_UNAUTHENTICATED`` (the client raises
:class:`~objstore.errors.AuthenticationError`) and never a file descriptor.
Where the socket may live is :mod:`objstore.plasma.socketdir`'s business.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Awaitable, Coroutine
from typing import Any, cast

import structlog

from objstore.config import Config, default_socket_path
from objstore.errors import ConfigError, ObjectStoreError, ProtocolError
from objstore.lograte import LogLimiter
from objstore.plasma.api import Entry, LocalObjects
from objstore.plasma.socketdir import (
    check_user_dir,
    prepare_socket_dir,
    prepare_socket_path,
    reachable_by_others,
)
from objstore.plasma.table import ClientState
from objstore.protocol import (
    HEADER,
    PROTOCOL_VERSION,
    FrameDecoder,
    encode_frame,
    exception_to_error,
    pb,
)
from objstore.protocol.handshake import PeerCredentials, peer_credentials
from objstore.tasks import TaskSet

__all__ = ["PlasmaServer", "prepare_socket_path", "Admission"]

log = structlog.get_logger("objstore.plasma.server")

_HELLO_MAX = 4096
_HANDSHAKE_TIMEOUT = 5.0
_OWNED_COMPACT_EVERY = 1 << 16
# A refused uid is logged at most once in this many seconds.
_REFUSAL_LOG_EVERY_S = 60.0
# Get replies of more objects than this are built in slices of this many.
_BATCH = 8192
# The counters of a StatsReply, as the object service names them.
_STATS_INT = (
    "capacity", "used", "fallback_used", "pinned_bytes", "objects", "sealed", "creating",
    "evictable_bytes", "evictions", "largest_free", "puts", "gets", "prefaulted", "clients",
    "pulled", "bytes_pulled", "chunks_served", "bytes_served", "spilled_objects",
    "spilled_bytes", "spill_files", "bytes_spilled", "restored", "bytes_restored",
    "spill_write_errors", "restore_errors", "spill_files_deleted", "refused_peers",
    "relayed_pulls", "relayed_from_partial", "relay_switches", "relayed_chunks",
)  # fmt: skip


class Admission:
    """Who may use the local socket: the node's uid, allowed uids, allowed primary gids."""

    def __init__(self, uid: int, uids: tuple[int, ...], gids: tuple[int, ...]) -> None:
        self.uid = uid
        self.uids = frozenset(uids)
        self.gids = frozenset(gids)

    @property
    def shared(self) -> bool:
        """Whether users other than the node's own are admitted at all."""
        return bool(self.uids or self.gids)

    def allows(self, peer: PeerCredentials) -> bool:
        return peer.uid == self.uid or peer.uid in self.uids or peer.gid in self.gids

    def refusal(self, path: str, peer: PeerCredentials) -> str:
        """What a refused client is told: who is served, who it is, what to set."""
        served = f"uid {self.uid}"
        if self.uids:
            served += ", uids " + ", ".join(map(str, sorted(self.uids)))
        if self.gids:
            served += " and gids " + ", ".join(map(str, sorted(self.gids)))
        else:
            served += " only"
        return (
            f"the node at {path} serves {served}; this process runs as uid {peer.uid} "
            f"(gid {peer.gid}) (allow it with node.allowed_uids, e.g. "
            f"OBJSTORE_NODE_ALLOWED_UIDS={peer.uid}, or node.allowed_gids)"
        )


class PlasmaServer:
    """Accepts local clients and serves the node's objects to them."""

    def __init__(self, objects: LocalObjects, config: Config, node_id: bytes) -> None:
        self.objects = objects
        self.config = config
        self.node_id = node_id
        self.path = config.socket_path
        self.admission = Admission(os.getuid(), config.node.allowed_uids, config.node.allowed_gids)
        # A refused uid is logged once per minute (a client retrying in a loop).
        self.refusals = LogLimiter(_REFUSAL_LOG_EVERY_S, max_keys=4096)
        # Local clients refused since start (the stats' refused_clients).
        self.refused = 0
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handshakes = TaskSet("plasma-handshake")
        self.connections: set[_Connection] = set()
        self._next_client = 1
        self._closing = False

    async def bind(self) -> None:
        """Bind the socket; clients queue until :meth:`serve`.

        The socket is 0600, or 0666 when other users are admitted (then
        ``SO_PEERCRED`` is what keeps everyone else out); its directory is
        checked first (:mod:`objstore.plasma.socketdir`).
        """
        shared = self.admission.shared
        directory = os.path.dirname(os.path.abspath(self.path))
        if self.path == default_socket_path():
            prepare_socket_dir(directory, shared)
        else:
            check_user_dir(directory)
            if shared and not reachable_by_others(directory):
                log.warning(
                    "node.allowed_uids/allowed_gids are set but other users cannot reach "
                    "the socket: its directory is not searchable by them (chmod o+x it)",
                    directory=directory,
                )
        prepare_socket_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"plasma.socket: cannot bind {self.path}: {exc.strerror}") from exc
        finally:
            os.umask(old)
        os.chmod(self.path, 0o666 if shared else 0o600)
        sock.listen(512)
        sock.setblocking(False)
        self._listener = sock

    def serve(self) -> None:
        """Start accepting clients."""
        assert self._listener is not None, "bind() first"
        self._accept_task = asyncio.get_running_loop().create_task(
            self._accept_loop(), name="plasma-accept"
        )

    async def start(self) -> None:
        """Bind and serve at once (a server on its own: tests, tools)."""
        await self.bind()
        self.serve()

    async def close_connections(self) -> None:
        """Stop accepting and close every client's connection."""
        self._closing = True
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        self._handshakes.cancel()
        for conn in list(self.connections):
            conn.close()
        await asyncio.sleep(0)

    async def close(self) -> None:
        """Close every connection and remove the socket file."""
        await self.close_connections()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed; backing off", error=exc.strerror)
                    await asyncio.sleep(0.1)
                    continue
                raise
            self._handshakes.spawn(self._handshake(sock))

    def _refuse(self, peer: PeerCredentials) -> pb.HelloReply:
        """The reply for a client whose uid is not admitted (and its log line, now and then)."""
        message = self.admission.refusal(self.path, peer)
        self.refused += 1
        unlogged = self.refusals.note(peer.uid)
        if unlogged is not None:
            log.warning(
                "local client refused: its uid is not allowed on this socket",
                uid=peer.uid,
                gid=peer.gid,
                pid=peer.pid,
                socket=self.path,
                refused_since_last_line=unlogged,
            )
        reply = pb.HelloReply(version=PROTOCOL_VERSION)
        reply.error.code = pb.ERROR_CODE_UNAUTHENTICATED
        reply.error.message = message
        return reply

    async def _handshake(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        try:
            peer = peer_credentials(sock)
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                # Read the hello even from a client about to be refused: closing
                # a Unix socket with unread bytes resets it, and the client would
                # see ECONNRESET instead of the reason.
                hello = await _read_frame(loop, sock, _HELLO_MAX)
            if not self.admission.allows(peer):
                data = encode_frame(self._refuse(peer).SerializeToString())
                async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                    await loop.sock_sendall(sock, data)
                sock.close()
                return
            try:
                msg = pb.Hello.FromString(hello)
            except Exception as exc:
                raise ProtocolError(f"malformed hello: {exc}") from exc
            reply = pb.HelloReply(version=PROTOCOL_VERSION, node_id=self.node_id)
            pc = self.config.plasma
            fd = -1
            if msg.version != PROTOCOL_VERSION:
                log.warning(
                    "handshake failed: protocol version not served",
                    version=msg.version,
                    served=PROTOCOL_VERSION,
                    pid=msg.pid,
                )
                reply.error.code = pb.ERROR_CODE_PROTOCOL
                reply.error.message = f"protocol version {msg.version} is not served here (node speaks {PROTOCOL_VERSION})"
            else:
                seg = self.objects.segment_fd(msg.segment)
                if seg is None:
                    reply.error.code = pb.ERROR_CODE_NOT_FOUND
                    reply.error.message = f"no segment {msg.segment}"
                else:
                    fd, size = seg
                    reply.segment = msg.segment
                    reply.segment_size = size
                    reply.inline_max_bytes = pc.inline_max_bytes
                    reply.parallel_copy_min_bytes = pc.parallel_copy_min_bytes
                    reply.copy_threads = pc.copy_threads or (os.cpu_count() or 1)
                    reply.max_frame_bytes = pc.max_frame_bytes
                    reply.max_recreations = self.config.lifecycle.max_recreations
                    if msg.segment == 0:
                        reply.warm_bytes = min(pc.prefault_bytes, size)
                        reply.warm_now_bytes = min(pc.prefault_before_ready_bytes, reply.warm_bytes)
            data = encode_frame(reply.SerializeToString())
            fds = (
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd >= 0 else []
            )
            # A fresh socket's buffer holds a small frame: this does not block.
            sent = sock.sendmsg([data], fds)
            if sent < len(data):
                await loop.sock_sendall(sock, data[sent:])
            if fd < 0 or msg.segment != 0 or self._closing:
                sock.close()
                return
        except (ProtocolError, TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            log.warning("handshake failed; connection closed", error=str(exc) or type(exc).__name__)
            sock.close()
            return
        except BaseException:
            sock.close()
            raise
        client = ClientState(self._next_client, lambda ids: None, pid=peer.pid or msg.pid)
        self._next_client += 1
        try:
            await loop.connect_accepted_socket(lambda: _Connection(self, client), sock)
        except OSError as exc:
            log.warning("cannot start session", error=str(exc))
            sock.close()


async def _read_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket, limit: int) -> bytes:
    header = await _recv_exact(loop, sock, HEADER.size)
    (size,) = HEADER.unpack(header)
    if size > limit:
        raise ProtocolError(f"hello frame of {size} bytes is over the limit {limit}")
    return await _recv_exact(loop, sock, size)


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(buf), n)
        buf += chunk
    return bytes(buf)


class _Connection(asyncio.Protocol):
    """One client session."""

    def __init__(self, server: PlasmaServer, client: ClientState) -> None:
        self.server = server
        self.objects = server.objects
        self.client = client
        client.invalidate = self._invalidate
        client.recreate = self._recreate
        self.decoder = FrameDecoder(server.config.plasma.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        # Requests that wait (a get of an object not sealed yet, a create making room).
        self.tasks = TaskSet("plasma-request")
        self._out: list[bytes] | None = None
        self._closed = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.objects.connected(self.client)
        log.debug("client connected", client=self.client.client_id, pid=self.client.pid)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.decoder.pending and not self._closed:
            log.warning(
                "protocol error: connection closed inside a frame",
                client=self.client.client_id,
                pid=self.client.pid,
                pending_bytes=self.decoder.pending,
            )
        self._closed = True
        self.server.connections.discard(self)
        self.tasks.cancel()
        self.objects.disconnected(self.client)
        log.debug("client disconnected", client=self.client.client_id, pid=self.client.pid)

    def close(self) -> None:
        """Close the connection (its state is cleaned up in ``connection_lost``)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        out: list[bytes] = []
        self._out = out
        try:
            for frame in self.decoder.feed(data):
                try:
                    req = pb.Request.FromString(frame)
                except Exception as exc:
                    raise ProtocolError(f"malformed request frame: {exc}") from exc
                self._dispatch(req)
                if self._closed:
                    return
        except ProtocolError as exc:
            log.warning(
                "protocol error; closing this client's connection",
                client=self.client.client_id,
                pid=self.client.pid,
                error=str(exc),
            )
            self._out = None
            self._flush(out)
            self._closed = True
            assert self.transport is not None
            self.transport.abort()
            return
        self._out = None
        self._flush(out)

    def eof_received(self) -> bool | None:
        return None

    # -- output
    def _flush(self, out: list[bytes]) -> None:
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _send(self, reply: pb.Reply) -> None:
        if self._closed:
            return
        frame = encode_frame(reply.SerializeToString())
        if self._out is not None:
            self._out.append(frame)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def _send_error(self, req_id: int, exc: BaseException) -> None:
        if req_id == 0:
            return
        reply = pb.Reply(id=req_id)
        exception_to_error(exc, reply.error)
        self._send(reply)

    def _invalidate(self, ids: list[bytes]) -> None:
        reply = pb.Reply(id=0)
        reply.invalidate.object_ids.extend(ids)
        self._send(reply)

    def _recreate(self, ids: list[bytes]) -> None:
        reply = pb.Reply(id=0)
        reply.recreate.object_ids.extend(ids)
        self._send(reply)

    def _spawn(self, req_id: int, coro: Coroutine[Any, Any, pb.Reply | None]) -> None:
        """Serve a request that waits: its reply (or error) is sent when it is done."""
        self.tasks.spawn(self._answer(req_id, coro))

    async def _answer(self, req_id: int, coro: Coroutine[Any, Any, pb.Reply | None]) -> None:
        try:
            reply = await coro
        except ObjectStoreError as exc:
            self._send_error(req_id, exc)
            return
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("request failed", client=self.client.client_id)
            self._send_error(req_id, ObjectStoreError(f"internal error: {exc!r}"))
            return
        if reply is not None and req_id:
            self._send(reply)

    # -- requests
    def _dispatch(self, req: pb.Request) -> None:
        kind = req.WhichOneof("body")
        handler = _HANDLERS.get(kind)  # type: ignore[arg-type]
        if handler is None:
            raise ProtocolError(f"request {req.id} has no known body ({kind!r})")
        try:
            handler(self, req)
        except ProtocolError:
            raise
        except ObjectStoreError as exc:
            self._send_error(req.id, exc)
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("request failed", kind=kind, client=self.client.client_id)
            self._send_error(req.id, ObjectStoreError(f"internal error: {exc!r}"))

    @staticmethod
    def _put_reply(req_id: int, entry: Entry) -> pb.Reply:
        reply = pb.Reply(id=req_id)
        put = reply.put
        put.segment = entry.segment
        put.offset = entry.offset
        return reply

    async def _created(self, req_id: int, made: Awaitable[Entry], body: Any) -> pb.Reply:
        entry = await made
        self._held(body)
        return self._put_reply(req_id, entry)

    def _held(self, body: Any) -> None:
        """A put (PutInline or Create) succeeded: the object service counts its holds."""
        self.objects.put_held(
            self.client,
            body.object_id,
            body.name,
            body.contained_ids,
            body.call_site,
            body.recreatable,
        )

    def _on_put_inline(self, req: pb.Request) -> None:
        body = req.put_inline
        objects, client = self.objects, self.client
        objects.note_owned(client, _OWNED_COMPACT_EVERY)
        if body.recreated:
            objects.replace_lost(body.object_id)
        entry = objects.put_inline_now(client, body.object_id, body.data, body.metadata, body.name)
        if entry is not None:
            self._held(body)
            if req.id:
                self._send(self._put_reply(req.id, entry))
            return
        made = objects.put_inline(client, body.object_id, body.data, body.metadata, body.name)
        self._spawn(req.id, self._created(req.id, made, body))

    def _on_create(self, req: pb.Request) -> None:
        body = req.create
        objects, client = self.objects, self.client
        objects.note_owned(client, _OWNED_COMPACT_EVERY)
        args = (client, body.object_id, body.data_size, body.metadata, body.name)
        if body.recreated:
            objects.replace_lost(body.object_id)
        entry = objects.create_now(*args)
        if entry is not None:
            self._held(body)
            if req.id:
                self._send(self._put_reply(req.id, entry))
            return
        self._spawn(req.id, self._created(req.id, objects.create(*args), body))

    def _on_seal(self, req: pb.Request) -> None:
        self.objects.seal(self.client, req.seal.object_id)
        if req.id:
            self._send(pb.Reply(id=req.id))

    def _on_abort(self, req: pb.Request) -> None:
        self.objects.abort(self.client, req.abort.object_id)
        if req.id:
            self._send(pb.Reply(id=req.id))

    def _on_release(self, req: pb.Request) -> None:
        self.objects.release(self.client, list(req.release.object_ids))

    def _on_recreate_failed(self, req: pb.Request) -> None:
        body = req.recreate_failed
        self.objects.recreate_failed(self.client, body.object_id, body.message)

    def _on_replicate(self, req: pb.Request) -> None:
        body = req.replicate
        timeout = body.timeout_ms / 1000 if body.timeout_ms > 0 else float("inf")
        self._spawn(req.id, self._replicated(req.id, body.object_id, body.replicas, timeout))

    async def _replicated(self, req_id: int, oid: bytes, count: int, timeout: float) -> pb.Reply:
        await self.objects.replicate(self.client, oid, count, timeout)
        return pb.Reply(id=req_id)

    def _on_refs(self, req: pb.Request) -> None:
        body = req.refs
        self.objects.refs_changed(
            self.client, body.added_ids, body.dropped_ids, body.pickled_ids, list(body.added_sites)
        )

    def _on_get(self, req: pb.Request) -> None:
        body = req.get
        ids = list(body.object_ids)
        timeout = None if body.timeout_ms < 0 else body.timeout_ms / 1000.0
        got = self.objects.get_now(self.client, ids, body.name)
        if got is not None:
            self._send(self._get_reply(req.id, *got))
            return
        earlier = (list(body.earlier_ids), list(body.earlier_node_ids))
        self._spawn(req.id, self._get_slow(req.id, ids, body.name, timeout, earlier))

    async def _get_slow(
        self,
        req_id: int,
        ids: list[bytes],
        name: str,
        timeout: float | None,
        earlier: tuple[list[bytes], list[bytes]] = ([], []),
    ) -> pb.Reply | None:
        if earlier[0]:
            # Objects of the client's session with an earlier node process: lost
            # at once when no copy is left, rather than waited for.
            loop = asyncio.get_running_loop()
            start = loop.time()
            await self.objects.check_earlier(earlier[0], earlier[1], timeout)
            if timeout is not None:
                timeout = max(0.0, timeout - (loop.time() - start))
        all_ids, entries = await self.objects.get(self.client, ids, name, timeout)
        reply = pb.Reply(id=req_id)
        for start in range(0, len(all_ids), _BATCH):
            if self._closed:  # its disconnect released every pin already
                return None
            end = start + _BATCH
            self._get_reply(req_id, all_ids[start:end], entries[start:end], reply)
            if end < len(all_ids):
                await asyncio.sleep(0)
        return reply

    @staticmethod
    def _get_reply(
        req_id: int,
        ids: list[bytes],
        entries: list[Any],
        reply: pb.Reply | None = None,
    ) -> pb.Reply:
        """Add each (pinned) object's location to a get reply."""
        if reply is None:
            reply = pb.Reply(id=req_id)
        objects = reply.get.objects
        for oid, entry in zip(ids, entries):
            objects.add(
                object_id=oid,
                segment=entry.segment,
                offset=entry.offset,
                data_size=entry.size,
                metadata=entry.meta,
            )
        return reply

    def _on_delete(self, req: pb.Request) -> None:
        body = req.delete
        ids = list(body.object_ids)
        n = self.objects.delete_now(ids, body.name)
        if n is not None:
            if req.id:
                self._send(pb.Reply(id=req.id, delete=pb.DeleteReply(deleted=n)))
            return
        self._spawn(req.id, self._delete_slow(req.id, ids, body.name))

    async def _delete_slow(self, req_id: int, ids: list[bytes], name: str) -> pb.Reply:
        n = await self.objects.delete(ids, name)
        return pb.Reply(id=req_id, delete=pb.DeleteReply(deleted=n))

    def _on_wait(self, req: pb.Request) -> None:
        body = req.wait
        ids = list(body.object_ids)
        num = body.num_returns or 1
        timeout = None if body.timeout_ms < 0 else body.timeout_ms / 1000.0
        ready = self.objects.wait_now(ids, num, timeout)
        if ready is not None:
            self._send(pb.Reply(id=req.id, wait=pb.WaitReply(ready=ready)))
            return
        self._spawn(req.id, self._wait_slow(req.id, ids, num, timeout))

    async def _wait_slow(
        self, req_id: int, ids: list[bytes], num: int, timeout: float | None
    ) -> pb.Reply:
        ready = await self.objects.wait(ids, num, timeout)
        return pb.Reply(id=req_id, wait=pb.WaitReply(ready=ready))

    def _on_contains(self, req: pb.Request) -> None:
        present = self.objects.contains(req.contains.object_id)
        self._send(pb.Reply(id=req.id, contains=pb.ContainsReply(present=present)))

    def _on_stats(self, req: pb.Request) -> None:
        s = self.objects.stats()
        reply = pb.Reply(id=req.id)
        st = reply.stats
        st.node_id = self.server.node_id
        for key in _STATS_INT:
            if key in s:
                setattr(st, key, int(s[key]))
        st.uptime_s = float(s["uptime_s"])
        if "directory" in s:
            st.directory = s["directory"]
        if "spill" in s:
            st.spill = s["spill"]
        st.refused_clients = self.server.refused
        self._send(reply)

    def _on_list(self, req: pb.Request) -> None:
        total, rows = self.objects.list_objects(req.list_objects.limit)
        reply = pb.Reply(id=req.id)
        lst = reply.list_objects
        lst.total = total
        for row in rows:
            lst.objects.add(**row)
        self._send(reply)


_HANDLERS = {
    "put_inline": _Connection._on_put_inline,
    "create": _Connection._on_create,
    "seal": _Connection._on_seal,
    "abort": _Connection._on_abort,
    "release": _Connection._on_release,
    "get": _Connection._on_get,
    "delete": _Connection._on_delete,
    "wait": _Connection._on_wait,
    "contains": _Connection._on_contains,
    "stats": _Connection._on_stats,
    "list_objects": _Connection._on_list,
    "refs": _Connection._on_refs,
    "recreate_failed": _Connection._on_recreate_failed,
    "replicate": _Connection._on_replicate,
}
