"""The node's Unix socket server for local clients.

Each connection starts with ``Hello`` / ``HelloReply`` on the raw socket: the
reply carries the arena's (or a fallback segment's) file descriptor over
SCM_RIGHTS.  A session connection is then handed to an asyncio protocol that
decodes length-prefixed ``Request`` frames and writes ``Reply`` frames.
Requests that need no waiting are answered inside ``data_received``, in
order, and the replies of one read go out in one write; requests that wait
(gets of unsealed objects, creates that must make room, waits) run as tasks.

A malformed, truncated or oversized frame closes that connection only, and is
logged; the node keeps serving everyone else.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import structlog

from objstore.config import Config, default_socket_path
from objstore.errors import (
    ConfigError,
    GetTimeoutError,
    ObjectNotFoundError,
    ObjectStoreError,
    ProtocolError,
)
from objstore.plasma.lifecycle import ObjectState
from objstore.plasma.store import ClientState, ObjectEntry, PlasmaStore

if TYPE_CHECKING:
    from objstore.directory.client import DirectoryClient
from objstore.protocol import (
    HEADER,
    PROTOCOL_VERSION,
    FrameDecoder,
    encode_frame,
    exception_to_error,
    pb,
)

__all__ = ["PlasmaServer", "prepare_socket_path"]

log = structlog.get_logger("objstore.plasma.server")

_HELLO_MAX = 4096
_HANDSHAKE_TIMEOUT = 5.0
_OWNED_COMPACT_EVERY = 1 << 16
# Gets and deletes of more objects than this are served in slices of this many.
_BATCH = 8192


def prepare_socket_path(path: str) -> None:
    """Check a socket path before binding: its directory exists, no live node owns it.

    A stale socket file (nothing accepts on it) is removed.  Raises
    :class:`ConfigError` with a clear message otherwise.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"plasma.socket: the directory {directory} does not exist")
    if len(os.fsencode(path)) > 107:
        raise ConfigError(f"plasma.socket: path is longer than 107 bytes: {path}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"plasma.socket: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket file", path=path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as exc:
        raise ConfigError(f"plasma.socket: cannot check {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    raise ConfigError(f"plasma.socket: a live node already serves {path}")


class PlasmaServer:
    """Accepts local clients and serves the :class:`PlasmaStore` to them."""

    def __init__(self, store: PlasmaStore, config: Config, node_id: bytes) -> None:
        self.store = store
        self.config = config
        self.node_id = node_id
        self.path = config.socket_path
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._reapers: set[asyncio.Task[None]] = set()
        self.connections: set[_Connection] = set()
        self._next_client = 1
        self._closing = False
        # In a cluster: names are unique cluster-wide and deletes reach every node.
        self.directory: DirectoryClient | None = None
        # In a cluster: (objects pulled, bytes pulled, chunks served, bytes served).
        self.transfer_stats: Callable[[], tuple[int, int, int, int]] | None = None
        # The spill manager's counters (``SpillManager.stats``) and its copies' URLs.
        self.spill_stats: Callable[[], dict[str, int]] | None = None
        self.spill_url_of: Callable[[bytes], str] | None = None
        self.spill_target = ""

    async def start(self) -> None:
        """Bind the socket (mode 0600) and start accepting."""
        if self.path == default_socket_path():
            # Our own default directory: create it, private to this user.
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
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
        os.chmod(self.path, 0o600)
        sock.listen(512)
        sock.setblocking(False)
        self._listener = sock
        self._accept_task = asyncio.get_running_loop().create_task(
            self._accept_loop(), name="plasma-accept"
        )

    def reap(self, client: ClientState) -> None:
        """Free a gone client's objects in the background (see ``PlasmaStore.reap``)."""
        if not client.owned:
            return
        task = asyncio.get_running_loop().create_task(self.store.reap(client), name="reap")
        self._reapers.add(task)
        task.add_done_callback(self._reaped)

    def _reaped(self, task: asyncio.Task[None]) -> None:
        self._reapers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("freeing a gone client's objects failed", error=repr(task.exception()))

    async def close(self) -> None:
        """Stop accepting, close every connection, remove the socket file."""
        self._closing = True
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        for task in list(self._handshakes):
            task.cancel()
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        for conn in list(self.connections):
            conn.close()
        await asyncio.sleep(0)
        for task in list(self._reapers):
            task.cancel()

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
            task = loop.create_task(self._handshake(sock))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        try:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                hello = await _read_frame(loop, sock, _HELLO_MAX)
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
                seg = self.store.segments.get(msg.segment)
                if seg is None:
                    reply.error.code = pb.ERROR_CODE_NOT_FOUND
                    reply.error.message = f"no segment {msg.segment}"
                else:
                    fd = seg.fd
                    reply.segment = seg.segment_id
                    reply.segment_size = seg.size
                    reply.inline_max_bytes = pc.inline_max_bytes
                    reply.parallel_copy_min_bytes = pc.parallel_copy_min_bytes
                    reply.copy_threads = pc.copy_threads or (os.cpu_count() or 1)
                    reply.max_frame_bytes = pc.max_frame_bytes
                    if seg.segment_id == 0:
                        reply.warm_bytes = min(pc.prefault_bytes, seg.size)
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
        client = ClientState(self._next_client, lambda ids: None, pid=msg.pid)
        self._next_client += 1
        try:
            await loop.connect_accepted_socket(lambda: _Connection(self, client), sock)
        except OSError as exc:
            log.warning("cannot start session", error=str(exc))
            sock.close()
            self.store.disconnect(client)
            self.reap(client)


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
        self.store = server.store
        self.client = client
        client.invalidate = self._invalidate
        self.decoder = FrameDecoder(server.config.plasma.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self._out: list[bytes] | None = None
        self._closed = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
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
        for task in list(self.tasks):
            task.cancel()
        self.store.disconnect(self.client)
        self.server.reap(self.client)
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

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

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

    def _note_owned(self) -> None:
        client = self.client
        if client.stale >= _OWNED_COMPACT_EVERY and 2 * client.stale >= len(client.owned):
            self.store.compact_owned(client)

    def _put_reply(self, req_id: int, entry: ObjectEntry) -> None:
        if req_id:
            reply = pb.Reply(id=req_id)
            put = reply.put
            put.segment = entry.segment
            put.offset = entry.offset
            self._send(reply)

    def _on_put_inline(self, req: pb.Request) -> None:
        body = req.put_inline
        store = self.store
        if body.name and self.server.directory is not None:
            self._create_named(
                req.id,
                body.object_id,
                body.name,
                len(body.data),
                lambda: store.put_inline_slow(
                    body.object_id, body.data, body.metadata, self.client, body.name
                ),
            )
            return
        self._create(
            req.id,
            store.put_inline(body.object_id, body.data, body.metadata, self.client, body.name),
            lambda: store.put_inline_slow(
                body.object_id, body.data, body.metadata, self.client, body.name
            ),
        )

    def _on_create(self, req: pb.Request) -> None:
        body = req.create
        store = self.store
        args = (body.object_id, body.data_size, body.metadata, self.client, body.name)
        if body.name and self.server.directory is not None:
            self._create_named(
                req.id, body.object_id, body.name, body.data_size, lambda: store.create(*args)
            )
            return
        self._create(req.id, store.create_now(*args), lambda: store.create(*args))

    def _create_named(
        self,
        req_id: int,
        object_id: bytes,
        name: str,
        size: int,
        create: Callable[[], Awaitable[ObjectEntry]],
    ) -> None:
        """In a cluster, a name is claimed in the directory before the object is created."""
        directory = self.server.directory
        assert directory is not None
        self._note_owned()
        # The local checks first: a name taken here fails without a round trip.
        self.store.precheck_create(object_id, name, self.client)

        async def claim_then_create() -> None:
            try:
                await directory.reserve_name(name, object_id, size)
            except ObjectStoreError as exc:
                self._send_error(req_id, exc)
                return
            try:
                made = await create()
            except ObjectStoreError as exc:
                directory.deleted(object_id)  # give the name back
                self._send_error(req_id, exc)
                return
            except BaseException:
                directory.deleted(object_id)
                raise
            self._put_reply(req_id, made)

        self._spawn(claim_then_create())

    def _create(
        self,
        req_id: int,
        entry: ObjectEntry | None,
        slow: Callable[[], Awaitable[ObjectEntry]],
    ) -> None:
        """Answer a create or inline put: now, or once room was made (``slow``)."""
        self._note_owned()
        if entry is not None:
            self._put_reply(req_id, entry)
            return

        async def wait_for_room() -> None:
            # The store refuses to register an object for a client that left
            # while room was made, so nothing is left behind on disconnect.
            try:
                made = await slow()
            except ObjectStoreError as exc:
                self._send_error(req_id, exc)
                return
            self._put_reply(req_id, made)

        self._spawn(wait_for_room())

    def _on_seal(self, req: pb.Request) -> None:
        self.store.seal(req.seal.object_id, self.client)
        if req.id:
            self._send(pb.Reply(id=req.id))

    def _on_abort(self, req: pb.Request) -> None:
        self.store.abort(req.abort.object_id, self.client)
        if req.id:
            self._send(pb.Reply(id=req.id))

    def _on_release(self, req: pb.Request) -> None:
        release = self.store.release
        client = self.client
        for oid in req.release.object_ids:
            release(oid, client)

    def _on_get(self, req: pb.Request) -> None:
        body = req.get
        store = self.store
        ids = list(body.object_ids)
        timeout = None if body.timeout_ms < 0 else body.timeout_ms / 1000.0
        if body.name:
            oid = store.names.get(body.name)
            if oid is None and self.server.directory is not None:
                self._spawn(self._get_remote_name(req.id, ids, body.name, timeout))
                return
            ids.append(store.lookup_name(body.name))
        if not ids:
            self._send(pb.Reply(id=req.id, get=pb.GetReply()))
            return
        if len(ids) <= _BATCH:
            entries = [store.get_now(oid) for oid in ids]
            if all(e is not None for e in entries):
                self._send(self._get_reply(req.id, ids, entries))  # type: ignore[arg-type]
                return
        # Waits for unsealed objects, and answers big lists in slices so the
        # loop keeps serving others.
        self._spawn(self._get_slow(req.id, ids, timeout))

    async def _get_remote_name(
        self, req_id: int, ids: list[bytes], name: str, timeout: float | None
    ) -> None:
        """A get by a name this node does not know: ask the directory, then get the id."""
        directory = self.server.directory
        assert directory is not None
        try:
            async with asyncio.timeout(timeout):
                row = await directory.resolve_name(name)
        except TimeoutError:
            self._send_error(req_id, GetTimeoutError(f"get timed out resolving the name {name!r}"))
            return
        except ObjectStoreError as exc:
            self._send_error(req_id, exc)
            return
        if self.store.was_deleted(row.object_id):
            # Deleted here a moment ago; the directory has not heard yet.
            self._send_error(req_id, ObjectNotFoundError(f"no object is named {name!r}"))
            return
        await self._get_slow(req_id, [*ids, row.object_id], timeout)

    async def _get_slow(self, req_id: int, ids: list[bytes], timeout: float | None) -> None:
        store = self.store
        waits: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(timeout):
                missing = []
                for i, oid in enumerate(ids):
                    if store.get_now(oid) is None:
                        missing.append(oid)
                    if i % _BATCH == _BATCH - 1:
                        await asyncio.sleep(0)
                if len(missing) == 1:
                    await store.wait_sealed(missing[0])
                elif missing:
                    # Wait for all at once: in a cluster each missing object is
                    # subscribed to (and pulled) now, not after the one before it.
                    waits = [
                        asyncio.ensure_future(store.wait_sealed(o)) for o in dict.fromkeys(missing)
                    ]
                    await asyncio.gather(*waits)
        except TimeoutError:
            pending = [
                oid.hex()
                for oid in dict.fromkeys(ids)
                if store.state_of(oid) is not ObjectState.SEALED
            ]
            self._send_error(
                req_id,
                GetTimeoutError(
                    f"get timed out after {timeout:.3f}s waiting for {len(pending)} "
                    f"object(s): {', '.join(pending[:5])}{' ...' if len(pending) > 5 else ''}"
                ),
            )
            return
        except ObjectStoreError as exc:
            self._send_error(req_id, exc)
            return
        finally:
            for w in waits:
                w.cancel()
        reply = pb.Reply(id=req_id)
        pinned: list[bytes] = []
        try:
            for start in range(0, len(ids), _BATCH):
                if self._closed:  # disconnect released every pin already
                    return
                chunk = ids[start : start + _BATCH]
                entries = []
                for oid in chunk:
                    # Objects may have been deleted while we waited for others.
                    entry = store.get_now(oid)
                    if entry is None:
                        raise ObjectStoreError(f"object {oid.hex()} changed state during get")
                    entries.append(entry)
                self._get_reply(req_id, chunk, entries, reply)
                pinned.extend(chunk)
                if start + _BATCH < len(ids):
                    await asyncio.sleep(0)
        except ObjectStoreError as exc:
            if not self._closed:
                for oid in pinned:
                    store.release(oid, self.client)
                self._send_error(req_id, exc)
            return
        if not self._closed:
            self._send(reply)

    def _get_reply(
        self,
        req_id: int,
        ids: list[bytes],
        entries: list[ObjectEntry],
        reply: pb.Reply | None = None,
    ) -> pb.Reply:
        """Pin each object for this client and add its location to a get reply."""
        pin = self.store.pin
        client = self.client
        if reply is None:
            reply = pb.Reply(id=req_id)
        objects = reply.get.objects
        for oid, entry in zip(ids, entries):
            pin(oid, entry, client)
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
        store = self.store
        ids = list(body.object_ids)
        directory = self.server.directory
        if directory is not None:
            names = [body.name] if body.name and body.name not in store.names else []
            # Not here, and not deleted here a moment ago (its report may be on its way).
            remote = [oid for oid in ids if oid not in store.objects and not store.was_deleted(oid)]
            if names or remote:
                self._spawn(self._delete_cluster(req.id, ids, body.name, remote, names))
                return
        if body.name:
            ids.append(store.lookup_name(body.name))
        if len(ids) > _BATCH:
            self._spawn(self._delete_slices(req.id, ids))
            return
        n = store.delete_many(ids)
        if req.id:
            self._send(pb.Reply(id=req.id, delete=pb.DeleteReply(deleted=n)))

    async def _delete_cluster(
        self, req_id: int, ids: list[bytes], name: str, remote: list[bytes], names: list[str]
    ) -> None:
        """Delete objects some of which are not here: the directory frees them where they are."""
        directory = self.server.directory
        assert directory is not None
        store = self.store
        try:
            if name and not names:
                ids = [*ids, store.lookup_name(name)]
            n = 0
            local = [oid for oid in ids if oid in store.objects]
            for start in range(0, len(local), _BATCH):
                n += store.delete_many(local[start : start + _BATCH])
                await asyncio.sleep(0)
            for start in range(
                0, max(len(remote), len(names)), directory.config.directory.max_lookup
            ):
                chunk = remote[start : start + directory.config.directory.max_lookup]
                n += await directory.delete(chunk, names if start == 0 else [])
        except ObjectStoreError as exc:
            self._send_error(req_id, exc)
            return
        if req_id and not self._closed:
            self._send(pb.Reply(id=req_id, delete=pb.DeleteReply(deleted=n)))

    async def _delete_slices(self, req_id: int, ids: list[bytes]) -> None:
        """Delete a long list a slice at a time, letting the loop serve others between."""
        store = self.store
        n = 0
        try:
            for start in range(0, len(ids), _BATCH):
                n += store.delete_many(ids[start : start + _BATCH])
                await asyncio.sleep(0)
        except ObjectStoreError as exc:
            self._send_error(req_id, exc)
            return
        if req_id and not self._closed:
            self._send(pb.Reply(id=req_id, delete=pb.DeleteReply(deleted=n)))

    def _on_wait(self, req: pb.Request) -> None:
        body = req.wait
        ids = list(body.object_ids)
        num = body.num_returns or 1
        if num > len(set(ids)):
            raise ObjectStoreError(
                f"num_returns={num} is more than the {len(set(ids))} distinct refs given"
            )
        store = self.store
        ready = [oid for oid in ids if store.contains(oid)]
        timeout = None if body.timeout_ms < 0 else body.timeout_ms / 1000.0
        if len(set(ready)) >= num or timeout == 0:
            self._send(pb.Reply(id=req.id, wait=pb.WaitReply(ready=ready)))
            return
        self._spawn(self._wait_slow(req.id, ids, num, timeout))

    async def _wait_slow(
        self, req_id: int, ids: list[bytes], num: int, timeout: float | None
    ) -> None:
        store = self.store
        pending_ids = [oid for oid in dict.fromkeys(ids) if not store.contains(oid)]
        done_count = len(set(ids)) - len(pending_ids)

        async def one(oid: bytes) -> None:
            with contextlib.suppress(ObjectStoreError):
                await store.wait_sealed(oid, priority=1)

        tasks = [asyncio.ensure_future(one(oid)) for oid in pending_ids]
        try:
            need = num - done_count
            async with asyncio.timeout(timeout):
                for fut in asyncio.as_completed(tasks):
                    await fut
                    need -= 1
                    if need <= 0:
                        break
        except TimeoutError:
            pass
        finally:
            for t in tasks:
                t.cancel()
        if self._closed:
            return
        ready = [oid for oid in ids if store.contains(oid)]
        self._send(pb.Reply(id=req_id, wait=pb.WaitReply(ready=ready)))

    def _on_contains(self, req: pb.Request) -> None:
        present = self.store.contains(req.contains.object_id)
        self._send(pb.Reply(id=req.id, contains=pb.ContainsReply(present=present)))

    def _on_stats(self, req: pb.Request) -> None:
        s = self.store.stats()
        reply = pb.Reply(id=req.id)
        st = reply.stats
        st.node_id = self.server.node_id
        for key in (
            "capacity",
            "used",
            "fallback_used",
            "pinned_bytes",
            "objects",
            "sealed",
            "creating",
            "evictable_bytes",
            "evictions",
            "largest_free",
            "puts",
            "gets",
            "prefaulted",
        ):
            setattr(st, key, int(s[key]))
        st.uptime_s = float(s["uptime_s"])
        st.clients = len(self.server.connections)
        directory = self.server.directory
        if directory is not None:
            st.directory = f"{directory.host}:{directory.port}"
        counters = self.server.transfer_stats
        if counters is not None:
            st.pulled, st.bytes_pulled, st.chunks_served, st.bytes_served = counters()
        spill = self.server.spill_stats
        if spill is not None:
            sp = spill()
            st.spilled_objects = sp["spilled_objects"]
            st.spilled_bytes = sp["spilled_bytes"]
            st.spill_files = sp["spill_files"]
            st.bytes_spilled = sp["bytes_written"]
            st.restored = sp["restored"]
            st.bytes_restored = sp["bytes_restored"]
            st.spill_write_errors = sp["write_errors"]
            st.restore_errors = sp["restore_errors"]
            st.spill_files_deleted = sp["files_deleted"]
            st.spill = self.server.spill_target
        self._send(reply)

    def _on_list(self, req: pb.Request) -> None:
        store = self.store
        reply = pb.Reply(id=req.id)
        lst = reply.list_objects
        lst.total = len(store.objects)
        url_of = self.server.spill_url_of
        for oid, entry in store.iter_objects(req.list_objects.limit):
            pins = sum(entry.pinners.values()) if entry.pinners else 0
            lst.objects.add(
                object_id=oid,
                data_size=entry.size,
                state=entry.state.name,
                name=store.names_by_id.get(oid, ""),
                primary=entry.primary,
                pins=pins + (1 if entry.mapped else 0),
                segment=max(entry.segment, 0),
                metadata=entry.meta,
                spill_url=url_of(oid) if url_of is not None else "",
            )
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
}
