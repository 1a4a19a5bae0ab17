"""Tests for the arena allocator (pure, synchronous)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from objstore.plasma import allocator as allocator_module
from objstore.plasma.allocator import DEFAULT_ALIGNMENT, Allocator

A = DEFAULT_ALIGNMENT


def take(a: Allocator, size: int) -> int:
    """``a.allocate(size)``, which must succeed."""
    off = a.allocate(size)
    assert off is not None
    return off


def complement(live: dict[int, int], capacity: int, alignment: int) -> list[tuple[int, int]]:
    """The free extents implied by the live blocks ``offset -> requested size``."""
    out: list[tuple[int, int]] = []
    pos = 0
    for off in sorted(live):
        if off > pos:
            out.append((pos, off - pos))
        pos = off + Allocator.allocated_size(live[off], alignment)
    if pos < capacity:
        out.append((pos, capacity - pos))
    return out


# ------------------------------------------------------------------ unit tests
def test_construction_and_rounding() -> None:
    a = Allocator(10 * A + 17)
    assert a.capacity == 10 * A
    assert a.alignment == A
    assert (a.used, a.free_bytes, a.largest_free, a.free_extents) == (0, 10 * A, 10 * A, 1)
    assert a.extents() == [(0, 10 * A)]
    assert Allocator(4096, alignment=4096).capacity == 4096
    assert Allocator(100, alignment=1).capacity == 100


@pytest.mark.parametrize(
    ("capacity", "alignment"),
    [(1 << 20, 0), (1 << 20, -64), (1 << 20, 48), (1 << 20, 3), (63, 64), (0, 64), (-1, 64)],
)
def test_bad_construction(capacity: int, alignment: int) -> None:
    with pytest.raises(ValueError, match="alignment|capacity"):
        Allocator(capacity, alignment)


def test_allocated_size() -> None:
    assert Allocator.allocated_size(0) == A
    assert Allocator.allocated_size(1) == A
    assert Allocator.allocated_size(A) == A
    assert Allocator.allocated_size(A + 1) == 2 * A
    assert Allocator.allocated_size(5000, alignment=4096) == 8192
    assert Allocator.allocated_size(0, alignment=1) == 1
    with pytest.raises(ValueError):
        Allocator.allocated_size(-1)
    with pytest.raises(ValueError):
        Allocator.allocated_size(10, alignment=24)


@pytest.mark.parametrize("alignment", [1, 8, 64, 4096])
def test_alignment_of_offsets_and_sizes(alignment: int) -> None:
    a = Allocator(1 << 22, alignment)
    rng = random.Random(alignment)
    blocks = []
    for _ in range(200):
        size = rng.randint(0, 3 * alignment + 5)
        off = a.allocate(size)
        assert off is not None
        assert off % alignment == 0
        blocks.append((off, Allocator.allocated_size(size, alignment)))
    assert a.used == sum(sz for _, sz in blocks)
    blocks.sort()
    for (o1, s1), (o2, _) in itertools.pairwise(blocks):
        assert o1 + s1 <= o2


def test_size_zero_gets_a_distinct_block() -> None:
    a = Allocator(4 * A)
    offsets = [take(a, 0) for _ in range(4)]
    assert sorted(offsets) == [0, A, 2 * A, 3 * A]
    assert a.used == 4 * A
    assert a.allocate(0) is None
    a.free(2 * A, 0)
    assert a.extents() == [(2 * A, A)]


def test_exact_fit_of_whole_arena() -> None:
    a = Allocator(1000 * A)
    assert a.allocate(1000 * A) == 0
    assert (a.used, a.free_bytes, a.largest_free, a.free_extents) == (1000 * A, 0, 0, 0)
    assert a.extents() == []
    assert a.allocate(0) is None
    a.free(0, 1000 * A)
    assert a.extents() == [(0, 1000 * A)]
    assert a.allocate(1000 * A + 1) is None
    assert a.allocate(1000 * A - 5) == 0  # rounds up to the whole arena


def test_none_when_full_or_too_fragmented() -> None:
    a = Allocator(10 * A)
    offs = [take(a, A) for _ in range(10)]
    assert a.allocate(1) is None
    for off in offs[::2]:  # free every other block: 5 free units, none adjacent
        a.free(off, A)
    assert a.free_bytes == 5 * A
    assert a.largest_free == A
    assert a.allocate(2 * A) is None
    assert a.allocate(A) == 0  # lowest offset first


def test_bad_allocate_and_free_arguments() -> None:
    a = Allocator(16 * A)
    with pytest.raises(ValueError, match="negative"):
        a.allocate(-1)
    off = a.allocate(A)
    assert off == 0
    with pytest.raises(ValueError, match="negative"):
        a.free(0, -1)
    with pytest.raises(ValueError, match="multiple"):
        a.free(1, A)
    with pytest.raises(ValueError, match="negative"):
        a.free(-A, A)
    with pytest.raises(ValueError, match="outside"):
        a.free(15 * A, 2 * A)
    with pytest.raises(ValueError, match="outside"):
        a.free(16 * A, 0)
    assert a.extents() == [(A, 15 * A)]


def test_double_free_detection() -> None:
    a = Allocator(100 * A)
    x, y, z = (take(a, 10 * A) for _ in range(3))
    assert (x, y, z) == (0, 10 * A, 20 * A)
    a.free(y, 10 * A)
    before = a.extents()
    with pytest.raises(ValueError, match="double free"):
        a.free(y, 10 * A)  # exact repeat
    with pytest.raises(ValueError, match="double free"):
        a.free(y + 2 * A, A)  # strictly inside a free extent
    with pytest.raises(ValueError, match="double free"):
        a.free(5 * A, 10 * A)  # straddles the start of a free extent
    with pytest.raises(ValueError, match="double free"):
        a.free(15 * A, 10 * A)  # straddles its end
    with pytest.raises(ValueError, match="double free"):
        a.free(0, 30 * A)  # covers it entirely
    with pytest.raises(ValueError, match="double free"):
        a.free(50 * A, A)  # never allocated: inside the tail extent
    assert a.extents() == before  # failed frees change nothing
    a.free(x, 10 * A)  # coalesces with y's extent
    with pytest.raises(ValueError, match="double free"):
        a.free(y, 10 * A)  # y now lies inside the merged extent [0, 20)
    with pytest.raises(ValueError, match="double free"):
        a.free(x, 10 * A)
    a.free(z, 10 * A)
    assert a.extents() == [(0, 100 * A)]


def _three_blocks() -> tuple[Allocator, list[int]]:
    """An arena of 5 blocks of 2 units, all allocated, and their offsets."""
    a = Allocator(10 * A)
    offs = [take(a, 2 * A) for _ in range(5)]
    assert offs == [0, 2 * A, 4 * A, 6 * A, 8 * A]
    return a, offs


def test_free_without_neighbours() -> None:
    a, offs = _three_blocks()
    a.free(offs[2], 2 * A)
    assert a.extents() == [(4 * A, 2 * A)]
    a.free(offs[0], 2 * A)
    assert a.extents() == [(0, 2 * A), (4 * A, 2 * A)]


def test_coalesce_left() -> None:
    a, offs = _three_blocks()
    a.free(offs[1], 2 * A)
    a.free(offs[2], 2 * A)
    assert a.extents() == [(2 * A, 4 * A)]
    assert a.largest_free == 4 * A


def test_coalesce_right() -> None:
    a, offs = _three_blocks()
    a.free(offs[3], 2 * A)
    a.free(offs[2], 2 * A)
    assert a.extents() == [(4 * A, 4 * A)]


def test_coalesce_both() -> None:
    a, offs = _three_blocks()
    a.free(offs[1], 2 * A)
    a.free(offs[3], 2 * A)
    assert a.free_extents == 2
    a.free(offs[2], 2 * A)
    assert a.extents() == [(2 * A, 6 * A)]
    a.free(offs[0], 2 * A)
    a.free(offs[4], 2 * A)
    assert a.extents() == [(0, 10 * A)]
    assert a.used == 0


def test_prefers_low_offsets() -> None:
    a = Allocator(1 << 20)
    offs = [take(a, 1000) for _ in range(100)]
    a.free(offs[3], 1000)  # a hole of 16 units near the start, and a big tail
    assert a.allocate(900) == offs[3]
    a.free(offs[10], 1000)
    a.free(offs[11], 1000)  # a hole of 32 units
    assert a.allocate(100) == offs[10]


def test_fitting_extent_beyond_the_bounded_scan_is_found() -> None:
    # Eleven holes of 16 units (class 16 also covers 17 units), then two of 17:
    # a 17-unit request must find the lower of the last two, not give up.
    a = Allocator(11 * 17 * A + 2 * 18 * A)
    holes = []
    for _ in range(11):
        holes.append(take(a, 16 * A))
        assert a.allocate(A) is not None
    last = []
    for _ in range(2):
        last.append(take(a, 17 * A))
        assert a.allocate(A) is not None
    assert a.free_bytes == 0
    for off in [*holes, *last][::-1]:
        a.free(off, 16 * A if off in holes else 17 * A)
    assert a.largest_free == 17 * A
    assert a.allocate(17 * A) == last[0]
    assert a.allocate(17 * A) == last[1]
    assert a.allocate(17 * A) is None
    assert a.allocate(16 * A) == 0


def test_largest_free_tracks_changes() -> None:
    a = Allocator(1000 * A)
    x = take(a, 600 * A)
    assert a.largest_free == 400 * A
    y = take(a, 400 * A)
    assert a.largest_free == 0
    a.free(x, 600 * A)
    assert a.largest_free == 600 * A
    z = take(a, 100 * A)
    assert a.largest_free == 500 * A
    a.free(y, 400 * A)
    assert a.largest_free == 900 * A
    a.free(z, 100 * A)
    assert a.largest_free == 1000 * A
    assert "Allocator(" in repr(a)


# ------------------------------------------------------------- stateful tests
class AllocatorMachine(RuleBasedStateMachine):
    """Random allocate/free sequences against a model of the live blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.a = Allocator(A)
        self.align = A
        self.live: dict[int, int] = {}  # offset -> requested size

    @initialize(
        units=st.integers(1, 600),
        align=st.sampled_from([1, 8, 64, 4096]),
        slack=st.integers(0, 4095),
    )
    def setup(self, units: int, align: int, slack: int) -> None:
        self.align = align
        self.a = Allocator(units * align + slack % align, align)
        assert self.a.capacity == units * align

    def need(self, size: int) -> int:
        return Allocator.allocated_size(size, self.align)

    @rule(
        units=st.one_of(st.integers(0, 20), st.integers(0, 200), st.integers(0, 700)),
        slack=st.integers(0, 4095),
    )
    def allocate(self, units: int, slack: int) -> None:
        size = max(units * self.align - slack % self.align, 0)
        largest = self.a.largest_free
        off = self.a.allocate(size)
        need = self.need(size)
        if off is None:
            assert largest < need
            assert all(sz < need for _, sz in self.a.extents())
        else:
            assert need <= largest
            assert off % self.align == 0 and off not in self.live
            self.live[off] = size

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        off = data.draw(st.sampled_from(sorted(self.live)))
        self.a.free(off, self.live.pop(off))

    @precondition(lambda self: self.a.free_extents)
    @rule(data=st.data())
    def double_free(self, data: st.DataObject) -> None:
        """Any block overlapping a free extent is refused and changes nothing."""
        ext_off, ext_size = data.draw(st.sampled_from(self.a.extents()))
        al = self.align
        x = ext_off + al * data.draw(st.integers(0, ext_size // al - 1))  # a free unit
        lo = max(x - al * data.draw(st.integers(0, 3)), 0)
        hi = min(x + al * data.draw(st.integers(1, 4)), self.a.capacity)
        size = max(hi - lo - data.draw(st.integers(0, al - 1)), 0)
        before = self.a.extents()
        with pytest.raises(ValueError, match="double free"):
            self.a.free(lo, size)
        assert self.a.extents() == before

    @invariant()
    def consistent(self) -> None:
        a, al = self.a, self.align
        ext = a.extents()
        intervals = sorted([(o, self.need(s)) for o, s in self.live.items()] + ext)
        pos = 0
        for off, size in intervals:  # live blocks and free extents tile the arena
            assert off % al == 0 and size > 0 and size % al == 0
            assert off == pos, "overlap or lost bytes"
            pos = off + size
        assert pos == a.capacity
        for (o1, s1), (o2, _) in itertools.pairwise(ext):
            assert o1 + s1 < o2, "adjacent free extents were not merged"
        used = sum(self.need(s) for s in self.live.values())
        assert a.used == used
        assert a.used + a.free_bytes == a.capacity
        assert a.free_bytes == sum(s for _, s in ext)
        assert a.free_extents == len(ext)
        assert a.largest_free == max((s for _, s in ext), default=0)

    def teardown(self) -> None:
        offs = list(self.live)
        random.Random(len(offs)).shuffle(offs)
        for off in offs:
            self.a.free(off, self.live.pop(off))
        assert self.a.extents() == [(0, self.a.capacity)]
        assert self.a.used == 0


@pytest.mark.parametrize("load", [8, allocator_module._LOAD])
def test_state_machine(load: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also run with tiny index blocks, so that splits and merges happen all the time."""
    monkeypatch.setattr(allocator_module, "_LOAD", load)
    run_state_machine_as_test(
        AllocatorMachine,
        settings=settings(max_examples=150, stateful_step_count=60, deadline=None),
    )


# ------------------------------------------------------------------ volume tests
@pytest.mark.parametrize("load", [8, allocator_module._LOAD])
def test_churn_matches_model(load: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a thousand free extents (several index blocks) checked against a model."""
    monkeypatch.setattr(allocator_module, "_LOAD", load)
    rng = random.Random(load)
    a = Allocator(40 << 20)
    live: dict[int, int] = {}
    order: list[int] = []  # live offsets, for O(1) random choice
    for step in range(20_000):
        if step > 6000 and (rng.random() < 0.5 or a.free_bytes < (4 << 20)):
            i = rng.randrange(len(order))
            order[i], order[-1] = order[-1], order[i]
            off = order.pop()
            a.free(off, live.pop(off))
        else:
            hi = rng.choice([300, 3000, 3000, 20_000])
            size = rng.randint(0, hi)
            off = take(a, size)
            live[off] = size
            order.append(off)
        if step % 1500 == 0:
            assert a.extents() == complement(live, a.capacity, A)
            for o, s in a.extents()[:: max(1, a.free_extents // 20)]:
                with pytest.raises(ValueError, match="double free"):
                    a.free(o + s - A, A)
    assert a.extents() == complement(live, a.capacity, A)
    assert a.free_extents > 1024  # several index blocks, even at the default _LOAD
    for off in list(live):
        a.free(off, live.pop(off))
    assert a.extents() == [(0, a.capacity)]


def test_200k_live_allocations_then_free_in_random_order() -> None:
    n = 200_000
    rng = random.Random(7)
    sizes = [rng.randint(0, 512) for _ in range(n)]
    a = Allocator(n * 512 + (1 << 20))
    offsets = [take(a, size) for size in sizes]
    assert a.used == sum(Allocator.allocated_size(s) for s in sizes)
    assert len(set(offsets)) == n
    order = list(range(n))
    rng.shuffle(order)
    peak = 0
    for k, i in enumerate(order):
        a.free(offsets[i], sizes[i])
        if k % 1000 == 0:
            peak = max(peak, a.free_extents)
    assert peak > 10_000  # many separate holes were tracked on the way
    assert a.extents() == [(0, a.capacity)]
    assert (a.used, a.free_bytes, a.largest_free) == (0, a.capacity, a.capacity)
