"""Round trips through objstore.serialization, with and without zero-copy holders."""

from __future__ import annotations

import struct
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from objstore.errors import SerializationError
from objstore.serialization import (
    HEADER,
    PICKLE5,
    RAW,
    Serialized,
    deserialize,
    has_views,
    serialize,
)

_BUF = struct.Struct("<QQ")


def store_bytes(value: Any) -> tuple[Serialized, bytearray]:
    """Serialize and write into a buffer as the store would."""
    s = serialize(value)
    buf = bytearray(s.size)
    s.write_into(memoryview(buf))
    assert bytes(buf) == s.to_bytes()
    return s, buf


def roundtrip(value: Any, zero_copy: bool) -> tuple[Any, np.ndarray]:
    s, buf = store_bytes(value)
    holder = np.frombuffer(buf, np.uint8)
    holder.flags.writeable = False
    payload = memoryview(buf).toreadonly()
    out = deserialize(s.meta, payload, (lambda: holder) if zero_copy else None)
    return out, holder


def assert_same_array(a: np.ndarray, b: np.ndarray) -> None:
    assert type(b) is np.ndarray
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    if a.dtype.hasobject:
        assert a.tolist() == b.tolist()
    else:
        assert a.tobytes(order="C") == b.tobytes(order="C")


def offsets_of(buf: bytearray) -> list[tuple[int, int]]:
    nbufs, _, _ = HEADER.unpack_from(buf, 0)
    return [_BUF.unpack_from(buf, HEADER.size + i * _BUF.size) for i in range(nbufs)]


# ---------------------------------------------------------------- raw bytes


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"hello",
        bytes(range(256)) * 10,
        bytearray(b"mutable"),
        memoryview(b"a view"),
        memoryview(np.arange(20, dtype=np.int32)),  # format 'i': cast to bytes
        memoryview(np.arange(12, dtype=np.uint16).reshape(3, 4)),  # 2-D C-contiguous
    ],
    ids=["empty", "small", "large", "bytearray", "memoryview", "int32-view", "2d-view"],
)
def test_raw_roundtrip(value: Any, zero_copy: bool) -> None:
    out, holder = roundtrip(value, zero_copy)
    assert serialize(value).meta == RAW
    assert isinstance(out, memoryview)
    assert out.readonly
    assert out.tobytes() == memoryview(value).tobytes()
    if zero_copy and len(out):
        assert np.shares_memory(np.asarray(out), holder)


@pytest.mark.parametrize("zero_copy", [False, True])
def test_raw_non_contiguous_memoryview(zero_copy: bool) -> None:
    base = np.arange(40, dtype=np.uint8)
    view = memoryview(base)[::3]
    assert not view.contiguous
    out, _ = roundtrip(view, zero_copy)
    assert out.tobytes() == base[::3].tobytes()


@pytest.mark.parametrize("zero_copy", [False, True])
def test_raw_fortran_memoryview(zero_copy: bool) -> None:
    """A Fortran-ordered (contiguous, but not C-contiguous) memoryview."""
    arr = np.asfortranarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    view = memoryview(arr)
    assert view.contiguous and not view.c_contiguous
    out, _ = roundtrip(view, zero_copy)
    assert out.tobytes() == view.tobytes()


# ---------------------------------------------------------------- numpy


def _arrays() -> dict[str, np.ndarray]:
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    return {
        "c": base,
        "f": np.asfortranarray(base),
        "strided": base[::2, ::3],
        "transposed-strided": base.T[::2],
        "reversed": np.arange(10, dtype=np.int16)[::-1],
        "0d": np.array(3.5),
        "0-size": np.zeros((0, 4), dtype=np.int32),
        "0-size-f": np.zeros((3, 0), dtype=np.float32, order="F"),
        "bool": np.array([True, False, True]),
        "complex": np.arange(6, dtype=np.complex128).reshape(2, 3) * 1j,
        "big-endian": np.arange(5, dtype=">i4"),
        "structured": np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "datetime64": np.array(["2024-01-01", "NaT", "1970-01-02"], dtype="datetime64[D]"),
        "datetime64-ns-2d": np.arange(12).astype("datetime64[ns]").reshape(3, 4),
        "datetime64-f": np.asfortranarray(np.arange(12).astype("datetime64[s]").reshape(3, 4)),
        "datetime64-strided": np.arange(20).astype("datetime64[ms]")[::3],
        "timedelta64": np.array([1, -2, 3], dtype="timedelta64[us]"),
        "timedelta64-0-size": np.zeros((0,), dtype="timedelta64[s]"),
        "timedelta64-0d": np.array(7, dtype="timedelta64[h]"),
        "object": np.array([1, "two", None, {"three": 3}], dtype=object),
        "unicode": np.array(["a", "bcd"]),
    }


