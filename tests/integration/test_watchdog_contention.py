"""The loop watchdog under CPU contention, for real.

A child process runs :func:`objstore.watchdog.watch_loop` on an idle loop,
pinned to one CPU at the lowest priority (``SCHED_IDLE``); CPU-bound processes
pinned to the same CPU then keep it from being scheduled.  Its ticks come late
by far more than the limit, yet the loop did nothing wrong: the watchdog must
say "event loop delayed" (debug), never "event loop blocked".  The opposite
cases (a spin and a ``time.sleep`` on the loop) are in tests/unit/test_watchdog.py.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

LIMIT_S = 0.1
HOG_S = 1.0

CHILD = """
import asyncio, json, os, sys
from objstore.watchdog import watch_loop

cpu = int(sys.argv[1])
os.sched_setaffinity(0, {cpu})
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class Log:
    def _emit(self, level, event, **fields):
        print(json.dumps({"level": level, "event": event, **fields}), flush=True)

    def warning(self, event, **fields):
        self._emit("warning", event, **fields)

    def debug(self, event, **fields):
        self._emit("debug", event, **fields)


async def main():
    task = asyncio.create_task(watch_loop(float(sys.argv[2]), Log(), tick_s=0.02))
    # The reader thread starts (and lets go of the GIL in its read) before the hogs
    # do: a thread starved while it holds the GIL blocks the loop, and the
    # watchdog counts that as blocking (see its docstring).
    stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.sleep(0.2)
    print(json.dumps({"event": "ready"}), flush=True)
    await stdin_closed
    task.cancel()


asyncio.run(main())
"""

HOG = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    assert r, "the child printed nothing in time"
    return proc.stdout.readline()


@pytest.mark.skipif(
    not Path(f"/proc/self/task/{os.getpid()}/schedstat").exists(),
    reason="the kernel does not report run-queue wait (no schedstat): the wall lag decides",
)
def test_a_loop_starved_of_cpu_is_delayed_not_blocked() -> None:
    cpu = max(os.sched_getaffinity(0))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cpu), str(LIMIT_S)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        assert json.loads(_readline(child, 20))["event"] == "ready"
        hogs = [
            subprocess.Popen([sys.executable, "-c", HOG, str(cpu), str(HOG_S)]) for _ in range(2)
        ]
        for hog in hogs:
            hog.wait(HOG_S + 30)
        time.sleep(0.2)  # a few ticks on a free CPU again
        out, _ = child.communicate(timeout=20)  # closes its stdin: it stops
    finally:
        for p in [child, *hogs]:
            if p.poll() is None:
                p.kill()
                p.wait()
    lines = [json.loads(line) for line in out.splitlines()]
    blocked = [e for e in lines if e["event"] == "event loop blocked"]
    delayed = [e for e in lines if e["event"] == "event loop delayed"]
    assert not blocked, lines
    assert delayed, "the hogs did not delay the loop: the test proved nothing"
    worst = max(delayed, key=lambda e: e["ms"])
    assert worst["level"] == "debug"
    assert worst["ms"] > LIMIT_S * 1000
    assert worst["runqueue_ms"] >= worst["ms"] - LIMIT_S * 1000
    assert child.returncode == 0
