"""Spill files as objects in an S3 bucket: ``<prefix>/<namespace>/<run_id>-<seq>.spill``.

Requests are asynchronous (aiobotocore).  A big request body is a file over
the caller's buffers that aiohttp reads 64 KiB at a time in its executor
(never one joined copy), and a response body is copied into place as it
arrives.  A file up to ``single_put_max`` bytes is one ``PutObject``; a bigger
one is a multipart upload of ``part_size`` parts, ``concurrency`` at a time.
A cancelled or failed write is cleaned up in the background (best effort: the
next start of the node sweeps what is left).  botocore and aiohttp errors are
translated here (see :func:`_s3_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import secrets
from collections.abc import Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from objstore.errors import ObjectStoreError, OutOfDiskError
from objstore.spill.backends.base import (
    Buffer,
    byte_view,
    dest_views,
    release_views,
    source_views,
)
from objstore.spill.errors import SpillCorruptError, SpillIOError
from objstore.spill.urls import (
    check_namespace,
    s3_base,
    s3_namespace_prefix,
    spill_file_name,
    split_base,
)
from objstore.tasks import TaskSet

if TYPE_CHECKING:
    from objstore.config import SpillConfig

__all__ = ["S3Backend", "S3_MIN_PART_SIZE", "S3_MAX_PARTS", "S3_MAX_PUT"]

log = structlog.get_logger("objstore.spill")

MiB = 1 << 20
S3_MIN_PART_SIZE = 5 * MiB
"""S3's smallest multipart part (all but the last)."""
S3_MAX_PARTS = 10_000
"""S3's most parts in one multipart upload."""
S3_MAX_PUT = 5 * 1024 * MiB
"""S3's largest single PutObject."""

# Parts up to this size are joined on the event loop; bigger ones are streamed.
_JOIN_INLINE_BYTES = 1 * MiB
# Bytes copied from an S3 response into memory per step (on the event loop).
_S3_READ_CHUNK = 1 * MiB
# A best-effort cleanup (abort an upload, delete a key) gives up after this.
_CLEANUP_TIMEOUT_S = 10.0

# DeleteObjects takes 1000 keys at most.
_S3_DELETE_BATCH = 1000
# Error codes that mean the bucket (or the account's quota) is full.
_S3_FULL_CODES = frozenset(
    {"EntityTooLarge", "QuotaExceeded", "XMinioStorageFull", "InsufficientStorage"}
)
# Error codes (and statuses) that mean the bytes asked for are not there.
_S3_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "InvalidRange", "404", "416"})


