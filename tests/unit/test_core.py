"""Pure tests of the small core modules every package shares: backoff, failure
streaks, task sets, the state-machine scaffolding and the error/status table."""

from __future__ import annotations

import asyncio
import enum
import pickle
import random
from typing import Any

import pytest
from grpclib.const import Status
from hypothesis import given
from hypothesis import strategies as st

from objstore import errors
from objstore._proto.local import local_pb2 as pb
from objstore.backoff import Backoff, backoff_delay
from objstore.statemachine import StateMachine, TransitionError
from objstore.status import error_to_grpc, error_to_local, grpc_to_error, local_to_error
from objstore.streak import FailureStreak
from objstore.tasks import TaskSet, race

# ----------------------------------------------------------------------------- backoff


@given(
    failures=st.integers(1, 200),
    first=st.floats(0.001, 10),
    factor=st.floats(1, 100),
    jitter=st.floats(0, 0.99),
    seed=st.integers(0, 2**32),
)
def test_backoff_delay_stays_in_its_band(
    failures: int, first: float, factor: float, jitter: float, seed: int
) -> None:
    maximum = first * factor
    d = backoff_delay(failures, first, maximum, jitter=jitter, rng=random.Random(seed))
    base = min(maximum, first * 2 ** min(failures - 1, 60))
    assert base * (1 - jitter) - 1e-9 <= d <= base * (1 + jitter) + 1e-9


