"""The in-process directory harness: a real server in the test's loop, real clients, fake nodes.

The server listens on 127.0.0.1 port 0 (or a given port, for restarts); each
member is a :class:`~objstore.directory.client.DirectoryClient` over gRPC (or
in-process, as the head node's own) with a :class:`fakes.FakeNode` behind it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fakes import CREDS, FakeNode

from objstore.auth import Credentials
from objstore.config import Config
from objstore.directory.client import DirectoryClient
from objstore.directory.local import LocalLink
from objstore.directory.persist import StateStore
from objstore.directory.server import DirectoryServer

__all__ = [
    "directory_config",
    "serving",
    "Member",
    "member",
    "oid",
    "until",
    "no_new_tasks",
]


def directory_config(**directory: Any) -> Config:
    """Tiny heartbeats and timeouts, so that deaths and retries happen within a second."""
    settings = {
        "heartbeat_s": 0.05,
        "node_timeout_s": 1.0,
        "request_timeout_s": 2.0,
        "report_interval_s": 0.001,
        **directory,
    }
    return Config.for_test(directory=settings)


def oid(i: int | None = None) -> bytes:
    """An object id: ``i`` in its last bytes, or random."""
    return os.urandom(20) if i is None else i.to_bytes(20, "big")


@asynccontextmanager
async def serving(
    config: Config | None = None, port: int = 0, store: StateStore | None = None
) -> AsyncIterator[DirectoryServer]:
    """A started :class:`DirectoryServer` on 127.0.0.1, stopped on exit."""
    server = DirectoryServer(config or directory_config(), store=store, credentials=CREDS)
    await server.start("127.0.0.1", port)
    try:
        yield server
    finally:
        await server.stop()


@dataclass
class Member:
    """One node of the test cluster: its directory client and its fake node."""

    client: DirectoryClient
    node: FakeNode

    @property
    def node_id(self) -> bytes:
        return self.client.node_id


@asynccontextmanager
async def member(
    server: DirectoryServer,
    config: Config | None = None,
    *,
    node: FakeNode | None = None,
    local: bool = False,
    start: bool = True,
    address: str = "",
    credentials: Credentials | None = None,
) -> AsyncIterator[Member]:
    """A client registered with ``server`` (over gRPC, or in-process with ``local``),
    with the server's credentials unless given others."""
    cfg = (config or server.config).replace(node={"directory": server.address})
    fake = node or FakeNode()
    link = (lambda: LocalLink(server)) if local else None
    client = DirectoryClient(
        cfg,
        os.urandom(16),
        fake,
        fake,
        address=address or f"127.0.0.1:{40000 + len(server.state.nodes)}",
        socket="fake.sock",
        link=link,
        credentials=credentials or server.credentials,
    )
    fake.hooks = client
    try:
        if start:
            await client.start(timeout=10.0)
        yield Member(client, fake)
    finally:
        await client.stop()


async def until(check: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll a condition on state that no event signals (the server's tables)."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what or check!r}") from None


async def no_new_tasks(before: set[asyncio.Task[Any]], timeout: float = 10.0) -> None:
    """Wait until every task started since ``before`` was taken has ended."""
    me = asyncio.current_task()

    def extra() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() if t is not me and t not in before and not t.done()}

    try:
        async with asyncio.timeout(timeout):
            while extra():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"tasks leaked: {extra()!r}") from None