ARRAYS = _arrays()


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize("name", list(ARRAYS))
def test_numpy_roundtrip(name: str, zero_copy: bool) -> None:
    arr = ARRAYS[name]
    s, buf = store_bytes(arr)
    assert s.meta == PICKLE5
    out, holder = roundtrip(arr, zero_copy)
    assert_same_array(arr, out)
    if arr.dtype.hasobject:
        return
    # Every plain-data array travels out of band ...
    assert offsets_of(buf), f"{name} was pickled in-band"
    if not zero_copy:
        return
    # ... and comes back as a read-only view of the buffer.
    assert not out.flags.writeable
    if arr.size:
        assert np.shares_memory(out, holder)
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        assert out.flags.f_contiguous


@pytest.mark.parametrize("name", ["c", "strided", "datetime64-ns-2d"])
def test_zero_copy_read_only_cannot_be_written(name: str) -> None:
    out, _ = roundtrip(ARRAYS[name], zero_copy=True)
    with pytest.raises(ValueError, match="read-only"):
        out.flat[0] = out.flat[1]


def test_copy_mode_results_do_not_share_memory() -> None:
    arr = ARRAYS["c"]
    out, holder = roundtrip(arr, zero_copy=False)
    assert not np.shares_memory(out, holder)


def test_nested_containers() -> None:
    a = np.arange(100, dtype=np.uint8)
    b = np.ones((4, 4), dtype=np.float32, order="F")
    t = np.arange(3).astype("datetime64[D]")
    value = {
        "a": a,
        "nested": {"b": b, "list": [a[::2], (t, "text")], "none": None},
        "raw": b"bytes inside",
        "n": 42,
    }
    for zero_copy in (False, True):
        out, holder = roundtrip(value, zero_copy)
        assert set(out) == {"a", "nested", "raw", "n"}
        assert_same_array(a, out["a"])
        assert_same_array(b, out["nested"]["b"])
        assert_same_array(a[::2], out["nested"]["list"][0])
        assert_same_array(t, out["nested"]["list"][1][0])
        assert out["nested"]["list"][1][1] == "text"
        assert out["nested"]["none"] is None
        assert out["raw"] == b"bytes inside"
        assert out["n"] == 42
        if zero_copy:
            for arr in (out["a"], out["nested"]["b"], out["nested"]["list"][0]):
                assert np.shares_memory(arr, holder)
                assert not arr.flags.writeable


def test_plain_python_values_need_no_buffers() -> None:
    value = {"x": [1, 2.5, "s", None, (True, frozenset({1}))]}
    s, buf = store_bytes(value)
    assert offsets_of(buf) == []
    assert not has_views(s.meta, buf)
    assert deserialize(s.meta, memoryview(buf)) == value
    assert deserialize(s.meta, bytes(buf), lambda: np.frombuffer(buf, np.uint8)) == value


def test_out_of_band_offsets_are_aligned() -> None:
    value = [np.arange(n, dtype=np.uint8) for n in (1, 3, 64, 65, 100, 7)]
    value.append(np.zeros((5, 3), dtype=np.float64)[:, ::2])
    s, buf = store_bytes(value)
    spans = offsets_of(buf)
    assert len(spans) == len(value)
    assert s.offsets[2:] == [o for o, _ in spans]
    prev_end = 0
    for (off, n), arr in zip(spans, value):
        assert off % 64 == 0
        assert off >= prev_end
        assert n == arr.nbytes
        prev_end = off + n
    assert s.size == prev_end
    assert has_views(s.meta, buf)
    out = deserialize(s.meta, memoryview(buf), lambda: np.frombuffer(buf, np.uint8))
    for a, b in zip(value, out):
        assert_same_array(a, b)


def test_raw_has_views() -> None:
    assert has_views(RAW, b"anything")
    assert not has_views(b"other", b"")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "value",
    [lambda: None, threading.Lock(), {"nested": (lambda x: x)}],
    ids=["lambda", "lock", "nested-lambda"],
)
def test_unpicklable(value: Any) -> None:
    with pytest.raises(SerializationError, match="cannot serialize"):
        serialize(value)


def _corrupt(mutate: Any) -> tuple[bytes, bytes]:
    s, buf = store_bytes({"a": np.arange(10, dtype=np.int64), "b": "text"})
    return s.meta, bytes(mutate(buf))


