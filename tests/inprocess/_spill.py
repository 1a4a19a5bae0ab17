"""Shared pieces of the in-process spill tests: a manager over a SpillStore, and checks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from fakes import SpillStore

from objstore.config import Config
from objstore.spill.backends import LocalBackend, SpillBackend
from objstore.spill.manager import SpillManager
from objstore.spill.urls import split_base

KiB = 1 << 10
MiB = 1 << 20
SIZE = 64 * KiB  # one object
CAPACITY = 16 * SIZE  # the store holds 16 objects

# Tiny waits and deadlines: each test runs in well under a second or two.
SPILL = {
    "threshold": 1.0,  # only make_room spills, unless a test lowers it
    "min_spilling_size": 1,
    "unmap_wait_s": 0.2,
    "make_room_timeout_s": 3.0,
    "restore_retry_first_s": 0.01,
    "restore_retry_max_s": 0.05,
    "write_backoff_first_s": 0.05,
    "write_backoff_max_s": 0.2,
    "shutdown_delete_timeout_s": 5.0,
}


def oid(i: int) -> bytes:
    """A distinct 20-byte object id per integer."""
    return i.to_bytes(20, "big")


def data(i: int, size: int = SIZE) -> bytes:
    """Distinct bytes per integer."""
    return np.random.default_rng(i).bytes(size)


def config(**spill: Any) -> Config:
    return Config.for_test(spill={**SPILL, **spill})


def spill_files(root: Path) -> set[str]:
    """Every spill file under ``root`` (absolute paths)."""
    return {str(p) for p in root.rglob("*.spill")} if root.exists() else set()


def known_files(mgr: SpillManager) -> set[str]:
    """The local paths of the files the manager keeps."""
    return {split_base(base)[2] for base in mgr.files.files()}


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def check_manager(mgr: SpillManager) -> None:
    """The manager's pure parts are consistent, and agree with each other."""
    mgr.policy.check()
    mgr.files.check()
    mgr.restores.check()
    assert set(mgr.copies) == {o for f in mgr.files.files() for o in mgr.files.objects_in(f)}
    assert mgr.spilled_bytes == sum(mgr._spilled.values())
    assert set(mgr._spilled) <= set(mgr.copies)


def check_store_agrees(store: SpillStore, mgr: SpillManager) -> None:
    """Every spilled object has a copy; every tracked primary is sealed in memory."""
    from objstore.plasma.api import ObjectState

    for o, e in store.objects.items():
        if e.state is ObjectState.SPILLED:
            assert o in mgr.copies, o.hex()
        if o in mgr.policy:
            assert e.state is ObjectState.SEALED, (o.hex(), e.state)


@contextlib.asynccontextmanager
async def spilling(
    root: Path,
    backend: SpillBackend | None = None,
    capacity: int = CAPACITY,
    **spill: Any,
) -> AsyncIterator[tuple[SpillStore, SpillManager]]:
    """A started manager over a fresh SpillStore, spilling under ``root``.

    At the end: closed, and nothing left anywhere (tasks, leases, files).
    """
    store = SpillStore(capacity=capacity)
    if backend is None:
        backend = LocalBackend([str(root)], "node")
    mgr = SpillManager(store, config(**spill), backend)
    store.spiller = mgr
    await mgr.start()
    try:
        yield store, mgr
        check_manager(mgr)
        check_store_agrees(store, mgr)
    finally:
        await mgr.close()
    assert mgr.tasks == 0, "tasks left in the manager"
    check_manager(mgr)
    store.check()
    assert not spill_files(root), spill_files(root)
