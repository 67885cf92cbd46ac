"""Refusals carry their answer: a STUN error code and a counter the engine keeps."""

from __future__ import annotations

import pytest

from icerelay.errors import IcerelayError, TurnError
from icerelay.turn.server import refusals
from icerelay.turn.server.state import COUNTERS

ALL = [
    value
    for value in vars(refusals).values()
    if isinstance(value, type) and issubclass(value, refusals.RequestRefused)
]


@pytest.mark.parametrize("kind", ALL, ids=lambda kind: kind.__name__)
def test_every_refusal_names_a_known_counter_and_an_error_code(kind: type) -> None:
    assert kind.COUNTER in COUNTERS
    assert 400 <= kind.STATUS < 600


def test_a_refusal_is_a_turn_error_carrying_status_and_counter() -> None:
    refusal = refusals.InsufficientCapacity("Too many channels")
    assert isinstance(refusal, TurnError) and isinstance(refusal, IcerelayError)
    assert (refusal.status, refusal.counter, refusal.remote) == (508, "refused_capacity", True)
    assert refusal.reason == "Too many channels"
    assert (refusals.Draining().status, refusals.Draining().counter) == (508, "refused_draining")
    assert refusals.UnknownAttributes([0x7F]).attributes == [0x7F]


@pytest.mark.parametrize(
    ("code", "counter"),
    [(401, "refused_unauthenticated"), (438, "refused_stale_nonce"), (400, "refused_bad_request")],
)
def test_authentication_failures_map_to_their_counters(code: int, counter: str) -> None:
    refusal = refusals.auth_refusal(code, "why")
    assert (refusal.status, refusal.counter, refusal.reason) == (code, counter, "why")
