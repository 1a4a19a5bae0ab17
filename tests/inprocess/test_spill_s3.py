"""Spilling to S3 in process (a moto server, tests/s3_server.py), and SpillReader.

The manager writes fused files to a bucket and restores from them; another
store reads a record straight from S3 with :class:`SpillReader`, as a node
does when the object's own node is gone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _spill import SIZE, config, data, oid, spilling
from fakes import FakeStore
from s3_server import S3Server, s3_server  # noqa: F401  (fixture)

from objstore.plasma.api import ObjectState
from objstore.spill.backends import S3Backend, open_backend
from objstore.spill.errors import SpillCorruptError
from objstore.spill.remote import SpillReader
from objstore.spill.urls import S3SpillFile, SpillURL

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:  # noqa: F811
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


def _keys(server: S3Server, bucket: str) -> list[str]:
    resp = server.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in resp.get("Contents", []))


@pytest.mark.parametrize("single_put_max", [16 << 20, 64 << 10], ids=["put", "multipart"])
async def test_spill_to_s3_and_restore(
    s3_env: S3Server, tmp_path: Path, single_put_max: int
) -> None:
    bucket = s3_env.create_bucket()
    spill = {"s3_single_put_max_bytes": single_put_max}
    backend = open_backend(f"s3://{bucket}/spills", "node-a", config(**spill).spill)
    assert isinstance(backend, S3Backend) and backend.single_put_max == single_put_max
    async with spilling(tmp_path, backend, **spill) as (store, mgr):
        for i in range(16):
            await store.create(oid(i), data(i))
        await mgr.make_room(4 * SIZE)
        assert len(store.spilled()) == 4
        (key,) = _keys(s3_env, bucket)
        assert key.startswith("spills/node-a/") and key.endswith(".spill")
        url = SpillURL.parse(mgr.url_of(oid(0)))
        assert S3SpillFile.parse(url.base) == S3SpillFile(
            bucket, "spills", "node-a", key.rsplit("/", 1)[1]
        )
        for i in range(16):
            assert await store.get(oid(i)) == data(i)
        for i in range(16):
            store.delete(oid(i))
    assert _keys(s3_env, bucket) == []


async def test_another_store_reads_a_record_from_s3(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.create_bucket()
    cfg = config(compression=3)
    backend = open_backend(f"s3://{bucket}/p", "node-a", cfg.spill)
    big = bytes(3 * SIZE)  # compresses: read aside, then decompressed into place
    async with spilling(tmp_path, backend, compression=3) as (store, mgr):
        await store.create(oid(1), data(1))
        await store.create(oid(2), big)
        await mgr.make_room(16 * SIZE)
        assert sorted(store.spilled()) == [oid(1), oid(2)]
        other = FakeStore(capacity=16 * SIZE)
        reader = SpillReader(other, cfg)
        try:
            assert reader.readable(mgr.url_of(oid(1)))
            assert not reader.readable("file:///tmp/x.spill?offset=0&size=1")
            assert await reader.fetch(oid(1), mgr.url_of(oid(1))) == SIZE
            assert await reader.fetch(oid(2), mgr.url_of(oid(2))) == len(big)
            assert other.data_of(oid(1)) == data(1) and other.data_of(oid(2)) == big
            assert other.objects[oid(1)].state is ObjectState.SEALED
            assert not other.objects[oid(1)].primary
            # Another object's record, or a range that is not a record: nothing is left.
            with pytest.raises(SpillCorruptError):
                await reader.fetch(oid(3), mgr.url_of(oid(1)))
            u = SpillURL.parse(mgr.url_of(oid(1)))
            with pytest.raises(SpillCorruptError):
                await reader.fetch(oid(1), str(SpillURL(u.base, u.offset + 1, u.size)))
            assert oid(3) not in other.objects
            other.check()
        finally:
            await reader.close()
        for i in (1, 2):
            store.delete(oid(i))
