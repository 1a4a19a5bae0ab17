"""A node: the shared-memory store and its socket server on one event loop.

The directory, transfer and spill components join here in later issues; the
node already has the seams: ``PlasmaStore.spill_hook`` for spilling before the
disk fallback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import structlog

from objstore.config import Config, format_size
from objstore.ids import new_node_id
from objstore.plasma.server import PlasmaServer
from objstore.plasma.store import PlasmaStore

__all__ = ["Node"]

log = structlog.get_logger("objstore.node")


class Node:
    """One node process's components."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_id = new_node_id()
        self.store: PlasmaStore | None = None
        self.server: PlasmaServer | None = None
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
        except BaseException:
            self.store.close()
            raise
        first = self.store.arena.start_prefault(
            cfg.plasma.prefault_bytes, first=cfg.plasma.prefault_before_ready_bytes
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
            "address": None,
            "directory": cfg.node.directory,
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
        if self.server is not None:
            await self.server.close()
        if self.store is not None:
            self.store.close()
        self._stopped.set()
        log.info("node stopped", node_id=self.node_id.hex())

    @staticmethod
    def announce(ready: dict[str, object]) -> None:
        """Print the ready line on stdout (one JSON object, flushed)."""
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
