"""Speak the local protocol by hand: COUNT creates of 1-byte objects with SIZE bytes
of metadata each, deleting each one made.  Prints one line per create: "ok", or the
node's error message.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

from objstore.protocol import encode_frame, pb

HEADER = struct.Struct("<I")


def recv_frame(sock: socket.socket) -> bytes:
    buf = b""
    need = 4
    while len(buf) < need:
        data = sock.recv(need - len(buf))
        if not data:
            raise ConnectionError("node closed the connection")
        buf += data
        if need == 4 and len(buf) >= 4:
            need = 4 + HEADER.unpack_from(buf)[0]
    return buf[4:]


def main(path: str, size: int, count: int) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30.0)
    sock.connect(path)
    sock.sendall(encode_frame(pb.Hello(version=1, segment=0, pid=os.getpid()).SerializeToString()))
    recv_frame(sock)  # the hello reply (the arena's fd beside it is discarded unread)
    for i in range(count):
        oid = os.urandom(20)
        req = pb.Request(id=2 * i + 1)
        req.create.object_id = oid
        req.create.data_size = 1
        req.create.metadata = b"m" * size
        sock.sendall(encode_frame(req.SerializeToString()))
        reply = pb.Reply.FromString(recv_frame(sock))
        if reply.HasField("error"):
            print(reply.error.message, flush=True)
            continue
        seal = pb.Request(id=0)
        seal.seal.object_id = oid
        delete = pb.Request(id=2 * i + 2)
        delete.delete.object_ids.append(oid)
        sock.sendall(
            encode_frame(seal.SerializeToString()) + encode_frame(delete.SerializeToString())
        )
        pb.Reply.FromString(recv_frame(sock))
        print("ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
