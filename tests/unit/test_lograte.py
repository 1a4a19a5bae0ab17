"""Refusals logged once per peer per period, in bounded memory (objstore/lograte.py).

One limiter serves the local socket (per uid), the directory and the data
plane (per IP), a puller's failed handshakes (per source) and HTTP.
"""

from __future__ import annotations

from objstore.lograte import LogLimiter


def test_once_per_key_per_period_saying_how_many_were_held_back() -> None:
    now = [0.0]
    rl = LogLimiter(60.0, max_keys=4, clock=lambda: now[0])
    assert rl.note(5) == 0
    assert [rl.note(5) for _ in range(3)] == [None, None, None]
    assert rl.note(6) == 0  # another key has its own minute
    now[0] = 59.9
    assert rl.note(5) is None
    now[0] = 60.0
    assert rl.note(5) == 4  # the line says how many went unlogged
    assert rl.note(5) is None
    for uid in range(100, 110):  # a flood of keys stays bounded
        rl.note(uid)
    assert len(rl) <= 4


def test_the_key_logged_longest_ago_is_forgotten_first() -> None:
    refusals = LogLimiter(every_s=60.0, max_keys=3)
    assert refusals.note("10.0.0.1", 0.0) == 0
    assert refusals.note("10.0.0.1", 59.0) is None
    assert refusals.note("10.0.0.1", 60.0) == 1
    for i in range(2, 10):
        assert refusals.note(f"10.0.0.{i}", 61.0 + i) == 0
    assert len(refusals) == 3  # the oldest IPs were forgotten
    assert refusals.note("10.0.0.9", 80.0) is None
    assert refusals.note("10.0.0.1", 80.0) == 0  # forgotten: warned about again


def test_a_bound_of_three_keys_under_a_clock() -> None:
    now = [0.0]
    limit = LogLimiter(every_s=60, max_keys=3, clock=lambda: now[0])
    assert limit.note("a") == 0
    assert limit.note("a") is None
    assert limit.note("a") is None
    for ip in "bcdef":
        assert limit.note(ip) is not None
    assert len(limit) == 3
    now[0] = 61.0
    assert limit.note("f") == 0
    assert len(limit) == 3
