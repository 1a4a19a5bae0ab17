"""Reading a spill record another node wrote to S3, straight into this node's store.

When the directory says an object has no live copy on any node but a spill
copy in S3 (its node died after spilling it), the node that wants it reads the
record itself: the header and metadata first, then the payload straight into
a new secondary copy in the arena, checked by CRC before it is sealed.  A file
on another node's local disk cannot be read this way (that node serves its
own spilled objects, restoring them first).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from objstore.plasma.store import ObjectEntry, PlasmaStore
from objstore.spill.backend import S3Backend, SpillCorruptError, SpillURL
from objstore.spill.fused import HEADER_SIZE, decode_header, decompress_into, verify

__all__ = ["SpillReader"]

log = structlog.get_logger("objstore.spill")

# Bytes read first: the header, the metadata (usually small) and the payload's start.
_FIRST_READ = 64 * 1024

# Creates the secondary copy (waiting for room): (object id, size, metadata) -> entry.
Create = Callable[[bytes, int, bytes], Awaitable[ObjectEntry]]


class SpillReader:
    """Reads S3 spill records of any node into this node's store."""

    def __init__(self, store: PlasmaStore) -> None:
        self.store = store
        # (bucket, prefix, namespace) -> a started reader backend (no cleanup).
        self._backends: dict[tuple[str, str, str], asyncio.Future[S3Backend]] = {}
        self.objects_read = 0
        self.bytes_read = 0

    @staticmethod
    def readable(url: str) -> bool:
        """Whether this node can read the spill copy at ``url`` itself."""
        return url.startswith("s3://")

    async def _backend(self, base: str) -> S3Backend:
        bucket, _, key = base[len("s3://") :].partition("/")
        parts = key.split("/")
        if len(parts) < 2:
            raise SpillCorruptError(f"not a spill file of a node: {base}")
        namespace = parts[-2]
        prefix = "/".join(parts[:-2])
        k = (bucket, prefix, namespace)
        fut = self._backends.get(k)
        if fut is None:
            fut = self._backends[k] = asyncio.get_running_loop().create_future()
            backend = S3Backend(bucket, prefix, namespace)
            try:
                await backend.start(cleanup=False)
            except BaseException as exc:
                del self._backends[k]
                fut.set_exception(exc)
                fut.exception()  # retrieved: the next caller tries again
                raise
            fut.set_result(backend)
        return await asyncio.shield(fut)

    async def fetch(self, oid: bytes, url: str, create: Create) -> int:
        """Read the record at ``url`` into a new sealed secondary copy; returns its size."""
        u = SpillURL.parse(url)
        backend = await self._backend(u.base)
        head = bytearray(min(u.size, _FIRST_READ))
        await backend.read_into(u.base, u.offset, [memoryview(head)])
        header = decode_header(head, expect_oid=oid, expect_size=u.size)
        meta_end = HEADER_SIZE + header.meta_len
        if meta_end > len(head):
            more = bytearray(meta_end - len(head))
            await backend.read_into(u.base, u.offset + len(head), [memoryview(more)])
            head += more
        meta = bytes(head[HEADER_SIZE:meta_end])
        got = bytes(head[meta_end:])  # the payload's first bytes, read already
        entry = await create(oid, header.data_size, meta)
        store = self.store
        sealed = False
        target = store.view(entry)
        try:
            rest = header.stored_len - len(got)
            if header.compressed:
                stored = bytearray(header.stored_len)
                stored[: len(got)] = got
                if rest:
                    await backend.read_into(
                        u.base, u.offset + meta_end + len(got), [memoryview(stored)[len(got) :]]
                    )
                await asyncio.to_thread(decompress_into, header, stored, target)
            else:
                target[: len(got)] = got
                if rest:
                    await backend.read_into(
                        u.base, u.offset + meta_end + len(got), [target[len(got) :]]
                    )
            await asyncio.to_thread(verify, header, meta, target)
            store.seal(oid, None)
            sealed = True
        finally:
            with contextlib.suppress(BufferError):
                target.release()
            if not sealed:
                store.discard_partial(oid)
        self.objects_read += 1
        self.bytes_read += header.data_size
        log.debug("read a spilled object from S3", object_id=oid.hex(), url=url)
        return header.data_size

    async def close(self) -> None:
        for fut in self._backends.values():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                with contextlib.suppress(Exception):
                    await fut.result().close()
        self._backends.clear()
