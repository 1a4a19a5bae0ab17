"""The spill record format and the spill backends, against real files and a real S3 server.

* Records (:mod:`objstore.spill.records`): round trips raw and zstd, CRC and
  header checks.
* :class:`LocalBackend`: real files under ``tmp_path`` (and a 4 MiB tmpfs for
  the full-disk case, which needs root to mount).
* :class:`S3Backend`: a moto server in a subprocess (``tests/s3_server.py``);
  the AWS environment is set per test with ``monkeypatch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loop_lag import LoopLag
from s3_server import S3Server, s3_server, start_s3_server  # noqa: F401  (fixture)
from tmpfs import tmpfs
from waits import until

from objstore.config import Config
from objstore.errors import ObjectStoreError, OutOfDiskError
from objstore.ids import OBJECT_ID_SIZE, new_object_id
from objstore.spill.backends import LocalBackend, S3Backend, SpillBackend, open_backend
from objstore.spill.backends import s3 as s3_module
from objstore.spill.errors import SpillCorruptError, SpillIOError
from objstore.spill.records import (
    FLAG_ZSTD,
    HEADER_SIZE,
    RecordHeader,
    build_record,
    check_record,
    decode_header,
    decompress_into,
    encode_header,
    read_plan,
    record_size,
    verify,
)
from objstore.spill.urls import S3SpillFile, SpillURL, s3_namespace_prefix, spill_file_name

pytestmark = pytest.mark.timeout(30)

MiB = 1 << 20


def _joined(parts: list[Any]) -> bytes:
    return b"".join(bytes(memoryview(p).cast("B")) for p in parts)


def _compressible(n: int) -> np.ndarray:
    return (np.arange(n // 8, dtype=np.int64) % 1000).astype(np.int64)


class Spilled:
    """Records written back to back: each object's id, meta, data and record URL range."""

    def __init__(self, objects: list[tuple[bytes, bytes, memoryview]], level: int = 0) -> None:
        self.parts: list[Any] = []
        self.records: list[tuple[bytes, bytes, bytes, int, int]] = []
        offset = 0
        for oid, meta, data in objects:
            rec = build_record(oid, meta, data, level)
            size = sum(len(memoryview(b).cast("B")) for b in rec)
            self.parts.extend(rec)
            self.records.append((oid, meta, bytes(data.cast("B")), offset, size))
            offset += size
        self.total = offset

    def urls(self, base: str) -> list[SpillURL]:
        return [SpillURL(base, off, size) for _, _, _, off, size in self.records]


async def restore(backend: SpillBackend, url: SpillURL, oid: bytes) -> tuple[bytes, bytes]:
    """Read one record back the way a restorer would: header, then meta and payload."""
    head = bytearray(HEADER_SIZE)
    await backend.read_into(url.base, url.offset, [memoryview(head)])
    header = decode_header(head, expect_oid=oid, expect_size=url.size)
    meta = bytearray(header.meta_len)
    stored = bytearray(header.stored_len)
    await backend.read_into(
        url.base, url.offset + HEADER_SIZE, [memoryview(meta), memoryview(stored)]
    )
    data = bytearray(header.data_size)
    decompress_into(header, stored, memoryview(data))
    verify(header, meta, memoryview(data))
    return bytes(meta), bytes(data)


# --- Records ------------------------------------------------------------------


def test_record_round_trip_raw_is_zero_copy() -> None:
    oid = new_object_id()
    data = memoryview(bytearray(os.urandom(100_000)))
    parts = build_record(oid, b"meta!", data)
    assert len(parts) == 3 and parts[1] == b"meta!"
    assert parts[2] is data  # the object's own memory, not a copy
    assert len(parts[0]) == HEADER_SIZE == 52
    blob = _joined(parts)
    header = decode_header(blob, expect_oid=oid, expect_size=len(blob))
    assert header == RecordHeader(oid, 100_000, 5, header.crc, 100_000, 0)
    assert not header.compressed
    assert header.size == record_size(5, 100_000) == len(blob)
    assert encode_header(header) == parts[0]
    meta = blob[header.meta_offset : header.payload_offset]
    stored = memoryview(blob)[header.payload_offset :]
    out = bytearray(header.data_size)
    decompress_into(header, stored, memoryview(out))
    assert out == data
    verify(header, meta, memoryview(out))


