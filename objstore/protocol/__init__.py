"""The local protocol: length-prefixed protobuf frames on a Unix socket.

Every frame is a 4-byte little-endian length and that many bytes of a
serialized ``Request`` (client to node) or ``Reply`` (node to client); see
``proto/objstore/local/v1/local.proto``.  This module holds the framing, the
incremental decoder both ends use, and the mapping between error codes on the
wire and the exceptions of :mod:`objstore.errors`.
"""

from __future__ import annotations

import struct
from collections.abc import Generator, Iterator

from objstore import errors
from objstore._proto.local import local_pb2 as pb
from objstore.status import error_to_local, local_to_error

__all__ = [
    "pb",
    "PROTOCOL_VERSION",
    "HEADER",
    "encode_frame",
    "FrameDecoder",
    "error_to_exception",
    "exception_to_error",
]

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<I")
_pack_header = HEADER.pack


def encode_frame(payload: bytes) -> bytes:
    """Prefix a serialized message with its length."""
    return _pack_header(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into frames; raises ``ProtocolError`` on an oversized one.

    Feed it what the socket gives (``feed``), then iterate the complete frames.
    It keeps at most one partial frame, so its memory is bounded by
    ``max_frame`` plus one read.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame: int) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Add bytes and yield every frame now complete, in order."""
        buf = self._buf
        if buf:
            buf += data
            pos = yield from self._split(buf)
            del buf[:pos]
        else:
            # Fast path: parse straight out of `data` without copying it first.
            view = memoryview(data)
            pos = yield from self._split(view)
            if pos < len(view):
                buf += view[pos:]

    def _split(self, src: bytearray | memoryview) -> Generator[bytes, None, int]:
        """Yield the complete frames at the start of ``src``; return where they end."""
        pos, end, limit = 0, len(src), self._max
        while end - pos >= 4:
            (size,) = HEADER.unpack_from(src, pos)
            if size > limit:
                raise errors.ProtocolError(
                    f"frame of {size} bytes is larger than the limit of {limit}"
                )
            if end - pos - 4 < size:
                break
            yield bytes(src[pos + 4 : pos + 4 + size])
            pos += 4 + size
        return pos

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buf)


def error_to_exception(err: pb.Error) -> errors.ObjectStoreError:
    """The exception a client raises for an error reply (see :mod:`objstore.status`)."""
    return local_to_error(err.code, err.message)


def exception_to_error(exc: BaseException, out: pb.Error) -> None:
    """Fill an error reply from an exception raised while serving a request."""
    code, message = error_to_local(exc)
    out.code = code  # type: ignore[assignment]
    out.message = message
