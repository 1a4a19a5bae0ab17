"""The local socket's handshake: Hello, then the reply with a file descriptor.

Both ends learn who the other is from the kernel (``SO_PEERCRED``), not from
anything the other says.  The node admits only its own uid and the ones it is
told to (``node.allowed_uids``/``allowed_gids``), and answers anyone else with
an ``ERROR_CODE_UNAUTHENTICATED`` reply and no file descriptor.  The client
talks only to a node running as its own uid or as root, or as a uid listed in
``$OBJSTORE_TRUSTED_NODE_UIDS``: a socket another user bound (in ``/tmp``, say,
while the real node was down) would otherwise receive the client's objects and
hand it memory, and pickles, of that user's choosing.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
import struct
from collections.abc import Mapping
from typing import NamedTuple

from objstore.errors import (
    AuthenticationError,
    ConfigError,
    NodeUnavailableError,
    ProtocolError,
)
from objstore.protocol import HEADER, PROTOCOL_VERSION, encode_frame, error_to_exception, pb

__all__ = [
    "handshake",
    "PeerCredentials",
    "peer_credentials",
    "TRUSTED_NODE_UIDS_ENV",
    "trusted_node_uids",
    "check_node",
]

# struct ucred: pid_t pid, uid_t uid, gid_t gid.
_UCRED = struct.Struct("=iII")
TRUSTED_NODE_UIDS_ENV = "OBJSTORE_TRUSTED_NODE_UIDS"


class PeerCredentials(NamedTuple):
    """The process at the other end of a Unix socket, as the kernel reports it."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """``SO_PEERCRED`` of a connected Unix socket (the peer when it connected or listened)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCredentials(*_UCRED.unpack(raw))


def trusted_node_uids(env: Mapping[str, str] | None = None) -> frozenset[int]:
    """The uids a client talks to: its own, root's and ``$OBJSTORE_TRUSTED_NODE_UIDS``."""
    env = os.environ if env is None else env
    raw = env.get(TRUSTED_NODE_UIDS_ENV, "")
    try:
        extra = {int(p) for p in raw.replace(",", " ").split()}
    except ValueError:
        raise ConfigError(
            f"${TRUSTED_NODE_UIDS_ENV}: must be a list of numeric uids, got {raw!r}"
        ) from None
    return frozenset({os.getuid(), 0, *extra})


def check_node(path: str, node: PeerCredentials, env: Mapping[str, str] | None = None) -> None:
    """Refuse a node socket bound by a uid this client does not trust."""
    if node.uid in trusted_node_uids(env):
        return
    raise AuthenticationError(
        f"the socket {path} is served by uid {node.uid} (pid {node.pid}), not by this user "
        f"(uid {os.getuid()}) or root: another user's process may be posing as the node. "
        f"If that node is meant to serve you, set {TRUSTED_NODE_UIDS_ENV}={node.uid}"
    )


async def handshake(
    loop: asyncio.AbstractEventLoop, path: str, segment: int
) -> tuple[socket.socket, pb.HelloReply, int]:
    """Connect, send Hello, and receive the reply with its file descriptor."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            await loop.sock_connect(sock, path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NodeUnavailableError(
                f"no node is serving {path} ({exc.strerror}); start one with "
                f"`python -m objstore.node --head` or pass socket=/$OBJSTORE_SOCKET"
            ) from exc
        except PermissionError as exc:
            raise AuthenticationError(
                f"cannot connect to {path}: {exc.strerror} (a node admits other users only "
                "when its node.allowed_uids or node.allowed_gids name them)"
            ) from exc
        except OSError as exc:
            raise NodeUnavailableError(f"cannot connect to {path}: {exc.strerror}") from exc
        check_node(path, peer_credentials(sock))
        hello = pb.Hello(version=PROTOCOL_VERSION, segment=segment, pid=os.getpid())
        await loop.sock_sendall(sock, encode_frame(hello.SerializeToString()))
        data, fds = await _recv_with_fds(loop, sock)
        reply = pb.HelloReply.FromString(data)
        if reply.HasField("error"):
            for fd in fds:
                os.close(fd)
            raise error_to_exception(reply.error)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ProtocolError(f"the node sent {len(fds)} file descriptors, expected 1")
        return sock, reply, fds[0]
    except BaseException:
        sock.close()
        raise


async def _recv_with_fds(
    loop: asyncio.AbstractEventLoop, sock: socket.socket
) -> tuple[bytes, list[int]]:
    """Read exactly one frame (the hello reply) and the fds sent with it."""
    buf = bytearray()
    fds: list[int] = []
    need = HEADER.size
    have_header = False
    while True:
        while len(buf) < need:
            try:
                data, ancdata, _, _ = sock.recvmsg(need - len(buf), socket.CMSG_SPACE(4 * 4))
            except (BlockingIOError, InterruptedError):
                fut = loop.create_future()
                loop.add_reader(sock.fileno(), fut.set_result, None)
                try:
                    await fut
                finally:
                    loop.remove_reader(sock.fileno())
                continue
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                    fds.extend(arr)
            if not data:
                for fd in fds:
                    os.close(fd)
                raise NodeUnavailableError("the node closed the connection during the handshake")
            buf += data
        if have_header:
            return bytes(buf[HEADER.size :]), fds
        (size,) = HEADER.unpack_from(buf, 0)
        if size > 1 << 20:
            for fd in fds:
                os.close(fd)
            raise ProtocolError(f"hello reply of {size} bytes is implausible")
        need = HEADER.size + size
        have_header = True
