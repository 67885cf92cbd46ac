"""Port pool: even/odd pairs, range, random order, exhaustion, and a 100k-operation churn."""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from icerelay.errors import RelayError
from icerelay.relay.ports import PortPair, PortPool, PortPoolExhausted


def test_pairs_are_even_odd_and_inside_the_range() -> None:
    pool = PortPool(30001, 30010, rng=random.Random(1))
    pairs = [pool.allocate() for _ in range(pool.capacity)]
    # 30001 is odd: the first pair starts at 30002; 30010 cannot start a pair (30011 is outside).
    assert sorted(pair.rtp for pair in pairs) == [30002, 30004, 30006, 30008]
    assert all(pair.rtcp == pair.rtp + 1 and pair.rtcp <= 30010 for pair in pairs)
    with pytest.raises(PortPoolExhausted, match="all 4 port pairs"):
        pool.allocate()


def test_allocation_order_is_random() -> None:
    orders = set()
    for seed in range(5):
        pool = PortPool(40000, 40999, rng=random.Random(seed))
        orders.add(tuple(pool.allocate().rtp for _ in range(20)))
    assert len(orders) == 5
    sequential = tuple(range(40000, 40040, 2))
    assert sequential not in orders


def test_release_and_double_release() -> None:
    pool = PortPool(50000, 50003, rng=random.Random(4))
    pair = pool.allocate()
    assert pool.is_allocated(pair) and pool.in_use == 1
    pool.release(pair)
    assert pool.available == 2 and pool.in_use == 0
    with pytest.raises(RelayError, match="not allocated"):
        pool.release(pair)


def test_reserve_a_specific_pair() -> None:
    pool = PortPool(50000, 50009, rng=random.Random(5))
    pool.reserve(PortPair(50004))
    assert pool.is_allocated(PortPair(50004))
    with pytest.raises(RelayError, match="not free"):
        pool.reserve(PortPair(50004))
    with pytest.raises(RelayError, match="not free"):
        pool.reserve(PortPair(50005))
    pool.check()


@pytest.mark.parametrize(("first", "last"), [(0, 10), (10, 9), (65535, 65535), (100, 70000)])
def test_bad_ranges(first: int, last: int) -> None:
    with pytest.raises(ValueError):
        PortPool(first, last, rng=random.Random(6))


def test_churn_100k_operations_no_leak_no_double_allocation() -> None:
    rng = random.Random(20261122)
    pool = PortPool(20000, 20999, rng=random.Random(7))
    held: list[PortPair] = []
    held_set: set[int] = set()
    exhausted = 0
    for step in range(100_000):
        # Bias towards allocation so that the pool runs full (and empty) many times over.
        if held and (rng.random() < 0.45 or len(held) == pool.capacity):
            pair = held.pop(rng.randrange(len(held)))
            held_set.remove(pair.rtp)
            pool.release(pair)
        else:
            try:
                pair = pool.allocate()
            except PortPoolExhausted:
                exhausted += 1
                assert len(held) == pool.capacity
                continue
            assert pair.rtp not in held_set, f"pair {pair} handed out twice at step {step}"
            held.append(pair)
            held_set.add(pair.rtp)
        assert pool.in_use == len(held)
        if step % 10_000 == 0:
            pool.check()
    for pair in held:
        pool.release(pair)
    pool.check()
    assert pool.available == pool.capacity == 500


class PoolMachine(RuleBasedStateMachine):
    """Random interleavings of allocate / reserve / release against a model set."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = PortPool(60000, 60031, rng=random.Random(0))
        self.model: set[int] = set()

    @precondition(lambda self: len(self.model) < self.pool.capacity)
    @rule()
    def allocate(self) -> None:
        pair = self.pool.allocate()
        assert pair.rtp not in self.model
        self.model.add(pair.rtp)

    @rule(port=st.integers(60000, 60031))
    def reserve(self, port: int) -> None:
        pair = PortPair(port)
        if port % 2 == 0 and port not in self.model:
            self.pool.reserve(pair)
            self.model.add(port)
        else:
            with pytest.raises(RelayError):
                self.pool.reserve(pair)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.model:
            return
        port = data.draw(st.sampled_from(sorted(self.model)))
        self.pool.release(PortPair(port))
        self.model.remove(port)

    @invariant()
    def consistent(self) -> None:
        self.pool.check()
        assert self.pool.in_use == len(self.model)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)