def test_record_round_trip_zstd() -> None:
    oid = new_object_id()
    arr = _compressible(4 * MiB)
    parts = build_record(oid, b"m" * 40, memoryview(arr), compress_level=3)
    blob = _joined(parts)
    header = decode_header(blob, expect_oid=oid, expect_size=len(blob))
    assert header.flags == FLAG_ZSTD and header.compressed
    assert header.data_size == arr.nbytes
    assert header.stored_len < arr.nbytes // 10
    dest = np.empty_like(arr)
    decompress_into(header, memoryview(blob)[header.payload_offset :], memoryview(dest))
    assert np.array_equal(dest, arr)
    verify(header, b"m" * 40, memoryview(dest))


def test_incompressible_payload_is_kept_raw() -> None:
    data = memoryview(os.urandom(256 * 1024))
    parts = build_record(new_object_id(), b"", data, compress_level=19)
    assert parts[2] is data
    header = decode_header(parts[0])
    assert header.flags == 0 and header.stored_len == header.data_size == len(data)


def test_empty_object_and_meta() -> None:
    oid = new_object_id()
    parts = build_record(oid, b"", memoryview(b""), compress_level=3)
    header = decode_header(_joined(parts), expect_oid=oid, expect_size=HEADER_SIZE)
    decompress_into(header, b"", memoryview(bytearray()))
    verify(header, b"", memoryview(b""))


@pytest.mark.parametrize("level", [0, 3])
@pytest.mark.parametrize("where", ["meta", "data"])
def test_crc_catches_a_flipped_byte(level: int, where: str) -> None:
    arr = _compressible(64 * 1024)
    header = decode_header(build_record(new_object_id(), b"metadata", memoryview(arr), level)[0])
    meta, data = bytearray(b"metadata"), bytearray(arr.tobytes())
    verify(header, meta, memoryview(data))
    target = meta if where == "meta" else data
    target[len(target) // 2] ^= 0x10
    with pytest.raises(SpillCorruptError, match="CRC-32"):
        verify(header, meta, memoryview(data))


def test_corrupt_compressed_payload_is_caught() -> None:
    arr = _compressible(1 * MiB)
    parts = build_record(new_object_id(), b"", memoryview(arr), compress_level=3)
    header = decode_header(parts[0])
    stored = bytearray(parts[2])
    stored[len(stored) // 2] ^= 0xFF
    dest = bytearray(header.data_size)
    with pytest.raises(SpillCorruptError):
        decompress_into(header, stored, memoryview(dest))
        verify(header, b"", memoryview(dest))  # if zstd did not notice, the CRC does
    with pytest.raises(SpillCorruptError, match="stored payload is"):
        decompress_into(header, bytes(parts[2])[:-1], memoryview(dest))
    with pytest.raises(ValueError, match="destination"):
        decompress_into(header, parts[2], memoryview(bytearray(10)))


def _raw_header(**changes: Any) -> bytearray:
    oid = b"\x01" * OBJECT_ID_SIZE
    blob = bytearray(_joined(build_record(oid, b"mm", memoryview(b"d" * 100))))
    for offset, value in changes.values():
        blob[offset : offset + len(value)] = value
    return blob


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"magic": (0, b"XSP1")}, "not a spill record"),
        ({"version": (4, b"\x02")}, "version 2"),
        ({"flags": (5, b"\x04")}, "unknown flags"),
        ({"zstd_not_smaller": (5, b"\x01")}, "not smaller"),
        ({"stored_len": (44, (99).to_bytes(8, "little"))}, "raw payload stored as 99"),
    ],
)
def test_bad_header_is_rejected(change: dict[str, tuple[int, bytes]], message: str) -> None:
    with pytest.raises(SpillCorruptError, match=message):
        decode_header(_raw_header(**change))


def test_header_expectations_and_short_buffer() -> None:
    blob = _raw_header()
    header = decode_header(blob, expect_oid=b"\x01" * OBJECT_ID_SIZE, expect_size=len(blob))
    assert header.meta_len == 2 and header.data_size == 100
    with pytest.raises(SpillCorruptError, match="expected 0202"):
        decode_header(blob, expect_oid=b"\x02" * OBJECT_ID_SIZE)
    with pytest.raises(SpillCorruptError, match=f"{len(blob)} bytes by its header, expected 7"):
        decode_header(blob, expect_size=7)
    with pytest.raises(SpillCorruptError, match="got only 51"):
        decode_header(blob[:51])
    with pytest.raises(ValueError, match="object id"):
        build_record(b"short", b"", memoryview(b"x"))
    with pytest.raises(ValueError, match="bad record header"):
        encode_header(RecordHeader(b"\x01" * OBJECT_ID_SIZE, 10, 0, 0, 11, 0))