def _set_header(nbufs: int | None = None, plen: int | None = None) -> Any:
    def mutate(buf: bytearray) -> bytearray:
        n, r, p = HEADER.unpack_from(buf, 0)
        HEADER.pack_into(buf, 0, n if nbufs is None else nbufs, r, p if plen is None else plen)
        return buf

    return mutate


def _garble_stream(buf: bytearray) -> bytearray:
    n, _, p = HEADER.unpack_from(buf, 0)
    start = HEADER.size + _BUF.size * n
    buf[start : start + p] = b"\xff" * p
    return buf


def _buffer_out_of_range(buf: bytearray) -> bytearray:
    _BUF.pack_into(buf, HEADER.size, len(buf) - 8, 80)
    return buf


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize(
    "mutate",
    [
        _set_header(nbufs=1000),
        _set_header(plen=1 << 40),
        _set_header(nbufs=0),
        _garble_stream,
        _buffer_out_of_range,
        lambda buf: buf[:10],  # shorter than the fixed header
        lambda buf: b"",
    ],
    ids=["nbufs", "pickle-len", "nbufs-zero", "stream", "span", "truncated", "empty"],
)
def test_corrupted_payload(mutate: Any, zero_copy: bool) -> None:
    meta, payload = _corrupt(mutate)
    holder = np.frombuffer(payload, np.uint8)
    with pytest.raises(SerializationError):
        deserialize(meta, memoryview(payload), (lambda: holder) if zero_copy else None)


def test_unknown_metadata() -> None:
    _, buf = store_bytes({"a": 1})
    with pytest.raises(SerializationError, match="unknown serialization format"):
        deserialize(b"objstore/pickle4", memoryview(buf))
    with pytest.raises(SerializationError, match="unknown serialization format"):
        deserialize(b"", memoryview(buf), lambda: np.frombuffer(buf, np.uint8))


def test_serialization_error_is_type_error() -> None:
    with pytest.raises(TypeError):
        serialize(lambda: None)


# ---------------------------------------------------------------- hypothesis


_dtypes = (
    hnp.scalar_dtypes()
    | hnp.byte_string_dtypes(max_len=4)
    | hnp.unicode_string_dtypes(max_len=4)
    | hnp.array_dtypes(hnp.scalar_dtypes(), max_size=3)
)


@st.composite
def any_array(draw: st.DrawFn) -> np.ndarray:
    arr = draw(
        hnp.arrays(
            dtype=_dtypes,
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        )
    )
    layout = draw(st.sampled_from(["c", "f", "strided", "transposed"]))
    if layout == "f":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        arr = arr[
            tuple(slice(None, None, draw(st.sampled_from([-2, -1, 2, 3]))) for _ in arr.shape)
        ]
    elif layout == "transposed":
        arr = arr.T
    return arr


@settings(max_examples=150, deadline=None)
@given(arr=any_array(), zero_copy=st.booleans())
def test_any_array_roundtrips(arr: np.ndarray, zero_copy: bool) -> None:
    out, holder = roundtrip(arr, zero_copy)
    assert_same_array(arr, out)
    # (Structured dtypes with time fields stay in-band: see
    # test_structured_array_with_time_field_is_zero_copy.)
    if zero_copy and arr.nbytes and not arr.dtype.hasobject and not _time_field(arr.dtype):
        assert np.shares_memory(out, holder)
        assert not out.flags.writeable


def _time_field(dtype: np.dtype) -> bool:
    """Whether a structured dtype has datetime64/timedelta64 fields (at any depth)."""

    def has_time(dt: np.dtype) -> bool:
        if dt.fields is not None:
            return any(has_time(f[0]) for f in dt.fields.values())
        if dt.subdtype is not None:
            return has_time(dt.subdtype[0])
        return dt.kind in "mM"

    return dtype.fields is not None and has_time(dtype)


@pytest.mark.parametrize(
    "dtype",
    [[("id", "<i8"), ("when", "<M8[s]")], [("span", "<m8[us]", (2,))]],
    ids=["datetime-field", "timedelta-subarray-field"],
)
def test_structured_array_with_time_field_is_zero_copy(dtype: Any) -> None:
    """Plain-data structured arrays go out of band like any other plain-data array."""
    arr = np.zeros(8, dtype=dtype)
    _, buf = store_bytes(arr)
    out, holder = roundtrip(arr, zero_copy=True)
    assert_same_array(arr, out)
    assert offsets_of(buf), "pickled in-band: comes back as a writable copy"
    assert np.shares_memory(out, holder)
    assert not out.flags.writeable
