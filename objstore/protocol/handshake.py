"""The client's side of the handshake: Hello, then the reply with a file descriptor."""

from __future__ import annotations

import array
import asyncio
import os
import socket

from objstore.errors import NodeUnavailableError, ProtocolError
from objstore.protocol import HEADER, PROTOCOL_VERSION, encode_frame, error_to_exception, pb

__all__ = ["handshake"]


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
        except OSError as exc:
            raise NodeUnavailableError(f"cannot connect to {path}: {exc.strerror}") from exc
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
