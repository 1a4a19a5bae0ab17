"""The event loop's lag watchdog: a tick that came late, and whose fault it was.

:func:`watch_loop` sleeps ``tick_s`` at a time on the loop it watches and
measures how late each wakeup came (the *lag*, in wall time).  A late tick has
two causes that look the same on the wall clock:

- the loop thread itself did not come back to the loop: it ran Python code
  (a long copy, a hash, a big encode) or sat in a blocking call (``time.sleep``,
  file I/O, a lock, a stop by SIGSTOP).  That is a bug worth a warning,
  ``event loop blocked``.
- the thread was ready to run but the kernel gave the CPU to someone else (a
  busy machine, more runnable threads than cores).  Nothing in the process can
  fix that: it is logged at debug level as ``event loop delayed``.

Linux counts the second kind per thread: the second field of
``/proc/self/task/<tid>/schedstat`` is the time the thread spent runnable but
waiting on a run queue.  Over one tick, ``lag - run-queue wait`` is the loop's
own blocking (on CPU or in a blocking call), and only that is compared with the
limit.  Where schedstat cannot be read the rule falls back to the wall lag
alone (every late tick is ``blocked``), which is what the watchdog did before
it could tell the two apart.

Two limits of the rule: a wait for the GIL held by another thread of the
process counts as the loop's own blocking (the loop thread sleeps on a lock,
it is not runnable), even when that other thread is itself waiting for a CPU;
and run-queue wait that fell in the idle part of a tick (before its timer was
due) is subtracted too, so a block can be under-counted by at most one tick.

The loop thread's CPU time over the tick (``time.thread_time``) is logged with
both lines: high CPU means Python code kept the loop, low CPU a blocking call
or the scheduler.
"""

from __future__ import annotations

import asyncio
import enum
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Verdict", "TickTimes", "Sample", "ThreadClock", "judge", "tick_times", "watch_loop"]


class Verdict(enum.Enum):
    """What one tick says about the loop."""

    ON_TIME = "on time"
    # The loop thread kept itself from the loop for longer than the limit.
    BLOCKED = "event loop blocked"
    # The tick was late by more than the limit, mostly waiting for a CPU.
    DELAYED = "event loop delayed"


@dataclass(frozen=True, slots=True)
class TickTimes:
    """Where the time of one late tick went, in seconds."""

    # How much later than asked the tick woke up (wall time).
    lag_s: float
    # CPU time of the loop thread over the whole tick.
    cpu_s: float
    # Time the loop thread was runnable but not running over the tick; None where unknown.
    runqueue_s: float | None

    @property
    def own_s(self) -> float:
        """The part of the lag that was the loop thread's own doing (all of it when unknown)."""
        if self.runqueue_s is None:
            return self.lag_s
        return max(0.0, self.lag_s - self.runqueue_s)

    def fields(self) -> dict[str, float]:
        """The log line's fields: ``ms`` (the lag), ``cpu_ms``, ``runqueue_ms`` when known."""
        out = {"ms": round(self.lag_s * 1000, 1), "cpu_ms": round(self.cpu_s * 1000, 1)}
        if self.runqueue_s is not None:
            out["runqueue_ms"] = round(self.runqueue_s * 1000, 1)
        return out


def judge(times: TickTimes, limit_s: float) -> Verdict:
    """The verdict on one tick: blocked only if the loop's own share of the lag passes the limit."""
    if times.lag_s <= limit_s:
        return Verdict.ON_TIME
    if times.own_s > limit_s:
        return Verdict.BLOCKED
    return Verdict.DELAYED


@dataclass(frozen=True, slots=True)
class Sample:
    """The calling thread's clocks at one instant, in seconds."""

    wall: float
    cpu: float
    runqueue: float | None


class ThreadClock:
    """Reads the clocks of the thread that made it: wall, CPU and run-queue wait.

    The schedstat file is opened once and read with ``pread``: a read of a few
    bytes from procfs, which never touches a disk, so it is done on the loop.
    """

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._fd: int | None
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None
        if self._runqueue() is None:
            self.close()

    @property
    def has_runqueue(self) -> bool:
        """Whether this kernel reports the thread's run-queue wait."""
        return self._fd is not None

    def _runqueue(self) -> float | None:
        if self._fd is None:
            return None
        try:
            # "<cpu ns> <run-queue wait ns> <timeslices>\n"
            return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def sample(self) -> Sample:
        """The clocks now."""
        return Sample(time.monotonic(), time.thread_time(), self._runqueue())

    def close(self) -> None:
        """Close the schedstat file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def tick_times(before: Sample, after: Sample, tick_s: float) -> TickTimes:
    """The times of a tick of ``tick_s`` that began at ``before`` and ended at ``after``."""
    runqueue = None
    if before.runqueue is not None and after.runqueue is not None:
        runqueue = max(0.0, after.runqueue - before.runqueue)
    return TickTimes(
        lag_s=max(0.0, after.wall - before.wall - tick_s),
        cpu_s=max(0.0, after.cpu - before.cpu),
        runqueue_s=runqueue,
    )


async def watch_loop(limit_s: float, log: Any, tick_s: float = 0.05) -> None:
    """Watch the running loop until cancelled (see the module docstring).

    ``log`` is a structlog logger: ``log.warning("event loop blocked", ms=...,
    cpu_ms=..., runqueue_ms=...)`` when the loop kept itself from running for
    longer than ``limit_s``, ``log.debug("event loop delayed", ...)`` when the
    tick was that late but the thread was mostly waiting for a CPU.
    """
    clock = ThreadClock()
    try:
        before = clock.sample()
        while True:
            await asyncio.sleep(tick_s)
            after = clock.sample()
            times = tick_times(before, after, tick_s)
            verdict = judge(times, limit_s)
            if verdict is Verdict.BLOCKED:
                log.warning(Verdict.BLOCKED.value, **times.fields())
            elif verdict is Verdict.DELAYED:
                log.debug(Verdict.DELAYED.value, **times.fields())
            before = after
    finally:
        clock.close()
