"""The client's reconnect schedule (pure, fake clock)."""

from __future__ import annotations

import asyncio
import random

from objstore.client import Client, reconnect_delays


def test_schedule_starts_at_50ms_doubles_and_caps_at_2s() -> None:
    rng = random.Random(7)
    delays = reconnect_delays(rng)
    got = [delays.failed() for _ in range(12)]
    bases = [min(2.0, 0.05 * 2**i) for i in range(12)]
    for d, base in zip(got, bases):
        assert 0.5 * base <= d < 1.5 * base
    assert max(got) < 3.0
    delays.reset()
    assert 0.025 <= delays.failed() < 0.075


def test_jitter_spreads_clients_apart() -> None:
    firsts = {round(reconnect_delays(random.Random(seed)).failed(), 6) for seed in range(20)}
    assert len(firsts) > 10


def test_reconnect_loop_waits_by_the_schedule_on_a_fake_clock() -> None:
    """The loop sleeps the backoff between attempts and stops once a session opens."""
    slept: list[float] = []
    client = Client("/nonexistent/objstore.sock")
    attempts = 0

    async def fake_sleep(d: float) -> None:
        slept.append(d)

    async def open_session() -> object:
        nonlocal attempts
        attempts += 1
        if attempts < 6:
            raise ConnectionRefusedError
        return None, None, None

    async def start_session(*args: object) -> None:
        client._lost_at = None

    async def run() -> None:
        client._loop = asyncio.get_running_loop()
        client._lost_at = client._loop.time()
        client._open_session = open_session  # type: ignore[method-assign,assignment]
        client._start_session = start_session  # type: ignore[method-assign,assignment]
        await client._reconnect_loop(sleep=fake_sleep)

    asyncio.run(run())
    assert attempts == 6
    assert len(slept) == 6
    for d, base in zip(slept, [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]):
        assert 0.5 * base <= d < 1.5 * base