@pytest.mark.slow
@given(
    meta=st.binary(max_size=300),
    data=st.one_of(st.binary(max_size=5000), st.text(max_size=3000).map(str.encode)),
    level=st.sampled_from([0, 1, 3]),
)
def test_record_round_trip_property(meta: bytes, data: bytes, level: int) -> None:
    oid = new_object_id()
    blob = _joined(build_record(oid, meta, memoryview(data), level))
    header = decode_header(blob, expect_oid=oid, expect_size=len(blob))
    assert header.stored_len <= len(data)
    out = bytearray(len(data))
    decompress_into(header, memoryview(blob)[header.payload_offset :], memoryview(out))
    assert out == data
    verify(header, blob[HEADER_SIZE : header.payload_offset], memoryview(out))


# --- URLs and open_backend -----------------------------------------------------------


def test_spill_url_round_trip() -> None:
    for text in [
        "file:///var/spill/ns/abc-00000001.spill?offset=0&size=52",
        "file:///a%20dir/x%3Fy.spill?offset=123&size=4567",
        "s3://bucket/pre/fix/ns/abc-00000002.spill?offset=99&size=1",
    ]:
        url = SpillURL.parse(text)
        assert str(url) == text
        assert SpillURL.parse(str(url)) == url
    url = SpillURL.parse("s3://b/k?offset=7&size=8")
    assert (url.base, url.offset, url.size) == ("s3://b/k", 7, 8)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/var/spill/x?offset=0&size=1",
        "http://host/x?offset=0&size=1",
        "file://host/x?offset=0&size=1",
        "file:///x",
        "file:///x?offset=0",
        "file:///x?offset=0&size=1&extra=2",
        "file:///x?offset=-1&size=1",
        "file:///x?offset=1&offset=2",
        "file:///x?offset=a&size=1",
        "s3://bucket?offset=0&size=1",
        "s3:///key?offset=0&size=1",
    ],
)
def test_spill_url_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="spill URL"):
        SpillURL.parse(text)


def test_open_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = open_backend("s3://my-bucket/some/prefix/", "node-1")
    assert isinstance(s3, S3Backend) and s3.scheme == "s3"
    assert (s3.bucket, s3.prefix, s3.namespace) == ("my-bucket", "some/prefix", "node-1")
    local = open_backend(f"{tmp_path}/a, {tmp_path}/b", "node-1")
    assert isinstance(local, LocalBackend) and local.scheme == "file"
    assert local.dirs == [f"{tmp_path}/a/node-1", f"{tmp_path}/b/node-1"]
    monkeypatch.chdir(tmp_path)
    rel = open_backend("spill", "n")
    assert isinstance(rel, LocalBackend) and rel.dirs == [f"{tmp_path}/spill/n"]
    for bad in ["", "  ", ",", "s3://", "gs://bucket/x"]:
        with pytest.raises(ValueError):
            open_backend(bad, "n")
    for bad_ns in ["", "..", "a/b", "-x"]:
        with pytest.raises(ValueError, match="namespace"):
            open_backend(str(tmp_path), bad_ns)
    with pytest.raises(ValueError, match="part_size"):
        S3Backend("b", "", "n", part_size=MiB)


def test_open_backend_takes_the_s3_settings_from_the_config() -> None:
    spill = (
        Config()
        .replace(
            spill={
                "s3_part_size": "8MiB",
                "s3_single_put_max_bytes": "1MiB",
                "s3_connect_timeout_s": 1.5,
                "s3_read_timeout_s": 7,
                "s3_max_attempts": 5,
                "s3_concurrency": 2,
            }
        )
        .spill
    )
    s3 = open_backend("s3://b/p", "n", spill)
    assert isinstance(s3, S3Backend)
    assert (s3.part_size, s3.single_put_max, s3.concurrency) == (8 * MiB, MiB, 2)
    assert s3._timeouts == (1.5, 7.0, 5)
    default = open_backend("s3://b/p", "n")
    assert isinstance(default, S3Backend) and default.single_put_max == default.part_size
    with pytest.raises(ValueError, match="single_put_max"):
        S3Backend("b", "", "n", single_put_max=0)


@pytest.mark.parametrize(
    ("prefix", "key"),
    [("", "ns/r-00000001.spill"), ("a", "a/ns/r-1.spill"), ("a/b/c", "a/b/c/n.s_1/x.spill")],
)
def test_s3_key_layout_round_trip(prefix: str, key: str) -> None:
    namespace, name = key.rsplit("/", 2)[-2:]
    f = S3SpillFile("bkt", prefix, namespace, name)
    assert f.key == key and f.base == f"s3://bkt/{key}"
    assert S3SpillFile.parse(f.base) == f
    assert f.key.startswith(s3_namespace_prefix(prefix, namespace))
    assert s3_namespace_prefix(f"/{prefix}/", namespace) == s3_namespace_prefix(prefix, namespace)


