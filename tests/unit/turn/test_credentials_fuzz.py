"""REST API usernames from the network: the expiry parser raises only TurnError (issue 10)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from icerelay.errors import TurnError
from icerelay.turn.credentials import rest_api_expiry, rest_api_username_expired


@given(st.text(max_size=40))
@example("9" * 5000 + ":alice")
@example("٣٣٣:alice")
@example("1²:alice")
@example("+123:alice")
def test_rest_api_expiry(username: str) -> None:
    try:
        expiry = rest_api_expiry(username)
    except TurnError:
        assert rest_api_username_expired(username, 0.0)
        return
    head = username.split(":", 1)[0]
    assert head.isascii() and expiry == int(head)
