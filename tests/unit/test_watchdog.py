"""The loop watchdog (objstore.watchdog): the pure verdict, then real blocks of this loop.

A CPU-contended loop (runnable but not scheduled) is tested with real processes
in tests/integration/test_watchdog_contention.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from objstore.watchdog import Sample, ThreadClock, TickTimes, Verdict, judge, tick_times, watch_loop

LIMIT = 0.25


@pytest.mark.parametrize(
    ("lag", "runqueue", "verdict"),
    [
        (0.0, 0.0, Verdict.ON_TIME),
        (0.25, None, Verdict.ON_TIME),  # at the limit is not over it
        (0.24, 0.0, Verdict.ON_TIME),
        (0.3, 0.0, Verdict.BLOCKED),  # a spin or a blocking call: nobody else had the CPU
        (0.3, None, Verdict.BLOCKED),  # no schedstat: the wall lag decides
        (3.0, None, Verdict.BLOCKED),
        (0.3, 0.29, Verdict.DELAYED),  # runnable all along: the machine was busy
        (3.0, 2.9, Verdict.DELAYED),
        (0.3, 0.06, Verdict.DELAYED),  # 0.24 s of its own: under the limit
        (0.6, 0.3, Verdict.BLOCKED),  # 0.3 s of its own on top of 0.3 s of contention
        (0.3, 0.5, Verdict.DELAYED),  # more wait than lag (wait in the idle part of the tick)
    ],
)
def test_verdict(lag: float, runqueue: float | None, verdict: Verdict) -> None:
    assert judge(TickTimes(lag, 0.0, runqueue), LIMIT) is verdict


def test_cpu_time_does_not_decide() -> None:
    # A blocking call uses no CPU and is still the loop's own fault.
    assert judge(TickTimes(0.5, 0.0, 0.0), LIMIT) is Verdict.BLOCKED
    assert judge(TickTimes(0.5, 0.5, 0.0), LIMIT) is Verdict.BLOCKED
    assert judge(TickTimes(0.5, 0.01, 0.49), LIMIT) is Verdict.DELAYED


def test_tick_times() -> None:
    t = tick_times(Sample(10.0, 1.0, 5.0), Sample(10.45, 1.3, 5.1), tick_s=0.05)
    assert t.lag_s == pytest.approx(0.4)
    assert t.cpu_s == pytest.approx(0.3)
    assert t.runqueue_s == pytest.approx(0.1)
    assert t.own_s == pytest.approx(0.3)
    assert t.fields() == {"ms": 400.0, "cpu_ms": 300.0, "runqueue_ms": 100.0}
    # An early wakeup is no lag; an unknown run queue on either side is unknown.
    early = tick_times(Sample(10.0, 1.0, None), Sample(10.04, 1.0, 5.0), tick_s=0.05)
    assert early.lag_s == 0.0 and early.runqueue_s is None and early.own_s == 0.0
    assert "runqueue_ms" not in early.fields()


def test_thread_clock_reads_this_threads_clocks() -> None:
    clock = ThreadClock()
    try:
        assert clock.has_runqueue  # Linux with schedstat: the machines this project runs on
        a = clock.sample()
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.05:
            pass
        b = clock.sample()
        assert b.cpu - a.cpu >= 0.05
        assert b.wall - a.wall >= 0.05
        assert a.runqueue is not None and b.runqueue is not None and b.runqueue >= a.runqueue
    finally:
        clock.close()
        clock.close()
    assert not clock.has_runqueue and clock.sample().runqueue is None


# --------------------------------------------------------- a real block of this loop
Logs = list[dict[str, Any]]


@pytest.fixture
async def watched() -> AsyncIterator[Callable[[], Logs]]:
    """Run the watchdog on this loop (limit 0.15 s, ticks of 0.02 s); yields its log lines."""
    with capture_logs() as logs:
        task = asyncio.create_task(watch_loop(0.15, structlog.get_logger("test"), tick_s=0.02))
        await asyncio.sleep(0.05)
        yield lambda: logs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _reported(logs: Callable[[], Logs], event: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            found = [e for e in logs() if e["event"] == event]
            if found:
                return found[0]
            await asyncio.sleep(0.01)


def _spin(seconds: float) -> None:
    """Keep this thread on the CPU for ``seconds`` of its own CPU time."""
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass


async def test_a_spin_on_the_loop_is_blocked(watched: Callable[[], Logs]) -> None:
    _spin(0.3)  # CPU time, so that a busy machine only makes it take longer
    line = await _reported(watched, "event loop blocked")
    assert line["log_level"] == "warning"
    assert line["ms"] >= 200 and line["cpu_ms"] >= 200


async def test_a_blocking_call_on_the_loop_is_blocked(watched: Callable[[], Logs]) -> None:
    time.sleep(0.3)  # noqa: ASYNC251  (off the CPU, but by the loop's own doing)
    line = await _reported(watched, "event loop blocked")
    assert line["log_level"] == "warning"
    assert line["ms"] >= 200
    assert line["ms"] - line["runqueue_ms"] >= 200  # what the loop did itself