@given(
    prefix=st.lists(st.from_regex(r"[a-z0-9._-]{1,8}", fullmatch=True), max_size=3),
    namespace=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True),
    seq=st.integers(0, 10**9),
)
def test_s3_key_layout_property(prefix: list[str], namespace: str, seq: int) -> None:
    f = S3SpillFile("b", "/".join(prefix), namespace, spill_file_name("run", seq))
    assert S3SpillFile.parse(f.base) == f
    assert S3SpillFile.parse(str(SpillURL(f.base, 1, 2)).partition("?")[0]) == f


@pytest.mark.parametrize(
    "base",
    [
        "file:///ns/x.spill",
        "s3://b/x.spill",
        "s3://b/ns/x.txt",
        "s3://b/ns/.spill",
        "s3://b/-n/x.spill",
    ],
)
def test_s3_key_layout_rejects(base: str) -> None:
    with pytest.raises(ValueError):
        S3SpillFile.parse(base)


def test_check_record_is_the_one_check_of_a_record_read_back() -> None:
    oid = new_object_id()
    payload = bytes(_compressible(64 * 1024))
    for level in (0, 3):
        blob = _joined(build_record(oid, b"meta", memoryview(payload), level))
        target = memoryview(bytearray(len(payload)))
        plan = read_plan(len(blob), 4, target)
        assert (plan.stored is None) == (level == 0)
        done = 0
        for d in plan.dests:
            d[:] = blob[done : done + len(d)]
            done += len(d)
        header = check_record(oid, len(blob), plan.head, target, plan.stored, meta=b"meta")
        assert header.compressed == (level > 0) and bytes(target) == payload
        with pytest.raises(SpillCorruptError, match="does not match"):
            check_record(oid, len(blob), plan.head, target, plan.stored, meta=b"other")
        with pytest.raises(SpillCorruptError, match="holds object"):
            check_record(new_object_id(), len(blob), plan.head, target, plan.stored)
        with pytest.raises(SpillCorruptError, match="does not match"):
            check_record(oid, len(blob), plan.head, target[:-1], plan.stored)
        with pytest.raises(SpillCorruptError, match="metadata"):
            check_record(oid, len(blob), plan.head[:HEADER_SIZE], target, plan.stored)
    compressed = _joined(build_record(oid, b"", memoryview(payload), 3))
    with pytest.raises(SpillCorruptError, match="compressed"):
        check_record(oid, len(compressed), compressed, memoryview(bytearray(len(payload))))
    raw = bytearray(_joined(build_record(oid, b"", memoryview(payload), 0)))
    raw[-1] ^= 1
    with pytest.raises(SpillCorruptError, match="CRC"):
        check_record(oid, len(raw), raw, memoryview(raw)[HEADER_SIZE:])


# --- LocalBackend -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def started(backend: Any) -> AsyncIterator[Any]:
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


async def _no_spill_files(directory: Path) -> bool:
    return not _spill_files(directory)


def _spill_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.spill")) if directory.exists() else []


