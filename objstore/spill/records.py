"""The spill record: one object's metadata and bytes, many records to a file.

A spill file is records back to back; a record is found by its URL
(:class:`~objstore.spill.urls.SpillURL`: the file, the record's offset and
its size).  A record is a fixed header, the metadata, then the payload::

    magic  "OSP1"                       4
    version (1)                         u8
    flags  (bit 0: payload is zstd)     u8
    reserved (0)                        u16
    object id                           20 bytes
    data_size (payload in memory)       u64
    meta_len                            u32
    crc (CRC-32 of meta + data)         u32
    stored_len (payload as stored)      u64

All little-endian, 52 bytes.  The CRC covers what lands in memory: the
metadata followed by the *uncompressed* data, so one check after a restore
covers the disk, the network and the decompressor.  It is zlib's polynomial,
computed with ISA-L where it is installed.

The payload is stored compressed only when that makes it smaller; otherwise
it is the object's own bytes, written straight from its memory.

Reading one back: :func:`read_plan` says where its bytes go (a raw payload
straight into the object's memory, a compressed one aside), and
:func:`check_record` is the one check of what was read -- the header, the
metadata and size against what was expected, zstd, the CRC -- for restores and
for reads of another node's records alike.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import zstandard

from objstore.checksum import crc32
from objstore.ids import OBJECT_ID_SIZE
from objstore.spill.backends.base import Buffer
from objstore.spill.errors import SpillCorruptError

__all__ = [
    "MAGIC",
    "VERSION",
    "FLAG_ZSTD",
    "HEADER_SIZE",
    "RecordHeader",
    "encode_header",
    "decode_header",
    "record_size",
    "build_record",
    "verify",
    "decompress_into",
    "ReadPlan",
    "read_plan",
    "check_record",
]

MAGIC = b"OSP1"
VERSION = 1
FLAG_ZSTD = 0x01
_KNOWN_FLAGS = FLAG_ZSTD

_HEADER = struct.Struct("<4sBBH20sQIIQ")
HEADER_SIZE = _HEADER.size
"""Bytes in a record header (52)."""

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class RecordHeader:
    """The fixed header of one record."""

    oid: bytes
    """The object's id (``OBJECT_ID_SIZE`` bytes)."""
    data_size: int
    """The payload's size in memory (uncompressed)."""
    meta_len: int
    """The metadata's size; the metadata follows the header."""
    crc: int
    """CRC-32 of the metadata followed by the uncompressed data."""
    stored_len: int
    """The payload's size as stored (after the metadata)."""
    flags: int = 0
    """Bit 0 (``FLAG_ZSTD``): the payload is one zstd frame."""

    @property
    def compressed(self) -> bool:
        """Whether the stored payload is zstd-compressed."""
        return bool(self.flags & FLAG_ZSTD)

    @property
    def size(self) -> int:
        """The whole record's size: header, metadata and stored payload."""
        return record_size(self.meta_len, self.stored_len)

    @property
    def meta_offset(self) -> int:
        """Where the metadata starts, from the start of the record."""
        return HEADER_SIZE

    @property
    def payload_offset(self) -> int:
        """Where the stored payload starts, from the start of the record."""
        return HEADER_SIZE + self.meta_len


def record_size(meta_len: int, stored_len: int) -> int:
    """The size of a record with this much metadata and stored payload."""
    return HEADER_SIZE + meta_len + stored_len


def _check_consistent(h: RecordHeader) -> str | None:
    """Why the header cannot be right, or None."""
    if len(h.oid) != OBJECT_ID_SIZE:
        return f"an object id has {OBJECT_ID_SIZE} bytes, not {len(h.oid)}"
    if h.flags & ~_KNOWN_FLAGS:
        return f"unknown flags {h.flags:#04x}"
    if not (0 <= h.meta_len <= _U32 and 0 <= h.crc <= _U32):
        return "meta_len or crc out of range"
    if not (0 <= h.data_size <= _U64 and 0 <= h.stored_len <= _U64):
        return "data_size or stored_len out of range"
    if h.compressed:
        # build_record keeps a compressed payload only when it is smaller.
        if h.stored_len >= h.data_size:
            return (
                f"compressed payload of {h.stored_len} bytes is not smaller than "
                f"its {h.data_size} bytes in memory"
            )
    elif h.stored_len != h.data_size:
        return f"raw payload stored as {h.stored_len} bytes, but {h.data_size} in memory"
    return None