@contextlib.contextmanager
def _s3_errors(doing: str, *, lost_if_missing: bool = False) -> Iterator[None]:
    """Translate botocore/aiohttp/OS errors raised in the block (which may await)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ObjectStoreError:
        raise
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = f"{code or 'error'} (HTTP {status})"
        if err.get("Message"):
            detail += f": {err['Message']}"
        if lost_if_missing and (code in _S3_MISSING_CODES or status in (404, 416)):
            raise SpillCorruptError(f"{doing}: {detail}") from exc
        if code in _S3_FULL_CODES or status == 507:
            raise OutOfDiskError(f"{doing}: {detail}") from exc
        raise SpillIOError(f"{doing}: {detail}") from exc
    except (BotoCoreError, OSError, TimeoutError) as exc:
        raise SpillIOError(f"{doing}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        import aiohttp

        if isinstance(exc, aiohttp.ClientError):
            raise SpillIOError(f"{doing}: {type(exc).__name__}: {exc}") from exc
        raise


class _ViewsReader(io.RawIOBase):
    """A seekable file over byte views, so a request body needs no joined copy.

    aiohttp reads it 64 KiB at a time in its executor; botocore seeks it back
    to the start when it retries.
    """

    def __init__(self, views: list[memoryview]) -> None:
        super().__init__()
        self._views = views
        self._starts: list[int] = []
        n = 0
        for v in views:
            self._starts.append(n)
            n += len(v)
        self._size = n
        self._pos = 0
        self._i = 0  # the view holding _pos (or len(views) at the end)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        self._i = 0
        while self._i < len(self._views) and pos >= self._starts[self._i] + len(
            self._views[self._i]
        ):
            self._i += 1
        return pos

    def _take(self, n: int) -> list[memoryview]:
        out: list[memoryview] = []
        while n > 0 and self._i < len(self._views):
            v = self._views[self._i]
            start = self._pos - self._starts[self._i]
            piece = v[start : start + n]
            out.append(piece)
            n -= len(piece)
            self._pos += len(piece)
            if start + len(piece) >= len(v):
                self._i += 1
        return out

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._size - self._pos)
        return b"".join(self._take(size))

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        dest = byte_view(buffer)
        done = 0
        for piece in self._take(len(dest)):
            dest[done : done + len(piece)] = piece
            done += len(piece)
        return done


def _warm_loader(session: Any) -> None:
    """Load (and cache) the JSON models a client needs, in a thread.

    ``create_client`` would otherwise parse them on the event loop (~150 ms).
    Best effort: with another botocore layout the client just loads them itself.
    """
    try:
        loader = session.get_component("data_loader")
        for name in ("endpoints", "partitions", "sdk-default-configuration"):
            loader.load_data(name)
        loader.list_available_services("service-2")
        for kind in ("service-2", "endpoint-rule-set-1", "paginators-1"):
            loader.load_service_model("s3", kind)
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        log.debug("could not preload botocore's S3 models", error=repr(exc))


def _split_parts(views: list[memoryview], part_size: int) -> list[list[memoryview]]:
    """Cut the views into consecutive parts of ``part_size`` bytes (the last may be shorter)."""
    parts: list[list[memoryview]] = []
    current: list[memoryview] = []
    room = part_size
    for v in views:
        while len(v):
            piece = v[:room]
            current.append(piece)
            room -= len(piece)
            v = v[len(piece) :]
            if room == 0:
                parts.append(current)
                current, room = [], part_size
    if current:
        parts.append(current)
    return parts


def _request_body(views: list[memoryview]) -> bytes | _ViewsReader:
    """A request body for these views: small parts joined, big ones streamed uncopied."""
    size = sum(len(v) for v in views)
    if size <= _JOIN_INLINE_BYTES:
        return b"".join(views)
    return _ViewsReader(views)


async def _gather_or_cancel(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines concurrently; on the first error cancel the others and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class S3Backend:
    """Spill files as objects in an S3 bucket: ``<prefix>/<namespace>/<run_id>-<seq>.spill``.

    The endpoint, region and credentials come from the standard AWS
    environment (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``,
    ``AWS_ACCESS_KEY_ID``, profiles...), which botocore reads itself.  Files
    up to ``single_put_max`` bytes (default: ``part_size``) are one
    ``PutObject``; bigger ones are multipart uploads of ``part_size`` parts,
    ``concurrency`` parts at a time.  Timeouts are in seconds, per HTTP
    request; ``max_attempts`` counts every try of a request (botocore's
    standard retry mode, with its backoff, between them).
    :meth:`from_config` takes all of these from ``SpillConfig``.
    """

    scheme: str = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str,
        namespace: str,
        part_size: int = 16 * MiB,
        *,
        concurrency: int = 4,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        single_put_max: int | None = None,
    ) -> None:
        check_namespace(namespace)
        if not bucket or "/" in bucket:
            raise ValueError(f"an S3 bucket name is non-empty without '/', got {bucket!r}")
        if part_size < S3_MIN_PART_SIZE:
            raise ValueError(
                f"part_size is at least {S3_MIN_PART_SIZE} bytes (S3's minimum), got {part_size}"
            )
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts are at least 1")
        if single_put_max is None:
            single_put_max = part_size
        if not 0 < single_put_max <= S3_MAX_PUT:
            raise ValueError(
                f"single_put_max is in 1..{S3_MAX_PUT} bytes (S3's largest PUT), "
                f"got {single_put_max}"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.namespace = namespace
        self.part_size = part_size
        self.single_put_max = single_put_max
        self.concurrency = concurrency
        self.run_id = secrets.token_hex(8)
        """Random per instance: this run's keys never meet an earlier run's."""
        # Every key this backend writes, lists or deletes starts with this.
        self._key_prefix = s3_namespace_prefix(self.prefix, namespace)
        self._timeouts = (connect_timeout, read_timeout, max_attempts)
        self._seq = 0
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        # Best-effort cleanups (abort an upload, delete a key) still running.
        self._background = TaskSet("s3-cleanup")

    @classmethod
    def from_config(
        cls, bucket: str, prefix: str, namespace: str, config: SpillConfig
    ) -> S3Backend:
        """A backend with ``config``'s S3 settings (part size, timeouts, attempts)."""
        return cls(
            bucket,
            prefix,
            namespace,
            config.s3_part_size,
            concurrency=config.s3_concurrency,
            connect_timeout=config.s3_connect_timeout_s,
            read_timeout=config.s3_read_timeout_s,
            max_attempts=config.s3_max_attempts,
            single_put_max=config.s3_single_put_max_bytes,
        )

    def __repr__(self) -> str:
        return f"S3Backend(s3://{self.bucket}/{self._key_prefix})"

    def _require(self) -> Any:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not started (or is closed)")
        return self._client

    def _new_key(self) -> str:
        self._seq += 1
        return self._key_prefix + spill_file_name(self.run_id, self._seq)

    def _key_of(self, base: str) -> str:
        """The key of an object this backend wrote (``ValueError`` for any other URL)."""
        scheme, bucket, key = split_base(base)
        if scheme != "s3" or bucket != self.bucket or not key.startswith(self._key_prefix):
            raise ValueError(f"{base!r} is not a spill file of {self!r}")
        return key

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._background.spawn(coro)

    async def start(self, cleanup: bool = True) -> int:
        """Connect, check the bucket, delete what earlier runs left under the namespace.

        Returns how many objects (and unfinished multipart uploads) it deleted.
        ``cleanup=False``: a reader of another node's files deletes nothing.
        """
        if self._client is not None:
            raise RuntimeError(f"{self!r} is started already")
        # Importing aiobotocore takes ~0.4 s: not on the event loop.
        session_mod = await asyncio.to_thread(importlib.import_module, "aiobotocore.session")
        config_mod = await asyncio.to_thread(importlib.import_module, "botocore.config")

        connect_timeout, read_timeout, max_attempts = self._timeouts
        config = config_mod.Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # botocore's "max_attempts" counts retries, "total_max_attempts" all tries.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=max(10, 2 * self.concurrency),
            # No SHA-256 of bodies on the event loop (botocore signs payloads
            # over plain http otherwise), and no extra CRC-32 of them: every
            # record carries its own CRC-32, checked after a restore.
            s3={"payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = session_mod.get_session()
        await asyncio.to_thread(_warm_loader, session)
        stack = contextlib.AsyncExitStack()
        where = f"s3://{self.bucket}/{self._key_prefix}"
        try:
            with _s3_errors(f"connecting to S3 for {where}"):
                self._client = await stack.enter_async_context(
                    session.create_client("s3", config=config)
                )
            await self._check_bucket()
            removed = await self._remove_leftovers() if cleanup else 0
        except BaseException:
            self._client = None
            await stack.aclose()
            raise
        self._stack = stack
        return removed

    async def _check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            with _s3_errors(f"checking spill bucket {self.bucket!r}"):
                await self._client.head_bucket(Bucket=self.bucket)
        except SpillIOError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError):
                status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404:
                    raise SpillIOError(
                        f"spill bucket {self.bucket!r} does not exist (create it, or fix "
                        f"the spill setting s3://{self.bucket}/{self.prefix})"
                    ) from cause
                if status == 403:
                    raise SpillIOError(
                        f"no access to spill bucket {self.bucket!r} with these credentials"
                    ) from cause
            raise

    async def _remove_leftovers(self) -> int:
        from botocore.exceptions import ClientError

        client = self._client
        where = f"s3://{self.bucket}/{self._key_prefix}"
        removed = 0
        with _s3_errors(f"removing earlier spill files under {where}"):
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._key_prefix
            )
            async for page in pages:
                for upload in page.get("Uploads", []):
                    with contextlib.suppress(ClientError):  # finished or aborted meanwhile
                        await client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key_prefix
            )
            async for page in pages:
                keys = [obj["Key"] for obj in page.get("Contents", [])]
                for i in range(0, len(keys), _S3_DELETE_BATCH):
                    batch = keys[i : i + _S3_DELETE_BATCH]
                    resp = await client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                    )
                    errors = resp.get("Errors", [])
                    if errors:
                        first = errors[0]
                        raise SpillIOError(
                            f"removing earlier spill files under {where}: {len(errors)} not "
                            f"deleted, e.g. {first.get('Key')}: {first.get('Code')} "
                            f"{first.get('Message', '')}"
                        )
                    removed += len(batch)
        return removed

    async def write(self, parts: Sequence[Buffer], total: int) -> str:
        """Upload the parts as one object (multipart above ``single_put_max``); return its URL."""
        client = self._require()
        views = source_views(parts, total)
        key = self._new_key()
        base = s3_base(self.bucket, key)
        doing = f"writing {total} bytes to {base}"
        if total <= self.single_put_max:
            try:
                body = _request_body(views)
                with _s3_errors(doing):
                    await client.put_object(
                        Bucket=self.bucket, Key=key, Body=body, ContentLength=total
                    )
            except BaseException:
                # Cancelled or timed out, the object may exist all the same.
                self._spawn(self._discard(key))
                raise
        else:
            await self._write_multipart(key, views, total, doing)
        # Every request is done: nothing reads the views any more.  (After an
        # error aiohttp may still be reading a body in its executor; the views
        # are then left to the garbage collector.)
        release_views(views)
        return base

    async def _write_multipart(
        self, key: str, views: list[memoryview], total: int, doing: str
    ) -> None:
        part_size = max(self.part_size, -(-total // S3_MAX_PARTS))
        plan = _split_parts(views, part_size)
        await self._upload_parts(key, plan, doing)
        for part in plan:  # done: release the slices (see write)
            release_views(part)

    async def _upload_parts(self, key: str, plan: list[list[memoryview]], doing: str) -> None:
        client = self._client
        upload_id: str | None = None
        etags: list[str | None] = [None] * len(plan)
        todo = iter(range(len(plan)))  # shared by the workers: each part is taken once

        async def worker() -> None:
            for i in todo:
                body = _request_body(plan[i])
                with _s3_errors(f"{doing} (part {i + 1} of {len(plan)})"):
                    resp = await client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=i + 1,
                        Body=body,
                        ContentLength=sum(len(v) for v in plan[i]),
                    )
                etags[i] = resp["ETag"]

        try:
            with _s3_errors(doing):
                created = await client.create_multipart_upload(Bucket=self.bucket, Key=key)
            upload_id = created["UploadId"]
            await _gather_or_cancel([worker() for _ in range(min(self.concurrency, len(plan)))])
            with _s3_errors(doing):
                await client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"ETag": e, "PartNumber": i + 1} for i, e in enumerate(etags)]
                    },
                )
        except BaseException:
            # A cancelled CreateMultipartUpload may have created the upload all
            # the same: then the cleanup looks it up.
            self._spawn(self._discard(key, multipart=True, upload_id=upload_id))
            raise

    async def _discard(
        self, key: str, *, multipart: bool = False, upload_id: str | None = None
    ) -> None:
        """Best effort: abort the key's uploads and delete it.

        A request still on its way may yet land after this; start() of the
        node's next run sweeps whatever is left.
        """
        client = self._client
        if client is None:
            return
        try:
            async with asyncio.timeout(_CLEANUP_TIMEOUT_S):
                if multipart:
                    ids = [upload_id] if upload_id is not None else []
                    if not ids:
                        resp = await client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
                        ids = [u["UploadId"] for u in resp.get("Uploads", []) if u["Key"] == key]
                    for uid in ids:
                        with contextlib.suppress(Exception):
                            await client.abort_multipart_upload(
                                Bucket=self.bucket, Key=key, UploadId=uid
                            )
                await client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - best effort, logged
            log.warning("spill cleanup failed", url=s3_base(self.bucket, key), error=repr(exc))

    async def read_into(self, base: str, offset: int, dests: Sequence[memoryview]) -> None:
        """Fill ``dests`` from one ranged GET, copying the body as it arrives."""
        client = self._require()
        key = self._key_of(base)
        if offset < 0:
            raise ValueError(f"offset is >= 0, got {offset}")
        views = dest_views(dests)
        total = sum(len(v) for v in views)
        if total == 0:
            return
        doing = f"reading {total} bytes at offset {offset} of {base}"
        try:
            with _s3_errors(doing, lost_if_missing=True):
                resp = await client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + total - 1}"
                )
                async with resp["Body"] as body:
                    content_range = resp.get("ContentRange") or ""
                    if not content_range.startswith(f"bytes {offset}-") and (
                        offset != 0 or content_range
                    ):
                        raise SpillIOError(
                            f"{doing}: the server answered the range with {content_range!r}"
                        )
                    length = int(resp.get("ContentLength", 0))
                    if length < total:
                        raise SpillCorruptError(
                            f"{doing}: the object ends {total - length} bytes before that"
                        )
                    done = 0
                    for view in views:
                        pos = 0
                        while pos < len(view):
                            chunk = await body.read(min(len(view) - pos, _S3_READ_CHUNK))
                            if not chunk:
                                raise SpillIOError(
                                    f"{doing}: the response ended after {done} bytes"
                                )
                            view[pos : pos + len(chunk)] = chunk
                            pos += len(chunk)
                            done += len(chunk)
        finally:
            release_views(views)  # nothing else holds them; see _release

    async def delete(self, base: str) -> None:
        """Delete the object; a missing one is fine."""
        client = self._require()
        key = self._key_of(base)
        try:
            with _s3_errors(f"deleting {base}", lost_if_missing=True):
                await client.delete_object(Bucket=self.bucket, Key=key)
        except SpillCorruptError:
            pass  # not there: deleted already

    async def close(self) -> None:
        """Wait (bounded) for background cleanups, then close the client."""
        await self._background.drain()
        stack, self._stack = self._stack, None
        self._client = None
        if stack is not None:
            await stack.aclose()
