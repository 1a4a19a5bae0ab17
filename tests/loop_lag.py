"""How long this process's event loop kept itself from running, for tests that bound it.

:class:`LoopLag` runs a ticker (a short sleep in a loop) while a test does its
work and keeps the longest gap between two ticks.  A busy machine delays ticks
too (the loop thread is ready but not scheduled), so the gap that counts is
the wall gap minus the loop thread's run-queue wait over it (the rule of
:mod:`objstore.watchdog`); where the kernel does not report that wait, the
wall gap::

    async with LoopLag() as lag:
        await work()
    assert lag.worst < 0.1, lag
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

from objstore.watchdog import ThreadClock, tick_times

__all__ = ["LoopLag"]


class LoopLag:
    """The longest gap between ticks of the loop's own making (see the module docstring)."""

    def __init__(self, tick_s: float = 0.002) -> None:
        self.tick_s = tick_s
        # The longest gap less its run-queue wait, and that gap on the wall clock, in seconds.
        self.worst = 0.0
        self.worst_wall = 0.0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"LoopLag(worst={self.worst * 1000:.0f} ms of its own, "
            f"{self.worst_wall * 1000:.0f} ms on the wall)"
        )

    async def _run(self, clock: ThreadClock) -> None:
        last = clock.sample()
        while True:
            await asyncio.sleep(self.tick_s)
            now = clock.sample()
            # The gap is the tick's lag plus the tick itself.
            times = tick_times(last, now, 0.0)
            if times.own_s > self.worst:
                self.worst, self.worst_wall = times.own_s, times.lag_s
            last = now

    async def __aenter__(self) -> Self:
        clock = ThreadClock()
        self._task = asyncio.create_task(self._run(clock))
        self._task.add_done_callback(lambda _: clock.close())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
