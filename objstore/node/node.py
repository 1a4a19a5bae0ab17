"""A node: the shared-memory store, its socket server and its directory link.

The head node (``--head``) also runs the directory server; every node keeps a
:class:`~objstore.directory.client.DirectoryClient` to it (the head's own goes
over loopback like everyone's).  The store reports each copy added or gone to
that client, and tells it which remote objects gets wait for; the directory's
answers fail those gets when the object is lost or deleted elsewhere.  The
transfer and spill components join here in later issues (seam:
``PlasmaStore.spill_hook``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import sys
import time

import structlog

from objstore.config import Config, format_size
from objstore.directory.client import DirectoryClient, parse_address
from objstore.directory.server import DirectoryServer, LocalLink
from objstore.directory.state import DELETED, LOST, ObjectRow, Usage
from objstore.errors import ConfigError, ObjectLostError, ObjectNotFoundError
from objstore.ids import new_node_id
from objstore.plasma.server import PlasmaServer
from objstore.plasma.store import PlasmaStore
from objstore.spill.backend import open_backend
from objstore.spill.manager import SpillManager
from objstore.spill.remote import SpillReader
from objstore.transfer.manager import ObjectManager
from objstore.transfer.server import TransferServer

__all__ = ["Node"]

log = structlog.get_logger("objstore.node")


class Node:
    """One node process's components."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_id = new_node_id()
        self.store: PlasmaStore | None = None
        self.server: PlasmaServer | None = None
        self.directory_server: DirectoryServer | None = None
        self.directory: DirectoryClient | None = None
        self.transfer: TransferServer | None = None
        self.objects: ObjectManager | None = None
        self.spill: SpillManager | None = None
        self.spill_reader: SpillReader | None = None
        self._stopped = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, object]:
        """Create the arena, bind the socket; returns the ready line's fields."""
        t0 = time.perf_counter()
        cfg = self.config
        self.store = PlasmaStore(cfg)
        try:
            self.server = PlasmaServer(self.store, cfg, self.node_id)
            await self.server.start()
            await self._start_spilling()
            await self._join_cluster()
        except BaseException:
            await self.stop()
            raise
        first = self.store.arena.start_prefault(
            cfg.plasma.prefault_bytes,
            first=cfg.plasma.prefault_before_ready_bytes,
            # A node in a cluster receives objects into its own mapping.
            own=bool(cfg.node.directory),
        )
        # The first part before ready, so that the first puts land on warm pages.
        await asyncio.to_thread(first.wait, 5.0)
        if cfg.node.loop_lag_warn_ms > 0:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch_loop(cfg.node.loop_lag_warn_ms / 1000.0), name="loop-watchdog"
            )
        ready: dict[str, object] = {
            "event": "ready",
            "node_id": self.node_id.hex(),
            "socket": self.server.path,
            "address": self.transfer.address if self.transfer else None,
            "directory": self.config.node.directory,
            "memory": self.store.capacity,
            "pid": os.getpid(),
        }
        log.info(
            "node ready",
            node_id=self.node_id.hex(),
            socket=self.server.path,
            memory=format_size(self.store.capacity),
            prefault=format_size(min(cfg.plasma.prefault_bytes, self.store.capacity)),
            fallback_dir=self.store.fallback_dir,
            seconds=round(time.perf_counter() - t0, 3),
        )
        return ready

    async def _join_cluster(self) -> None:
        """Start the directory (on the head) and register with it."""
        cfg = self.config
        if cfg.node.head:
            self.directory_server = DirectoryServer(cfg, head_node_id=self.node_id)
            await self.directory_server.start(cfg.node.host, cfg.node.directory_port)
            self.config = cfg = cfg.replace(node={"directory": self.directory_server.address})
        if not cfg.node.directory:
            return
        store = self.store
        assert store is not None and self.server is not None
        if cfg.node.advertise:
            parse_address(cfg.node.advertise, "node.advertise")  # a clear error if malformed
        # The data plane: other nodes fetch chunks of this node's objects here.
        self.transfer = TransferServer(store, cfg)
        await self.transfer.start(cfg.node.host, cfg.node.port)
        side = _DirectorySide(self)
        client = DirectoryClient(
            cfg,
            self.node_id,
            side,
            side,
            socket=self.server.path,
            address=cfg.node.advertise or self.transfer.address,
            # The head's own node calls its directory in-process.
            link=(lambda: LocalLink(head)) if (head := self.directory_server) else None,
        )
        self.directory = client
        self.objects = ObjectManager(store, cfg, self.node_id, client.addresses.get)
        # A spill copy in S3 whose node is gone is read from S3 directly.
        reader = self.spill_reader = SpillReader(store)
        objects = self.objects
        objects.spill_fetch = lambda oid, url: reader.fetch(oid, url, objects.create_copy)
        objects.spill_readable = SpillReader.readable
        store.listener = client
        store.remote = _Watcher(client, self.objects)
        self.server.directory = client
        objects, transfer = self.objects, self.transfer
        self.server.transfer_stats = lambda: (
            objects.pulled,
            objects.bytes_pulled,
            transfer.chunks_sent,
            transfer.bytes_sent,
        )
        await client.start()

    async def _start_spilling(self) -> None:
        """Spilling to ``--spill`` (a directory, several, or s3://bucket/prefix), if given."""
        cfg = self.config
        assert self.store is not None and self.server is not None
        if not cfg.spill.url:
            return
        try:
            backend = open_backend(cfg.spill.url, _spill_namespace(self.server.path))
        except ValueError as exc:
            raise ConfigError(f"spill.url: {exc}") from exc
        self.spill = SpillManager(self.store, cfg, backend, on_spilled=self._on_spilled)
        await self.spill.start()
        self.server.spill_stats = self.spill.stats
        self.server.spill_url_of = self.spill.url_of
        self.server.spill_target = cfg.spill.url
        log.info("spilling", to=cfg.spill.url, threshold=cfg.spill.threshold)

    def _on_spilled(self, oid: bytes, url: str) -> None:
        if self.directory is not None:
            self.directory.spilled(oid, url)

    def _usage(self) -> Usage:
        store = self.store
        assert store is not None
        return Usage(
            memory_used=store.allocator.used,
            memory_total=store.capacity,
            pinned_bytes=store.pinned_bytes,
            objects=len(store.objects),
            spilled_bytes=self.spill.spilled_bytes if self.spill is not None else 0,
            fallback_used=store.fallback_used,
            clients=len(self.server.connections) if self.server else 0,
        )

    def _on_update(self, rows: list[ObjectRow]) -> None:
        """Subscribed objects changed: fail the gets of lost or deleted ones."""
        store = self.store
        assert store is not None
        for row in rows:
            if row.state == LOST:
                n = store.fail_waiters(
                    row.object_id,
                    ObjectLostError(
                        f"object {row.object_id.hex()} is lost: every copy was on nodes that "
                        "died, and it was never spilled"
                    ),
                )
                if n:
                    log.info("gets failed: object lost", object_id=row.object_id.hex(), gets=n)
            elif row.state == DELETED:
                store.fail_waiters(
                    row.object_id, ObjectNotFoundError(f"object {row.object_id.hex()} was deleted")
                )
            if self.objects is not None:
                # PRESENT on another node: pull it (one pull however many gets wait).
                self.objects.on_locations(row)

    def _on_free(self, ids: list[bytes]) -> None:
        """Objects deleted on another node: free the copies here."""
        assert self.store is not None
        n = self.store.delete_many(ids, report=False)
        log.debug("objects deleted elsewhere freed here", requested=len(ids), freed=n)

    def _on_dead(self, node_ids: list[bytes]) -> None:
        """Nodes declared dead: stop serving their transfers."""
        if self.transfer is not None:
            for nid in node_ids:
                self.transfer.drop_destination(nid)

    async def _watch_loop(self, limit: float) -> None:
        """Log when the event loop was kept from running for longer than ``limit``."""
        loop = asyncio.get_running_loop()
        tick = 0.05
        while True:
            before = loop.time()
            await asyncio.sleep(tick)
            lag = loop.time() - before - tick
            if lag > limit:
                log.warning("event loop blocked", ms=round(lag * 1000, 1))

    async def stop(self) -> None:
        """Close every client, remove the socket file, release the arena."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.objects is not None:
            await self.objects.close()
        if self.directory is not None:
            await self.directory.stop()
        if self.transfer is not None:
            await self.transfer.close()
        if self.server is not None:
            await self.server.close()
        if self.spill is not None:
            await self.spill.close()
        if self.spill_reader is not None:
            await self.spill_reader.close()
        if self.directory_server is not None:
            await self.directory_server.stop()
        if self.store is not None:
            self.store.close()
        self._stopped.set()
        log.info("node stopped", node_id=self.node_id.hex())

    @staticmethod
    def announce(ready: dict[str, object]) -> None:
        """Print the ready line on stdout (one JSON object, flushed)."""
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()


class _DirectorySide:
    """The node as its directory client reads it and tells it (NodeView, DirectoryListener)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def snapshot(self) -> list[tuple[bytes, int, bool, str]]:
        assert self.node.store is not None
        return self.node.store.snapshot()

    def spilled_snapshot(self) -> list[tuple[bytes, str]]:
        spill = self.node.spill
        return [] if spill is None else [(oid, c.url()) for oid, c in spill.copies.items()]

    def usage(self) -> Usage:
        return self.node._usage()

    def on_update(self, rows: list[ObjectRow]) -> None:
        self.node._on_update(rows)

    def on_free(self, ids: list[bytes]) -> None:
        self.node._on_free(ids)

    def on_dead(self, node_ids: list[bytes]) -> None:
        self.node._on_dead(node_ids)


class _Watcher:
    """The store's remote watcher: subscriptions through the directory, pulls
    cancelled when no get waits any more."""

    def __init__(self, directory: DirectoryClient, objects: ObjectManager) -> None:
        self.directory = directory
        self.objects = objects

    def watch(self, oid: bytes, priority: int) -> None:
        self.objects.want(oid, priority)
        self.directory.watch(oid)

    def unwatch(self, oid: bytes, priority: int) -> None:
        self.directory.unwatch(oid)
        self.objects.unwant(oid, priority)


def _spill_namespace(socket_path: str) -> str:
    """This node's folder in the spill target: the host and its socket.

    The node holds its socket exclusively, so whatever is in that folder at
    start was left by an earlier run of the same node, and is removed.
    """
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"
    digest = hashlib.sha256(os.path.abspath(socket_path).encode()).hexdigest()[:12]
    return f"{host}-{digest}"
