"""The directory's state in two Redis hashes (``redis.asyncio``)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

from objstore.errors import (
    ConfigError,
    NodeUnavailableError,
    ObjectStoreError,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

from objstore.directory.persist.base import _SCHEMA_KEY, SCHEMA_VERSION, WriteBatch, _check_open

__all__ = ["RedisStore"]

_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_ALLOWED_FORMS = "'sqlite' or 'redis://HOST[:PORT][/DB]'"


@dataclass(frozen=True, slots=True)
class _RedisTarget:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None

    @property
    def url(self) -> str:
        """The URL without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def _parse_redis_url(url: str) -> _RedisTarget:
    """Validate ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (port 6379, db 0 by default)."""

    def bad(why: str) -> ConfigError:
        shown = re.sub(r"//[^@/]*@", "//***@", url)
        return ConfigError(
            f"directory.store: {why} in {shown!r}; expected redis://HOST[:PORT][/DB], "
            "e.g. redis://127.0.0.1:6379/0"
        )

    if not url.startswith("redis://"):
        raise bad("not a redis:// URL")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. a bracketed host that is not IPv6
        raise bad(str(exc)) from None
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise bad("query strings and fragments are not supported")
    host = parts.hostname
    if not host:
        raise bad("no host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"bad IPv6 address {host!r}") from None
    elif not _HOST_RE.fullmatch(host):
        raise bad(f"bad host {host!r}")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port must be a number from 1 to 65535") from None
    if port is None:
        if parts.netloc.endswith(":"):
            raise bad("empty port")
        port = 6379
    if not 1 <= port <= 65535:
        raise bad("the port must be a number from 1 to 65535")
    path = parts.path
    if path in ("", "/"):
        db = 0
    elif re.fullmatch(r"/[0-9]{1,9}", path):
        db = int(path[1:])
    else:
        raise bad(f"the database must be a number (like /0), not {path!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return _RedisTarget(host, port, db, username, password)


class RedisStore:
    """The tables as two Redis hashes, ``{prefix}:nodes`` and ``{prefix}:objects``.

    ``{prefix}:meta`` (a hash) holds the schema version.  Writes are MULTI/EXEC
    transactions, so a reader never sees half a batch; note that Redis does not
    roll a transaction back when one of its commands fails at run time (only a
    command refused while queueing aborts all of it), which cannot happen with
    the HSET/HDEL commands used here on keys of the right type.

    Nothing connects before the first ``load``/``apply``/``clear``.  A server
    that cannot be reached raises :class:`~objstore.errors.NodeUnavailableError`
    naming the URL; every connect and read is bounded by ``timeout`` seconds.
    """

    #: Fields per HSET/HDEL command (a transaction holds as many commands as needed).
    CHUNK = 10_000
    #: COUNT hint of each HSCAN while loading.
    SCAN_COUNT = 10_000

    def __init__(self, url: str, prefix: str = "objstore", timeout: float = 5.0) -> None:
        if not prefix:
            raise ConfigError("directory.store: the redis key prefix must not be empty")
        self._target = _parse_redis_url(url)
        self.describe = self._target.url
        self.prefix = prefix
        self.timeout = timeout
        self.nodes_key = f"{prefix}:nodes"
        self.objects_key = f"{prefix}:objects"
        self.meta_key = f"{prefix}:meta"
        self._client: Redis | None = None
        self._checked = False
        self._closed = False

    def _redis(self) -> Redis:
        _check_open(self._closed, self.describe)
        if self._client is None:
            # Imported here: redis takes ~0.1 s to import, and only this store needs it.
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff

            t = self._target
            self._client = Redis(
                host=t.host,
                port=t.port,
                db=t.db,
                username=t.username,
                password=t.password,
                socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout,
                # Two quick retries of a lost connection, not redis-py's default ten.
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                client_name="objstore-directory",
            )
        return self._client

    async def _call(self, what: str, op: Callable[[Redis], Any]) -> Any:
        """Run ``op`` against the server, translating redis errors."""
        from redis import exceptions as rx

        client = self._redis()
        try:
            if not self._checked:
                await self._check_schema(client)
            return await op(client)
        except (rx.AuthenticationError, rx.AuthorizationError) as exc:
            raise ConfigError(
                f"directory.store: {self.describe} refused the credentials: {exc}"
            ) from exc
        except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
            raise NodeUnavailableError(
                f"directory state {self.describe}: cannot reach redis ({what}): {exc}"
            ) from exc
        except rx.ResponseError as exc:
            if "DB index" in str(exc):
                raise ConfigError(f"directory.store: {self.describe}: {exc}") from exc
            raise ObjectStoreError(
                f"directory state {self.describe}: {what} failed: {exc}"
            ) from exc
        except rx.RedisError as exc:
            raise ObjectStoreError(
                f"directory state {self.describe}: {what} failed: {exc}"
            ) from exc

    async def _check_schema(self, client: Redis) -> None:
        await client.hsetnx(self.meta_key, _SCHEMA_KEY, str(SCHEMA_VERSION))
        raw = await client.hget(self.meta_key, _SCHEMA_KEY)
        version = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if version != str(SCHEMA_VERSION):
            raise ConfigError(
                f"directory state {self.describe} (key {self.meta_key!r}) has schema version "
                f"{version!r}, but this objstore reads only version {SCHEMA_VERSION}: it was "
                "written by a newer objstore (or is not ours); upgrade, or use another prefix/db"
            )
        self._checked = True

    async def load(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Every record of both hashes, read with HSCAN in large counts."""

        async def scan(client: Redis) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
            tables: list[dict[bytes, bytes]] = []
            for key in (self.nodes_key, self.objects_key):
                table: dict[bytes, bytes] = {}
                cursor = 0
                while True:
                    cursor, chunk = await client.hscan(key, cursor, count=self.SCAN_COUNT)
                    # HSCAN may return a field twice (during a rehash): the dict dedups.
                    # Replies are bytes: the client does not decode responses.
                    table.update(cast("dict[bytes, bytes]", chunk))
                    if cursor == 0:
                        break
                tables.append(table)
            return tables[0], tables[1]

        result: tuple[dict[bytes, bytes], dict[bytes, bytes]] = await self._call("load", scan)
        return result

    async def apply(self, batch: WriteBatch) -> None:
        """Apply ``batch`` in one MULTI/EXEC, ``CHUNK`` fields per command."""
        if batch.empty:
            _check_open(self._closed, self.describe)
            return

        async def write(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                for key, deletes, puts in (
                    (self.nodes_key, batch.node_deletes, batch.node_puts),
                    (self.objects_key, batch.object_deletes, batch.object_puts),
                ):
                    for i in range(0, len(deletes), self.CHUNK):
                        pipe.hdel(key, *deletes[i : i + self.CHUNK])
                    for i in range(0, len(puts), self.CHUNK):
                        pipe.hset(key, mapping=dict(puts[i : i + self.CHUNK]))
                await pipe.execute()

        await self._call("write", write)

    async def clear(self) -> None:
        """Delete both hashes (the schema version stays)."""

        async def delete(client: Redis) -> None:
            await client.delete(self.nodes_key, self.objects_key)

        await self._call("clear", delete)

    async def close(self) -> None:
        """Close the connection pool."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
