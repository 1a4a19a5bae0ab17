"""How values become bytes in shared memory, and come back without copies.

Two formats, named by the object's metadata:

* ``RAW`` (``b"objstore/raw"``): the value was ``bytes``, ``bytearray`` or a
  ``memoryview``; the payload is its bytes.  Pickle keeps ``bytes`` in-band
  even with protocol 5, so raw payloads get their own tag and come back as a
  read-only ``memoryview``.
* ``PICKLE5`` (``b"objstore/pickle5"``): pickle protocol 5 with out-of-band
  buffers.  The payload starts with a header::

      u32 nbufs | u32 reserved | u64 pickle_len | nbufs x (u64 offset, u64 len)

  then the pickle stream, then every out-of-band buffer at a 64-byte aligned
  offset (numpy arrays come back aligned).  On read the buffers are slices of
  one read-only numpy array over the shared mapping, so arrays are rebuilt
  without a copy.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from objstore.errors import SerializationError

__all__ = [
    "RAW",
    "PICKLE5",
    "Serialized",
    "serialize",
    "deserialize",
    "HEADER",
]

RAW = b"objstore/raw"
PICKLE5 = b"objstore/pickle5"

HEADER = struct.Struct("<IIQ")
_BUF = struct.Struct("<QQ")
_ALIGN = 64


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


@dataclass(slots=True)
class Serialized:
    """A value laid out for the store: ``parts`` go at ``offsets`` in a payload of ``size`` bytes."""

    meta: bytes
    size: int
    parts: list[memoryview]
    offsets: list[int]

    def to_bytes(self) -> bytes:
        """The whole payload as one bytes object (for small inline puts)."""
        if len(self.parts) == 1 and self.offsets[0] == 0 and len(self.parts[0]) == self.size:
            part = self.parts[0]
            if type(part.obj) is bytes and len(part.obj) == self.size:
                return part.obj  # the value itself: no copy
            return part.tobytes()
        out = bytearray(self.size)
        for part, off in zip(self.parts, self.offsets):
            out[off : off + len(part)] = part
        return bytes(out)

    def write_into(self, dst: memoryview) -> None:
        """Copy the payload into ``dst`` (at least ``size`` bytes) in this thread."""
        for part, off in zip(self.parts, self.offsets):
            dst[off : off + len(part)] = part


def _as_bytes_view(value: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(value)
    if not view.c_contiguous:
        return memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _rebuild_raw_array(
    buf: Any, dtype: np.dtype[Any], shape: tuple[int, ...], fortran: bool
) -> np.ndarray:
    flat = np.frombuffer(buf, dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C")


def _reduce_ndarray(arr: np.ndarray) -> Any:
    """Pickle numpy arrays so that every plain-data array goes out of band.

    numpy itself keeps arrays that are not contiguous, and datetime64 /
    timedelta64 or structured arrays, in-band (they would come back as
    writable copies); here they are made contiguous, and arrays of those
    dtypes travel as raw bytes plus their dtype.
    """
    if arr.dtype.hasobject:
        return arr.__reduce_ex__(5)
    fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.ascontiguousarray(arr)
    if arr.dtype.kind in "mMV":
        flat = arr.ravel(order="F" if fortran else "C").view(np.uint8)
        return _rebuild_raw_array, (
            # numpy's stubs declare ndarray.__buffer__ only for Python 3.12+.
            pickle.PickleBuffer(flat),  # type: ignore[arg-type]
            arr.dtype,
            arr.shape,
            fortran,
        )
    return arr.__reduce_ex__(5)


_DISPATCH = dict(copyreg.dispatch_table)
_DISPATCH[np.ndarray] = _reduce_ndarray


def _dumps(value: Any, buffers: list[pickle.PickleBuffer]) -> bytes:
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=5, buffer_callback=buffers.append)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(value)
    return out.getvalue()


def serialize(value: Any) -> Serialized:
    """Lay a value out for the store; raises :class:`SerializationError` if it cannot be."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        view = _as_bytes_view(value)
        return Serialized(RAW, len(view), [view], [0])
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = _dumps(value, buffers)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize a value of type {type(value).__name__}: {exc}"
        ) from exc
    raws: list[memoryview] = []
    for buf in buffers:
        try:
            raws.append(buf.raw())
        except BufferError:  # not contiguous: numpy normally pickles those in-band
            raws.append(memoryview(bytes(buf)))
    header_len = HEADER.size + _BUF.size * len(raws)
    pos = header_len + len(stream)
    offsets: list[int] = []
    for raw in raws:
        pos = _align(pos)
        offsets.append(pos)
        pos += raw.nbytes
    header = bytearray(header_len)
    HEADER.pack_into(header, 0, len(raws), 0, len(stream))
    for i, (off, raw) in enumerate(zip(offsets, raws)):
        _BUF.pack_into(header, HEADER.size + i * _BUF.size, off, raw.nbytes)
    parts = [memoryview(bytes(header)), memoryview(stream), *raws]
    return Serialized(PICKLE5, pos, parts, [0, header_len, *offsets])


def deserialize(
    meta: bytes,
    payload: memoryview | bytes,
    make_holder: Callable[[], np.ndarray] | None = None,
) -> Any:
    """Rebuild a value from its payload.

    ``payload`` is a read-only view of the object's bytes.  ``make_holder``,
    when given, returns a read-only uint8 array over the same bytes whose
    lifetime pins the object; zero-copy results (raw payloads, out-of-band
    buffers) are built on it.  Without it, results are copies.
    """
    if meta == RAW:
        if make_holder is None:
            # bytes are immutable already: a copy of shared memory needs no second copy.
            return memoryview(payload if isinstance(payload, bytes) else bytes(payload))
        # numpy's stubs declare ndarray.__buffer__ only for Python 3.12+.
        return memoryview(make_holder())  # type: ignore[arg-type]
    if meta == PICKLE5:
        if len(payload) < HEADER.size:
            raise SerializationError(
                f"stored payload of {len(payload)} bytes is shorter than its header"
            )
        nbufs, _, plen = HEADER.unpack_from(payload, 0)
        header_len = HEADER.size + _BUF.size * nbufs
        if header_len + plen > len(payload):
            raise SerializationError("stored payload is shorter than its header says")
        stream = payload[header_len : header_len + plen]
        try:
            if nbufs == 0:
                return pickle.loads(stream)
            spans: Sequence[tuple[int, int]] = [
                _BUF.unpack_from(payload, HEADER.size + i * _BUF.size) for i in range(nbufs)
            ]
            if make_holder is None:
                bufs: list[Any] = [bytes(payload[o : o + n]) for o, n in spans]
            else:
                holder = make_holder()
                bufs = [holder[o : o + n] for o, n in spans]
            return pickle.loads(stream, buffers=bufs)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"cannot unpickle a stored value: {exc}") from exc
    raise SerializationError(f"unknown serialization format {meta!r}")


def has_views(meta: bytes, payload: memoryview | bytes) -> bool:
    """Whether reading this payload zero-copy would hand out views (else: copy it)."""
    if meta == RAW:
        return True
    if meta == PICKLE5:
        return len(payload) >= HEADER.size and HEADER.unpack_from(payload, 0)[0] > 0
    return False