def test_backoff_doubles_caps_and_resets() -> None:
    b = Backoff(0.1, 1.0, jitter=0)
    assert [b.failed() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert b.failures == 6
    b.reset()
    assert b.failures == 0 and b.failed() == 0.1


@pytest.mark.parametrize(
    ("args", "kw"),
    [((0, 0.1, 1.0), {}), ((1, 0.0, 1.0), {}), ((1, 2.0, 1.0), {}), ((1, 0.1, 1.0), {"jitter": 1})],
)
def test_backoff_refuses_bad_arguments(args: tuple[Any, ...], kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        backoff_delay(*args, **kw)


# ----------------------------------------------------------------------------- streaks


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.lines.append((level, event, kw))


def test_a_failure_streak_warns_once_and_says_when_it_ends() -> None:
    log = _Log()
    streak = FailureStreak(
        log, "writes failed", "writes work again", first=0.1, maximum=1, jitter=0
    )
    delays = [streak.failed(OSError(f"disk {i}"), where="x") for i in range(3)]
    assert delays == [0.1, 0.2, 0.4]
    assert [lvl for lvl, _, _ in log.lines] == ["warning", "debug", "debug"]
    assert log.lines[0][2] == {"error": "disk 0", "where": "x"}
    assert isinstance(streak.last_error, OSError) and streak.failures == 3
    streak.ok()
    assert log.lines[-1] == ("info", "writes work again", {"failures": 3})
    assert streak.last_error is None and streak.failures == 0
    streak.ok()  # no streak: nothing to say
    assert len(log.lines) == 4
    streak.failed(OSError("again"))
    assert log.lines[-1][0] == "warning"  # a new streak warns again


# ----------------------------------------------------------------------------- tasks


async def test_a_task_set_keeps_logs_and_closes() -> None:
    ts = TaskSet("t")
    gate = asyncio.Event()
    done: list[int] = []

    async def work(i: int) -> None:
        await gate.wait()
        done.append(i)

    async def boom() -> None:
        raise RuntimeError("boom")

    for i in range(3):
        ts.spawn(work(i))
    failed = ts.spawn(boom())
    await asyncio.wait([failed])
    await asyncio.sleep(0)  # its done callback runs a loop turn after it ends
    assert len(ts) == 3  # the failed one is forgotten (and logged)
    gate.set()
    await ts.drain()
    assert sorted(done) == [0, 1, 2] and len(ts) == 0

    forever = ts.spawn(asyncio.sleep(3600))
    await ts.close()
    assert forever.cancelled() and len(ts) == 0
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        ts.spawn(coro)


async def test_drain_of_tasks_that_already_ended_does_not_spin() -> None:
    ts = TaskSet("t")
    tasks = [ts.spawn(asyncio.sleep(0)) for _ in range(3)]
    await asyncio.gather(*tasks)
    async with asyncio.timeout(5):
        await ts.drain()
    assert len(ts) == 0


async def test_a_cancelled_close_is_still_a_cancellation() -> None:
    ts = TaskSet("t")

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)  # takes its time to stop

    ts.spawn(stubborn())
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(ts.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    for t in ts:
        t.cancel()
    await asyncio.sleep(0)


async def test_race_returns_with_the_first_and_cancels_the_rest() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("first")

    with pytest.raises(ValueError, match="first"):
        await race(slow(), fail())
    assert cancelled.is_set()


# ----------------------------------------------------------------------------- state machines


class _S(enum.Enum):
    A = 1
    B = 2
    Z = 3


class _E(enum.Enum):
    GO = 1
    STOP = 2


class _Err(TransitionError):
    what = "test transition"


_M: StateMachine[_S, _E] = StateMachine(
    {(_S.A, _E.GO): _S.B, (_S.B, _E.STOP): _S.Z}, _Err, frozenset({_S.Z})
)


@given(st.sampled_from(list(_S)), st.sampled_from(list(_E)), st.none() | st.binary(max_size=20))
def test_a_machine_follows_its_table(state: _S, event: _E, oid: bytes | None) -> None:
    if _M.accepts(state, event):
        assert _M.transition(state, event, oid) is _M.table[(state, event)]
        return
    with pytest.raises(_Err) as info:
        _M.transition(state, event, oid)
    err = info.value
    assert (err.state, err.event, err.object_id) == (state, event, oid)
    assert "test transition" in str(err) and state.name in str(err) and event.name in str(err)
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is _Err and str(clone) == str(err)


def test_a_terminal_state_with_an_exit_is_refused() -> None:
    with pytest.raises(ValueError, match="terminal"):
        StateMachine({(_S.Z, _E.GO): _S.A}, _Err, frozenset({_S.Z}))


# ----------------------------------------------------------------------------- status table

_USER_ERRORS = [getattr(errors, n) for n in errors.__all__]


@pytest.mark.parametrize("cls", _USER_ERRORS, ids=lambda c: c.__name__)
def test_every_error_has_a_local_code_and_a_grpc_status(cls: type[Exception]) -> None:
    code, message = error_to_local(cls("m"))
    assert message == "m" and code in pb.ErrorCode.values()
    status, _ = error_to_grpc(cls("m"))
    assert isinstance(status, Status)
    assert (status is Status.INTERNAL) == (cls in (errors.ConfigError, errors.SerializationError,
                                                   errors.ObjectStoreError))  # fmt: skip
    back = local_to_error(code, "m")
    assert isinstance(back, errors.ObjectStoreError)


def test_directory_statuses_become_the_errors_a_node_raises() -> None:
    assert (
        type(grpc_to_error(Status.ALREADY_EXISTS, "taken", "reserve")) is errors.ObjectExistsError
    )
    assert type(grpc_to_error(Status.NOT_FOUND, "no", "resolve")) is errors.ObjectNotFoundError
    for status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
        err = grpc_to_error(status, "down", "delete")
        assert type(err) is errors.NodeUnavailableError
        assert str(err) == "delete: the directory is unavailable: down"
    err = grpc_to_error(Status.INVALID_ARGUMENT, "bad ids", "lookup")
    assert type(err) is errors.ObjectStoreError
    assert str(err) == "lookup: the directory refused: bad ids"
    assert error_to_grpc(RuntimeError("x")) == (
        Status.INTERNAL,
        "internal error: RuntimeError('x')",
    )