async def test_local_many_parts_read_back_byte_for_byte(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    # More parts than IOV_MAX (1024) in one file, of mixed sizes, some empty.
    sizes = rng.integers(0, 3000, size=2500).tolist() + [3 * MiB, 0, 17]
    parts: list[Any] = [os.urandom(n) for n in sizes]
    parts[5] = memoryview(bytearray(parts[5]))
    parts[6] = np.frombuffer(os.urandom(800), dtype=np.float64)  # a non-byte format
    blob = _joined(parts)
    async with started(LocalBackend([str(tmp_path)], "node")) as backend:
        base = await backend.write(parts, len(blob))
        assert base.startswith("file:///") and base.endswith(".spill")
        path = Path(SpillURL(base, 0, 0).base[len("file://") :])
        assert path.stat().st_size == len(blob)
        assert path.stat().st_mode & 0o777 == 0o600
        # Back into many memoryviews, from an offset in the middle.
        offset = 1234
        dests = [bytearray(n) for n in [0, 1, 4095, 3 * MiB, 10_000]]
        await backend.read_into(base, offset, [memoryview(d) for d in dests])
        assert b"".join(dests) == blob[offset : offset + sum(map(len, dests))]
        # Into a numpy array and into a shared mmap.
        arr = np.zeros(100_000 // 4, dtype=np.int32)
        await backend.read_into(base, 7, [memoryview(arr)])
        assert arr.tobytes() == blob[7 : 7 + 100_000]
        mm = mmap.mmap(-1, 2 * MiB)
        view = memoryview(mm)
        try:
            await backend.read_into(base, len(blob) - 2 * MiB, [view[:MiB], view[MiB:]])
            assert view.tobytes() == blob[-2 * MiB :]
        finally:
            view.release()
            mm.close()
        with pytest.raises(ValueError, match="writable"):
            await backend.read_into(base, 0, [memoryview(b"readonly")])
        with pytest.raises(ValueError, match="total"):
            await backend.write([b"abc"], 4)


async def test_local_records_restore(tmp_path: Path) -> None:
    objs = [
        (new_object_id(), b"meta%d" % i, memoryview(_compressible(n)))
        for i, n in enumerate([8, 64 * 1024, 2 * MiB, 0, 1000])
    ]
    spilled = Spilled(objs, level=3)
    async with started(LocalBackend([str(tmp_path)], "node")) as backend:
        base = await backend.write(spilled.parts, spilled.total)
        for url, (oid, meta, data, _, _) in zip(spilled.urls(base), spilled.records, strict=True):
            assert await restore(backend, SpillURL.parse(str(url)), oid) == (meta, data)


async def test_local_round_robin_over_dirs(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b b"  # a space in a path survives the URL
    async with started(LocalBackend([str(a), str(b)], "ns")) as backend:
        bases = [await backend.write([b"x" * i], i) for i in range(1, 7)]
        assert len(_spill_files(a / "ns")) == 3 and len(_spill_files(b / "ns")) == 3
        assert len(set(bases)) == 6
        for i, base in enumerate(bases, 1):
            out = bytearray(i)
            await backend.read_into(base, 0, [memoryview(out)])
            assert out == b"x" * i
            name = base.rsplit("/", 1)[1]
            assert name == f"{backend.run_id}-{i:08d}.spill"


async def test_local_delete_is_idempotent(tmp_path: Path) -> None:
    async with started(LocalBackend([str(tmp_path)], "ns")) as backend:
        base = await backend.write([b"hello"], 5)
        assert _spill_files(tmp_path / "ns")
        await backend.delete(base)
        assert _spill_files(tmp_path / "ns") == []
        await backend.delete(base)
        # Only its own files: another directory's, or a non-spill file, are refused.
        with pytest.raises(ValueError, match="not a spill file"):
            await backend.delete(f"file://{tmp_path}/other/x.spill")
        with pytest.raises(ValueError, match="not a spill file"):
            await backend.delete(f"file://{tmp_path}/ns/precious.txt")
        with pytest.raises(ValueError):
            await backend.delete("s3://bucket/ns/x.spill")


async def test_local_start_removes_an_earlier_runs_files_only(tmp_path: Path) -> None:
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    earlier = LocalBackend(dirs, "node1")
    assert await earlier.start() == 0
    for _ in range(5):
        await earlier.write([b"old"], 3)
    other = LocalBackend(dirs, "node2")
    await other.start()
    await other.write([b"other node"], 10)
    (tmp_path / "a" / "node1" / "notes.txt").write_text("not a spill file")
    # A later run of node1 (the earlier one "crashed" without cleaning up).
    later = LocalBackend(dirs, "node1")
    assert later.run_id != earlier.run_id
    assert await later.start() == 5
    assert _spill_files(tmp_path / "a" / "node1") == _spill_files(tmp_path / "b" / "node1") == []
    assert (tmp_path / "a" / "node1" / "notes.txt").exists()
    assert len(_spill_files(tmp_path / "a" / "node2")) == 1


async def test_local_truncated_or_missing_file_is_corrupt(tmp_path: Path) -> None:
    async with started(LocalBackend([str(tmp_path)], "ns")) as backend:
        base = await backend.write([os.urandom(10_000)], 10_000)
        path = base[len("file://") :]
        os.truncate(path, 6_000)
        out = memoryview(bytearray(5_000))
        await backend.read_into(base, 1_000, [out])  # still all there
        with pytest.raises(SpillCorruptError, match=f"{base} is 6000 bytes.*needs 7000"):
            await backend.read_into(base, 2_000, [out])
        os.unlink(path)
        with pytest.raises(SpillCorruptError, match=f"spill file {base} is missing"):
            await backend.read_into(base, 0, [out])


async def test_local_keeps_no_export_of_the_callers_buffers(tmp_path: Path) -> None:
    # The caller may resize a bytearray (or close an mmap) as soon as a call
    # returns, even while an exception (and its traceback's frames) is alive.
    async with started(LocalBackend([str(tmp_path)], "ns")) as backend:
        src = bytearray(os.urandom(3 * MiB))
        view = memoryview(src)
        base = await backend.write([view[:10], view[10:]], len(src))
        view.release()
        src.extend(b"more")
        dest = bytearray(4 * MiB)
        views = [memoryview(dest)[:MiB], memoryview(dest)[MiB:]]
        with pytest.raises(SpillCorruptError) as failed:
            await backend.read_into(base, 0, views)
        for v in views:
            v.release()  # the caller's own views (the traceback keeps the list alive)
        dest.extend(b"more")  # BufferError if a view from the failed read were still alive
        assert failed.value.__traceback__ is not None


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted on a fresh directory, unmounted afterwards."""
    with tmpfs(tmp_path / "tiny", "4m") as mnt:
        yield mnt


async def test_local_full_disk_raises_out_of_disk_and_leaves_nothing(tiny_tmpfs: Path) -> None:
    async with started(LocalBackend([str(tiny_tmpfs)], "ns")) as backend:
        data = memoryview(os.urandom(8 * MiB))
        with pytest.raises(OutOfDiskError, match=f"{8 * MiB}-byte spill file in {tiny_tmpfs}/ns"):
            await backend.write([data[:MiB], data[MiB:]], 8 * MiB)
        assert os.listdir(tiny_tmpfs / "ns") == []
        # The space came back: a small file fits.
        base = await backend.write([data[: 2 * MiB]], 2 * MiB)
        out = bytearray(2 * MiB)
        await backend.read_into(base, 0, [memoryview(out)])
        assert out == data[: 2 * MiB]


@pytest.mark.slow
async def test_local_big_write_and_read_do_not_block_the_loop(tmp_path: Path) -> None:
    data = (np.arange(128 * MiB, dtype=np.uint32) % 251).astype(np.uint8)
    async with started(LocalBackend([str(tmp_path)], "ns")) as backend:
        async with LoopLag() as lag:
            base = await backend.write([memoryview(data)], data.nbytes)
            out = np.empty_like(data)
            await backend.read_into(base, 0, [memoryview(out)])
        assert np.array_equal(out, data)
        # Copies and file I/O on the loop would keep it for 50-500 ms here.
        assert lag.worst < 0.25, f"the event loop stalled: {lag}"


async def test_local_cancelled_write_leaves_no_file_and_cancelled_read_stops(
    tmp_path: Path,
) -> None:
    data = memoryview(bytearray(256 * MiB))
    async with started(LocalBackend([str(tmp_path)], "ns")) as backend:
        cancelled = 0
        for delay in (0.0, 0.005, 0.02):
            task = asyncio.create_task(
                backend.write([data[: 128 * MiB], data[128 * MiB :]], len(data))
            )
            await asyncio.sleep(delay)
            task.cancel()
            try:
                base = await task
            except asyncio.CancelledError:
                cancelled += 1
            else:
                await backend.delete(base)
        assert cancelled
        # The orphan cleanup (of a write that completed anyway) runs in a thread.
        await until(lambda: _no_spill_files(tmp_path / "ns"), 10, "the orphans removed")

        data[:] = b"\x01" * len(data)
        base = await backend.write([data], len(data))
        out = np.zeros(len(data), dtype=np.uint8)
        task = asyncio.create_task(backend.read_into(base, 0, [memoryview(out)]))
        await asyncio.sleep(0.005)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Once the cancelled read has returned, nothing writes into `out` any more.
        filled = int(np.count_nonzero(out))
        await asyncio.sleep(0.1)
        assert int(np.count_nonzero(out)) == filled


# --- S3Backend ----------------------------------------------------------------------


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:  # noqa: F811
    """Point botocore at the moto server through the standard AWS environment only."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def _keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    resp = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def _uploads(server: S3Server, bucket: str) -> list[str]:
    return [
        u["Key"] for u in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    ]


@pytest.mark.slow
async def test_s3_small_put_and_ranged_reads_of_records(s3_env: S3Server) -> None:
    bucket = s3_env.create_bucket()
    objs = [
        (new_object_id(), b"meta%d" % i, memoryview(os.urandom(n)))
        for i, n in enumerate([10, 100_000, 0, 300_000, 5])
    ]
    spilled = Spilled(objs)
    async with started(S3Backend(bucket, "spill", "node-a")) as backend:
        base = await backend.write(spilled.parts, spilled.total)
        assert base == f"s3://{bucket}/spill/node-a/{backend.run_id}-00000001.spill"
        assert _keys(s3_env, bucket) == [f"spill/node-a/{backend.run_id}-00000001.spill"]
        # The records in the middle, each by its own ranged GET.
        for url, (oid, meta, data, _, _) in reversed(
            list(zip(spilled.urls(base), spilled.records, strict=True))
        ):
            assert await restore(backend, url, oid) == (meta, data)
        # Many dests from one ranged read.
        blob = _joined(spilled.parts)
        a, b = bytearray(3), np.zeros(1000, dtype=np.uint16)
        await backend.read_into(base, 50_000, [memoryview(a), memoryview(b)])
        assert bytes(a) + b.tobytes() == blob[50_000 : 50_000 + 2003]
        # A whole file below 1 MiB is joined; an empty one works too.
        empty = await backend.write([], 0)
        await backend.read_into(empty, 0, [])


@pytest.mark.slow
async def test_s3_multipart_upload(s3_env: S3Server) -> None:
    bucket = s3_env.create_bucket()
    big = np.random.default_rng(3).integers(0, 255, size=9 * MiB, dtype=np.uint8)
    small = [os.urandom(n) for n in range(1, 400)]  # ~80 KB in many small parts
    parts: list[Any] = [b"head", memoryview(big)[: 4 * MiB], *small, memoryview(big)[4 * MiB :]]
    parts += [os.urandom(3 * MiB)]
    blob = _joined(parts)
    assert 12 * MiB < len(blob) < 13 * MiB
    async with started(S3Backend(bucket, "", "node-b", part_size=5 * MiB, concurrency=2)) as be:
        async with LoopLag() as lag:
            base = await be.write(parts, len(blob))
        key = base.split("/", 3)[3]
        assert key.startswith("node-b/")
        head = s3_env.client().head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == len(blob)
        assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + the rest
        assert _uploads(s3_env, bucket) == []
        # Ranges across part boundaries, into numpy memory.
        for offset, n in [(0, len(blob)), (5 * MiB - 10, 20), (4 * MiB, 2 * MiB + 1)]:
            out = np.empty(n, dtype=np.uint8)
            await be.read_into(base, offset, [memoryview(out)])
            assert out.tobytes() == blob[offset : offset + n]
        assert lag.worst < 0.25, f"the event loop stalled for {lag.worst * 1000:.0f} ms"


async def test_s3_delete_and_missing_key(s3_env: S3Server) -> None:
    bucket = s3_env.create_bucket()
    async with started(S3Backend(bucket, "p", "ns")) as backend:
        base = await backend.write([b"0123456789"], 10)
        out = bytearray(4)
        with pytest.raises(SpillCorruptError, match="ends 2 bytes before"):
            await backend.read_into(base, 8, [memoryview(out)])
        with pytest.raises(SpillCorruptError, match=f"offset 10 of {base}"):
            await backend.read_into(base, 10, [memoryview(out)])
        await backend.delete(base)
        assert _keys(s3_env, bucket) == []
        await backend.delete(base)  # idempotent
        with pytest.raises(SpillCorruptError, match=base):
            await backend.read_into(base, 0, [memoryview(out)])
        # No view of the caller's buffer survives a call, failed or not.
        base = await backend.write([memoryview(out)], 4)
        await backend.read_into(base, 1, [memoryview(out)[:3]])
        view = memoryview(out)
        with pytest.raises(SpillCorruptError) as failed:
            await backend.read_into(base, 2, [view])
        view.release()
        out.extend(b"more")
        assert failed.value.__traceback__ is not None
        with pytest.raises(ValueError, match="not a spill file"):
            await backend.read_into(f"s3://{bucket}/other/x.spill", 0, [memoryview(out)])


@pytest.mark.slow
async def test_s3_start_removes_an_earlier_runs_keys_only(s3_env: S3Server) -> None:
    bucket = s3_env.create_bucket()
    client = s3_env.client()
    earlier = S3Backend(bucket, "spill", "node1")
    async with started(earlier):
        for _ in range(3):
            await earlier.write([b"old"], 3)
    async with started(S3Backend(bucket, "spill", "node2")) as other:
        await other.write([b"other node"], 10)
    # An upload the earlier run never finished, and a key that is not ours.
    client.create_multipart_upload(Bucket=bucket, Key="spill/node1/dead-00000009.spill")
    client.put_object(Bucket=bucket, Key="spill/node1x/keep.spill", Body=b"k")
    later = S3Backend(bucket, "spill", "node1")
    assert later.run_id != earlier.run_id
    assert await later.start() == 4  # three files and the unfinished upload
    await later.close()
    again = S3Backend(bucket, "spill", "node1")
    assert await again.start() == 0
    await again.close()
    assert _keys(s3_env, bucket, "spill/node1/") == []
    assert _uploads(s3_env, bucket) == []
    assert len(_keys(s3_env, bucket, "spill/node2/")) == 1
    assert _keys(s3_env, bucket, "spill/node1x/") == ["spill/node1x/keep.spill"]


@pytest.mark.slow
async def test_s3_start_deletes_in_batches(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "_S3_DELETE_BATCH", 7)  # S3's is 1000
    bucket = s3_env.create_bucket()
    client = s3_env.client()
    for i in range(20):
        client.put_object(Bucket=bucket, Key=f"ns/old-{i:08d}.spill", Body=b"")
    first = S3Backend(bucket, "", "ns")
    assert await first.start() == 20
    await first.close()
    backend = S3Backend(bucket, "", "ns")
    client.put_object(Bucket=bucket, Key="ns/old-again.spill", Body=b"")
    assert await backend.start() == 1
    await backend.close()
    assert _keys(s3_env, bucket) == []


async def test_s3_missing_bucket_is_a_clear_error(s3_env: S3Server) -> None:
    backend = S3Backend("no-such-bucket-here", "spill", "ns")
    with pytest.raises(SpillIOError, match="spill bucket 'no-such-bucket-here' does not exist"):
        await backend.start()
    with pytest.raises(RuntimeError, match="not started"):
        await backend.write([b"x"], 1)


def _fast_failing(bucket: str) -> S3Backend:
    return S3Backend(bucket, "", "ns", connect_timeout=0.5, read_timeout=0.5, max_attempts=2)


@pytest.mark.slow
@pytest.mark.timeout(15)
async def test_s3_nothing_listening_is_spill_io_error(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(SpillIOError, match=f"127.0.0.1:{port}"):
        await _fast_failing("bucket").start()
    assert time.monotonic() - t0 < 5


@pytest.mark.slow
@pytest.mark.timeout(15)
async def test_s3_silent_server_times_out_as_spill_io_error(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Accepts connections (the kernel's backlog) and never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
        t0 = time.monotonic()
        with pytest.raises(SpillIOError, match="(?i)timeout"):
            await _fast_failing("bucket").start()
        assert time.monotonic() - t0 < 6


@pytest.mark.slow
@pytest.mark.timeout(40)
async def test_s3_server_stopped_midway(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = await asyncio.to_thread(start_s3_server, tmp_path / "moto")
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        bucket = server.create_bucket()
        backend = _fast_failing(bucket)
        await backend.start()
        base = await backend.write([b"x" * 1000], 1000)
        await asyncio.to_thread(server.stop)
        out = memoryview(bytearray(1000))
        t0 = time.monotonic()
        with pytest.raises(SpillIOError, match=f"reading 1000 bytes at offset 0 of {base}"):
            await backend.read_into(base, 0, [out])
        with pytest.raises(SpillIOError, match="writing 10 bytes"):
            await backend.write([b"y" * 10], 10)
        with pytest.raises(SpillIOError, match="deleting"):
            await backend.delete(base)
        assert time.monotonic() - t0 < 10
        await backend.close()
    finally:
        await asyncio.to_thread(server.stop)


@pytest.mark.slow
async def test_s3_cancelled_writes_leave_nothing(s3_env: S3Server) -> None:
    bucket = s3_env.create_bucket()
    data = memoryview(os.urandom(16 * MiB))
    backend = S3Backend(bucket, "", "ns", part_size=5 * MiB)
    await backend.start()
    cancelled = 0
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1):
        task = asyncio.create_task(backend.write([data], len(data)))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
    assert cancelled
    await backend.close()  # waits for the cleanups (abort the upload, delete the key)
    client = s3_env.client()
    keys = _keys(s3_env, bucket)
    # A write that completed before its cancel landed returned normally; nothing else is left.
    assert len(keys) == 5 - cancelled, keys
    assert _uploads(s3_env, bucket) == []
    for key in keys:
        client.delete_object(Bucket=bucket, Key=key)


def test_errors_share_the_root() -> None:
    for cls in (SpillCorruptError, SpillIOError, OutOfDiskError):
        assert issubclass(cls, ObjectStoreError)
