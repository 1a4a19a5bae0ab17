"""Speak the local protocol by hand: Hello, then one Create of SIZE bytes; never seal.

Prints ``{"event": "created", ...}`` once the node answered the Create, then
sleeps until it is killed.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import sys
import time

from _common import emit

from objstore.protocol import encode_frame, pb

HEADER = struct.Struct("<I")


def recv_frame(sock: socket.socket) -> tuple[bytes, list[int]]:
    buf = b""
    fds: list[int] = []
    need = 4
    while len(buf) < need:
        data, anc, _, _ = sock.recvmsg(need - len(buf), socket.CMSG_SPACE(16))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(payload[: len(payload) - len(payload) % 4])
                fds.extend(a)
        if not data:
            raise ConnectionError("node closed the connection")
        buf += data
        if need == 4 and len(buf) >= 4:
            need = 4 + HEADER.unpack_from(buf)[0]
    return buf[4:], fds


def main(path: str, size: int) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10.0)
    sock.connect(path)
    sock.sendall(encode_frame(pb.Hello(version=1, segment=0, pid=os.getpid()).SerializeToString()))
    data, fds = recv_frame(sock)
    hello = pb.HelloReply.FromString(data)
    assert not hello.HasField("error"), hello.error
    req = pb.Request(id=1)
    req.create.object_id = os.urandom(20)
    req.create.data_size = size
    req.create.metadata = b"objstore/raw"
    sock.sendall(encode_frame(req.SerializeToString()))
    data, _ = recv_frame(sock)
    reply = pb.Reply.FromString(data)
    emit(
        event="created",
        ok=reply.id == 1 and not reply.HasField("error") and reply.HasField("put"),
        segment=reply.put.segment,
        offset=reply.put.offset,
        fds=len(fds),
    )
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
