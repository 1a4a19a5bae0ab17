"""The directory's Redis state store (objstore.directory.persist.RedisStore), for real.

It passes the store contract (``tests/state_store_contract.py``) against a real
``redis-server`` (the ``redis_url`` fixture: one server per session, one key
prefix per test), keeps the layout and schema check other tools rely on, and
turns an unreachable or misconfigured server into clear errors.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from redis_server import redis_url  # noqa: F401  (the session's redis-server)
from state_store_contract import StateStoreContract, nid, oid

from objstore.directory.persist import SCHEMA_VERSION, RedisStore, WriteBatch
from objstore.errors import ConfigError, NodeUnavailableError


class TestRedisStore(StateStoreContract):
    """The contract every store passes."""

    @pytest.fixture(params=["redis"])
    def kind(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture(params=["redis"])
    def durable_kind(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)


async def test_redis_layout_and_schema(redis_url: str) -> None:  # noqa: F811
    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisStore(redis_url, prefix=prefix)
    assert store.describe == redis_url
    await store.apply(WriteBatch(node_puts=[(nid(1), b"n")], object_puts=[(oid(1), b"o")]))
    await store.close()
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.hgetall(f"{prefix}:nodes") == {nid(1): b"n"}
        assert await client.hgetall(f"{prefix}:objects") == {oid(1): b"o"}
        assert await client.hget(f"{prefix}:meta", "schema_version") == str(SCHEMA_VERSION).encode()
        await client.hset(f"{prefix}:meta", "schema_version", str(SCHEMA_VERSION + 1))
    finally:
        await client.aclose()
    again = RedisStore(redis_url, prefix=prefix)
    with pytest.raises(ConfigError) as info:
        await again.load()
    assert redis_url in str(info.value) and "schema version" in str(info.value)
    await again.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("op", ["load", "apply", "clear"])
async def test_redis_unreachable(op: str) -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    store = RedisStore(url, timeout=1.0)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "load": store.load,
        "apply": lambda: store.apply(WriteBatch(object_puts=[(oid(1), b"o")])),
        "clear": store.clear,
    }
    t0 = time.perf_counter()
    async with asyncio.timeout(20):  # a hang fails here, not at the suite's timeout
        with pytest.raises(NodeUnavailableError) as info:
            await calls[op]()
    print(f"\nredis unreachable ({op}): failed after {time.perf_counter() - t0:.3f} s")
    assert url in str(info.value)
    assert info.value.__cause__ is not None
    await store.close()


async def test_redis_bad_database_number(redis_url: str) -> None:  # noqa: F811
    store = RedisStore(redis_url.rsplit("/", 1)[0] + "/999999")
    with pytest.raises(ConfigError, match="directory.store"):
        await store.load()
    await store.close()
