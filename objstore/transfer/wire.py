"""The data plane's frames: small fixed headers around raw chunk bytes.

A puller sends a request; the serving node answers with a header, then (for
``FETCH``) the object's metadata and the chunk's bytes, sent straight from its
shared memory.  One request at a time per connection; a node keeps a few
connections per peer.

Request (44 bytes): magic ``OSXF``, version, kind, 2 spare bytes, the object
id (20 bytes), offset and length (8 bytes each, little-endian).

Reply (28 bytes): magic, version, status, 2 spare bytes, the object's size
(8), the chunk's length (8), the metadata's length (4) and the chunk's CRC-32
(4); then the metadata (only for a chunk at offset 0), then the chunk.
The CRC-32 is zlib's polynomial (computed with ISA-L where it is installed).

Unless the node runs ``--insecure``, a connection proves the cluster token
before its first request (:mod:`objstore.transfer.handshake`; the handshake's
first message is 44 bytes too, magic ``OSXA``), and with TLS configured all of
it runs inside TLS (:mod:`objstore.transfer.conn`).
"""

from __future__ import annotations

import struct

from objstore.checksum import crc32

__all__ = [
    "crc32",
    "MAGIC",
    "VERSION",
    "REQUEST",
    "REPLY",
    "FETCH",
    "FETCH_MANY",
    "MAX_MANY",
    "HELLO",
    "OK",
    "NOT_FOUND",
    "BAD_REQUEST",
    "BUSY",
    "STATUS_NAMES",
    "encode_request",
    "decode_request",
    "encode_reply",
    "decode_reply",
    "WireError",
]

MAGIC = b"OSXF"
VERSION = 1
REQUEST = struct.Struct("<4sBBH20sQQ")
REPLY = struct.Struct("<4sBBHQQII")

FETCH = 1
# Many small objects at once: ``length`` is the count, the ids follow the
# request (20 bytes each); each object's reply is a header, its metadata and
# all its bytes (objects larger than the chunk size get BAD_REQUEST).
FETCH_MANY = 2
MAX_MANY = 10_000
# The first request on a connection may say which node is asking: the node id
# in the id field (padded with zeros), no reply.  The serving side bounds and
# cancels its sends per node; a connection without it counts as its own peer.
HELLO = 3

OK = 0
NOT_FOUND = 1
BAD_REQUEST = 2
BUSY = 3
STATUS_NAMES = {OK: "ok", NOT_FOUND: "not found", BAD_REQUEST: "bad request", BUSY: "busy"}


class WireError(ValueError):
    """A frame that does not follow the data plane's format."""


def encode_request(kind: int, object_id: bytes, offset: int, length: int) -> bytes:
    return REQUEST.pack(MAGIC, VERSION, kind, 0, object_id, offset, length)


def decode_request(data: bytes) -> tuple[int, bytes, int, int]:
    """(kind, object id, offset, length) of a request; WireError if it is not one."""
    magic, version, kind, _, oid, offset, length = REQUEST.unpack(data)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}")
    if version != VERSION:
        raise WireError(f"version {version} is not served (this node speaks {VERSION})")
    if kind not in (FETCH, FETCH_MANY, HELLO):
        raise WireError(f"unknown request kind {kind}")
    if kind == FETCH_MANY and not 0 < length <= MAX_MANY:
        raise WireError(f"FETCH_MANY of {length} objects (1..{MAX_MANY})")
    return kind, oid, offset, length


def encode_reply(
    status: int, size: int = 0, length: int = 0, meta_len: int = 0, crc: int = 0
) -> bytes:
    return REPLY.pack(MAGIC, VERSION, status, 0, size, length, meta_len, crc)


def decode_reply(data: bytes) -> tuple[int, int, int, int, int]:
    """(status, size, length, metadata length, crc) of a reply header."""
    magic, version, status, _, size, length, meta_len, crc = REPLY.unpack(data)
    if magic != MAGIC or version != VERSION:
        raise WireError(f"not a data plane reply (magic {magic!r}, version {version})")
    return status, size, length, meta_len, crc
