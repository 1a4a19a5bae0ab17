"""Reading a spill record another node wrote to S3, straight into this node's store.

When the directory says an object has no live copy on any node but a spill
copy in S3 (its node died after spilling it), the node that wants it reads the
record itself: the header and metadata first, then the payload straight into
a new secondary copy (``Store.create_secondary``), checked in a thread by
:func:`~objstore.spill.records.check_record` -- the same check a restore
makes -- before it is sealed.  A file on another node's local disk cannot be
read this way (that node serves its own spilled objects, restoring them
first).
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial

import structlog

from objstore.config import Config
from objstore.plasma.api import Store
from objstore.spill.backends.base import run_in_thread
from objstore.spill.backends.s3 import S3Backend
from objstore.spill.errors import SpillCorruptError
from objstore.spill.records import HEADER_SIZE, check_record, decode_header
from objstore.spill.urls import S3SpillFile, SpillURL

__all__ = ["SpillReader"]

log = structlog.get_logger("objstore.spill")

# Bytes read first: the header, the metadata (usually small) and the payload's start.
_FIRST_READ = 64 * 1024


class SpillReader:
    """Reads S3 spill records of any node into this node's store."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        # (bucket, prefix, namespace) -> a started reader backend (no cleanup).
        self._backends: dict[tuple[str, str, str], asyncio.Future[S3Backend]] = {}
        self.objects_read = 0
        self.bytes_read = 0

    @staticmethod
    def readable(url: str) -> bool:
        """Whether this node can read the spill copy at ``url`` itself (an S3 record)."""
        try:
            S3SpillFile.parse(SpillURL.parse(url).base)
        except (TypeError, ValueError):
            return False
        return True

    async def _backend(self, base: str) -> S3Backend:
        try:
            f = S3SpillFile.parse(base)
        except ValueError as exc:
            raise SpillCorruptError(f"not a spill file of a node: {base}") from exc
        k = (f.bucket, f.prefix, f.namespace)
        fut = self._backends.get(k)
        if fut is None:
            fut = self._backends[k] = asyncio.get_running_loop().create_future()
            backend = S3Backend.from_config(f.bucket, f.prefix, f.namespace, self.config.spill)
            try:
                await backend.start(cleanup=False)
            except BaseException as exc:
                del self._backends[k]
                fut.set_exception(exc)
                fut.exception()  # retrieved: the next caller tries again
                raise
            fut.set_result(backend)
        return await asyncio.shield(fut)

    async def fetch(self, oid: bytes, url: str) -> int:
        """Read the record at ``url`` into a new sealed secondary copy; returns its size.

        :class:`SpillCorruptError` if the record is missing or damaged (the
        copy is then discarded), :class:`~objstore.spill.errors.SpillIOError`
        if S3 fails in a way that may pass.
        """
        try:
            u = SpillURL.parse(url)
        except ValueError as exc:
            raise SpillCorruptError(f"object {oid.hex()}: bad spill URL {url!r}") from exc
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
        del head[meta_end:]
        rest_at = u.offset + meta_end + len(got)
        store = self.store
        entry = await store.create_secondary(oid, header.data_size, meta)
        sealed = False
        target = store.view(entry)
        try:
            stored: bytearray | None = None
            if header.compressed:
                stored = bytearray(header.stored_len)
                stored[: len(got)] = got
                if len(got) < header.stored_len:
                    await backend.read_into(u.base, rest_at, [memoryview(stored)[len(got) :]])
            else:
                target[: len(got)] = got
                if len(got) < header.stored_len:
                    rest = target[len(got) :]
                    try:
                        await backend.read_into(u.base, rest_at, [rest])
                    finally:
                        rest.release()
            await run_in_thread(partial(check_record, meta=meta), oid, u.size, head, target, stored)
            target.release()
            store.seal_secondary(oid)
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
        """Close the reader backends."""
        for fut in self._backends.values():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                with contextlib.suppress(Exception):
                    await fut.result().close()
        self._backends.clear()
