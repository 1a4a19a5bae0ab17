"""A node: its components, started in order and stopped in the reverse order.

:meth:`Node.start` builds each component, gives it its collaborators, and
pushes its shutdown onto an :class:`~contextlib.AsyncExitStack`, so that
:meth:`Node.stop` (or a failed start) tears down exactly what was started,
last first.  What requests mean is the object service's
(:mod:`objstore.node.objects`); this module only wires:

1. the store (arena, table) reporting to the object service;
2. the client socket, bound (so no other node takes it) but not served yet;
3. the spill manager, with ``--spill``;
4. on the head, the directory server; in a cluster, the data plane's server,
   the pulling side and the directory client;
5. the object service is given its components, the directory client
   registers, and the socket starts serving clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import time

import structlog

from objstore.auth import (
    Credentials,
    head_credentials,
    member_credentials,
    publish_token,
    unpublish_token,
)
from objstore.config import Config, format_size
from objstore.directory.client import DirectoryClient, parse_address
from objstore.directory.local import LocalLink
from objstore.directory.server import DirectoryServer
from objstore.errors import ConfigError
from objstore.ids import new_node_id
from objstore.node.objects import ObjectService, Parts
from objstore.node.ports import Directory, PeerServer, Puller, Spill
from objstore.plasma.server import PlasmaServer
from objstore.plasma.store import PlasmaStore
from objstore.spill.backends import open_backend
from objstore.spill.manager import SpillManager
from objstore.spill.remote import SpillReader
from objstore.transfer.manager import ObjectManager
from objstore.transfer.peer import PeerClient
from objstore.transfer.server import TransferServer
from objstore.watchdog import watch_loop

__all__ = ["Node"]

log = structlog.get_logger("objstore.node")


class Node:
    """One node process's components."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_id = new_node_id()
        self.service = ObjectService(config, self.node_id)
        self.store: PlasmaStore | None = None
        self.server: PlasmaServer | None = None
        self.directory_server: DirectoryServer | None = None
        self.transfer_address: str | None = None
        self.credentials: Credentials | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def start(self) -> dict[str, object]:
        """Start every component; returns the ready line's fields."""
        t0 = time.perf_counter()
        stack = contextlib.AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()
            log.info("node stopped", node_id=self.node_id.hex())
            raise
        self._stack = stack
        cfg = self.config
        store, server, creds = self.store, self.server, self.credentials
        assert store is not None and server is not None
        log.info(
            "node ready",
            node_id=self.node_id.hex(),
            socket=server.path,
            memory=format_size(store.capacity),
            prefault=format_size(min(cfg.plasma.prefault_bytes, store.capacity)),
            fallback_dir=store.fallback_dir,
            seconds=round(time.perf_counter() - t0, 3),
        )
        return {
            "event": "ready",
            "node_id": self.node_id.hex(),
            "socket": server.path,
            "address": self.transfer_address,
            "directory": cfg.node.directory,
            "memory": store.capacity,
            "pid": os.getpid(),
            "auth": "off" if creds is None or not creds.secure else "token",
            "tls": bool(creds is not None and creds.tls is not None),
        }

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        service = self.service
        store = self.store = PlasmaStore(cfg, events=service)
        stack.callback(store.close)
        server = self.server = PlasmaServer(service, cfg, self.node_id)
        await server.bind()
        stack.push_async_callback(server.close)
        spill = await self._start_spill(stack, store)
        directory, puller, peer_server = await self._start_cluster(stack, store)
        stack.push_async_callback(service.close)
        service.bind(
            Parts(
                store=store,
                spill=spill,
                directory=directory,
                puller=puller,
                peer_server=peer_server,
                spill_target=self.config.spill.url,
            )
        )
        if isinstance(directory, DirectoryClient):
            await directory.start()
        server.serve()
        stack.push_async_callback(server.close_connections)
        first = store.arena.start_prefault(
            cfg.plasma.prefault_bytes,
            first=cfg.plasma.prefault_before_ready_bytes,
            # A node in a cluster receives objects into its own mapping.
            own=bool(self.config.node.directory),
        )
        # The first part before ready, so that the first puts land on warm pages.
        await asyncio.to_thread(first.wait, 5.0)
        if cfg.node.loop_lag_warn_ms > 0:
            watchdog = asyncio.get_running_loop().create_task(
                watch_loop(cfg.node.loop_lag_warn_ms / 1000.0, log), name="loop-watchdog"
            )
            stack.push_async_callback(_cancel, watchdog)

    async def _start_spill(
        self, stack: contextlib.AsyncExitStack, store: PlasmaStore
    ) -> Spill | None:
        """Spilling to ``--spill`` (a directory, several, or s3://bucket/prefix), if given."""
        cfg = self.config
        if not cfg.spill.url:
            return None

        assert self.server is not None
        try:
            backend = open_backend(cfg.spill.url, _spill_namespace(self.server.path), cfg.spill)
        except ValueError as exc:
            raise ConfigError(f"spill.url: {exc}") from exc
        spill = SpillManager(store, cfg, backend, on_spilled=self.service.spilled)
        await spill.start()
        stack.push_async_callback(spill.close)
        log.info("spilling", to=cfg.spill.url, threshold=cfg.spill.threshold)
        return spill

    async def _start_cluster(
        self, stack: contextlib.AsyncExitStack, store: PlasmaStore
    ) -> tuple[Directory | None, Puller | None, PeerServer | None]:
        """The directory server (on the head), the data plane and the directory client."""
        cfg = self.config
        if cfg.node.head:
            creds = head_credentials(cfg.security, cfg.directory.state_dir)
        elif cfg.node.directory:
            creds = member_credentials(cfg.security, cfg.node.directory)
        else:
            return None, None, None
        self.credentials = creds
        if not creds.secure:
            log.warning(
                "authentication is off (--insecure): anyone who reaches this node's ports "
                "can read and delete its objects and pose as a node",
                host=cfg.node.host,
            )
        if cfg.node.head:
            dserver = self.directory_server = DirectoryServer(
                cfg, head_node_id=self.node_id, credentials=creds
            )
            await dserver.start(cfg.node.host, cfg.node.directory_port)
            stack.push_async_callback(dserver.stop)
            self.config = cfg = cfg.replace(node={"directory": dserver.address})
            if creds.token is not None:
                published = publish_token(dserver.address, creds.token)
                stack.callback(unpublish_token, dserver.address, creds.token)
                log.info("cluster token published", path=published, source=creds.source)

        if cfg.node.advertise:
            parse_address(cfg.node.advertise, "node.advertise")  # a clear error if malformed
        service = self.service
        # The data plane: other nodes fetch chunks of this node's objects here.
        peer_server = TransferServer(
            store, cfg, restore=service.restore_for_peer, credentials=creds
        )
        await peer_server.start(cfg.node.host, cfg.node.port)
        stack.push_async_callback(peer_server.close)
        self.transfer_address = peer_server.address
        assert self.server is not None
        directory = DirectoryClient(
            cfg,
            self.node_id,
            node=service,
            listener=service,
            socket=self.server.path,
            address=cfg.node.advertise or peer_server.address,
            # The head's own node calls its directory in-process.
            link=(lambda: LocalLink(head)) if (head := self.directory_server) else None,
            credentials=creds,
        )
        stack.push_async_callback(directory.stop)
        # A spill copy in S3 whose node is gone is read from S3 directly.
        reader = SpillReader(store, cfg)
        stack.push_async_callback(reader.close)
        peers = PeerClient.from_config(self.node_id, cfg, creds)
        stack.callback(peers.close)
        puller = ObjectManager(
            store,
            cfg,
            self.node_id,
            peers,
            directory.addresses.get,
            reader,
            relay=directory,
            partials=peer_server.partials,
        )
        stack.push_async_callback(puller.close)
        return directory, puller, peer_server

    async def stop(self) -> None:
        """Stop every component, last started first."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        log.info("node stopped", node_id=self.node_id.hex())

    @staticmethod
    def announce(ready: dict[str, object]) -> None:
        """Print the ready line on stdout (one JSON object, flushed)."""
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _spill_namespace(socket_path: str) -> str:
    """This node's folder in the spill target: the host and its socket.

    The node holds its socket exclusively, so whatever is in that folder at
    start was left by an earlier run of the same node, and is removed.
    """
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"
    digest = hashlib.sha256(os.path.abspath(socket_path).encode()).hexdigest()[:12]
    return f"{host}-{digest}"