def encode_header(header: RecordHeader) -> bytes:
    """The header's 52 bytes; ``ValueError`` if its fields cannot make a valid record."""
    problem = _check_consistent(header)
    if problem is not None:
        raise ValueError(f"bad record header: {problem}")
    return _HEADER.pack(
        MAGIC,
        VERSION,
        header.flags,
        0,
        header.oid,
        header.data_size,
        header.meta_len,
        header.crc,
        header.stored_len,
    )


def decode_header(
    buf: Buffer,
    expect_oid: bytes | None = None,
    expect_size: int | None = None,
) -> RecordHeader:
    """Parse the header at the start of ``buf``.

    ``expect_oid`` is the id the record must hold; ``expect_size`` is the whole
    record's size as its URL gives it (``SpillURL.size``).  Raises
    :class:`SpillCorruptError` on a short buffer, a bad magic, version or
    flags, another object's id, or sizes that do not add up.
    """
    view = memoryview(buf).cast("B")
    if len(view) < HEADER_SIZE:
        raise SpillCorruptError(f"spill record header is {HEADER_SIZE} bytes, got only {len(view)}")
    magic, version, flags, _reserved, oid, data_size, meta_len, crc, stored_len = (
        _HEADER.unpack_from(view)
    )
    if magic != MAGIC:
        raise SpillCorruptError(f"not a spill record: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise SpillCorruptError(f"spill record version {version}, this build reads {VERSION}")
    header = RecordHeader(oid, data_size, meta_len, crc, stored_len, flags)
    problem = _check_consistent(header)
    if problem is not None:
        raise SpillCorruptError(f"bad spill record header: {problem}")
    if expect_oid is not None and oid != expect_oid:
        raise SpillCorruptError(
            f"spill record holds object {oid.hex()}, expected {expect_oid.hex()}"
        )
    if expect_size is not None and header.size != expect_size:
        raise SpillCorruptError(
            f"spill record is {header.size} bytes by its header, expected {expect_size}"
        )
    return header


def _crc(meta: Buffer, data: Buffer) -> int:
    return crc32(data, crc32(meta))


def build_record(
    oid: bytes, meta: bytes, data: memoryview, compress_level: int = 0
) -> list[Buffer]:
    """The buffers of one record, to be written back to back: header, meta, payload.

    Without compression the payload *is* ``data`` (the same memoryview, never
    copied), so the writer sends the object's bytes straight from its memory.
    With ``compress_level > 0`` the payload is zstd-compressed at that level
    and the compressed form is kept only if it is smaller.

    CPU-heavy (the CRC over all of ``data``, and compression): run it in a
    thread, not on the event loop.  ``data`` must not change until the record
    is written.
    """
    if len(oid) != OBJECT_ID_SIZE:
        raise ValueError(f"an object id has {OBJECT_ID_SIZE} bytes, not {len(oid)}")
    view = data if data.format == "B" and data.ndim == 1 else data.cast("B")
    crc = _crc(meta, view)
    payload: Buffer = data
    stored_len = len(view)
    flags = 0
    if compress_level > 0 and len(view) > 0:
        packed = zstandard.ZstdCompressor(level=compress_level).compress(view)
        if len(packed) < len(view):
            payload, stored_len, flags = packed, len(packed), FLAG_ZSTD
    header = RecordHeader(oid, len(view), len(meta), crc, stored_len, flags)
    return [encode_header(header), meta, payload]


def verify(header: RecordHeader, meta: Buffer, data: Buffer) -> None:
    """Check restored metadata and (uncompressed) data against the header's CRC.

    Raises :class:`SpillCorruptError` on a wrong length or a CRC mismatch.
    CPU-heavy for big objects (ISA-L runs at several GB/s): use a thread.
    """
    meta_view = memoryview(meta).cast("B")
    data_view = memoryview(data).cast("B")
    if len(meta_view) != header.meta_len or len(data_view) != header.data_size:
        raise SpillCorruptError(
            f"object {header.oid.hex()}: restored {len(meta_view)} + {len(data_view)} bytes, "
            f"the record holds {header.meta_len} + {header.data_size}"
        )
    got = _crc(meta_view, data_view)
    if got != header.crc:
        raise SpillCorruptError(
            f"object {header.oid.hex()}: CRC-32 {got:#010x} of the restored bytes, "
            f"the record says {header.crc:#010x}"
        )


def decompress_into(header: RecordHeader, stored: Buffer, dest: memoryview) -> None:
    """Put the stored payload's bytes, uncompressed, into ``dest``.

    ``dest`` must be exactly ``header.data_size`` bytes.  A raw payload is
    copied; a zstd one is decompressed straight into ``dest``.  Raises
    :class:`SpillCorruptError` when the payload does not decompress to exactly
    that many bytes.  CPU-heavy: run it in a thread.
    """
    src = memoryview(stored).cast("B")
    out = dest if dest.format == "B" and dest.ndim == 1 else dest.cast("B")
    if len(out) != header.data_size:
        raise ValueError(f"destination is {len(out)} bytes, the object has {header.data_size}")
    if len(src) != header.stored_len:
        raise SpillCorruptError(
            f"object {header.oid.hex()}: stored payload is {len(src)} bytes, "
            f"the header says {header.stored_len}"
        )
    if not header.compressed:
        out[:] = src
        return
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=False)
        done = 0
        while done < len(out):
            n = reader.readinto(out[done:])
            if n == 0:
                break
            done += n
        extra = reader.read(1)
    except zstandard.ZstdError as exc:
        raise SpillCorruptError(
            f"object {header.oid.hex()}: zstd payload does not decompress: {exc}"
        ) from exc
    if done != len(out) or extra:
        raise SpillCorruptError(
            f"object {header.oid.hex()}: zstd payload decompresses to "
            f"{'more than ' if extra else ''}{done} bytes, expected {header.data_size}"
        )


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Where a record's bytes go when it is read back with one ``read_into``.

    ``dests`` in order: ``head`` (header and metadata), then either ``target``
    itself (a raw payload) or ``stored`` (a compressed one, decompressed into
    ``target`` by :func:`check_record`).
    """

    head: bytearray
    target: memoryview
    stored: bytearray | None

    @property
    def dests(self) -> list[memoryview]:
        """The buffers to fill, in order."""
        payload = self.target if self.stored is None else memoryview(self.stored)
        return [memoryview(self.head), payload]


def read_plan(record_len: int, meta_len: int, target: memoryview) -> ReadPlan:
    """How to read a record of ``record_len`` bytes (its URL's size) whose object is known.

    ``meta_len`` is the object's metadata size and ``target`` its memory
    (``data_size`` bytes).  A record larger or smaller than a raw one of that
    object is read as compressed; :func:`check_record` then tells whether it
    is one.
    """
    head = bytearray(HEADER_SIZE + meta_len)
    if record_len == record_size(meta_len, len(target)):
        return ReadPlan(head, target, None)
    return ReadPlan(head, target, bytearray(max(0, record_len - len(head))))


def check_record(
    oid: bytes,
    record_len: int,
    head: Buffer,
    target: memoryview,
    stored: Buffer | None = None,
    *,
    meta: bytes | None = None,
) -> RecordHeader:
    """Check a record read back, and decompress its payload into ``target``.

    ``head`` holds the header and the metadata (more after them is ignored);
    ``record_len`` is the record's size as its URL gives it; ``target`` the
    object's memory, holding the raw payload already unless ``stored`` (the
    payload as stored) is given.  ``meta``: the metadata the object must have
    (a restore knows it; a read of another node's record does not).

    Raises :class:`SpillCorruptError` for a bad or foreign header, metadata or
    a size that does not match, a payload that does not decompress, or a CRC
    mismatch.  CPU-heavy for big objects: run it in a thread.
    """
    header = decode_header(head, expect_oid=oid, expect_size=record_len)
    view = memoryview(head).cast("B")
    meta_end = HEADER_SIZE + header.meta_len
    if len(view) < meta_end:
        raise SpillCorruptError(
            f"spill record of object {oid.hex()}: {header.meta_len} bytes of metadata, "
            f"only {len(view) - HEADER_SIZE} read"
        )
    got_meta = bytes(view[HEADER_SIZE:meta_end])
    if header.data_size != len(target) or (meta is not None and got_meta != meta):
        raise SpillCorruptError(
            f"spill record of object {oid.hex()} does not match the object "
            f"({header.data_size} bytes, expected {len(target)})"
        )
    if stored is not None:
        decompress_into(header, stored, target)
    elif header.compressed:
        raise SpillCorruptError(
            f"spill record of object {oid.hex()} is compressed, but was read as raw"
        )
    verify(header, got_meta, target)
    return header
