"""Waiting in tests for something to have happened, instead of sleeping and hoping.

:func:`round_trip` is the fence for "the node has not done X": a local node
reads one connection's requests in order and answers at once those it can, so
when the reply to a later request (``stats``) is back, every earlier request
on that connection has reached the node and every reply the node sent for them
before has been handled here.  What has not happened by then did not happen
at once.

:func:`until` polls a condition up to a generous deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import objstore

__all__ = ["round_trip", "until"]


async def round_trip(client: objstore.Client) -> None:
    """A request's round trip on ``client``'s connection, with a turn of the loop on each side.

    Before: the callbacks already due run first (view releases queued by the
    garbage collector are sent with the next request).  After: the tasks that
    earlier replies woke get to run.
    """
    for _ in range(3):
        await asyncio.sleep(0)
    await client.stats()
    for _ in range(3):
        await asyncio.sleep(0)


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what} (last: {last!r})")
        await asyncio.sleep(0.02)


async def poll(
    fn: Callable[[], Awaitable[Any]], pred: Callable[[Any], bool], deadline: float = 10.0
) -> Any:
    """Call ``fn`` until ``pred`` holds for its result; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = await fn()
        if pred(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not reached within {deadline}s; last value {value!r}")
        await asyncio.sleep(0.02)
