"""TURN REST API ephemeral credentials (coturn's use-auth-secret), shared by client and server."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from icerelay.errors import TurnError
from icerelay.turn.credentials import (
    rest_api_credentials,
    rest_api_expiry,
    rest_api_password,
    rest_api_password_matches,
    rest_api_username,
    rest_api_username_expired,
)


def test_username_is_expiry_colon_user() -> None:
    assert rest_api_username("alice", ttl=3600, now=1_700_000_000.7) == "1700003600:alice"
    assert rest_api_username("", ttl=10, now=100) == "110"


def test_password_is_base64_hmac_sha1_of_the_username() -> None:
    # Computed independently with the standard library: the definition coturn uses.
    username = "1700003600:alice"
    expected = base64.b64encode(hmac.new(b"north", username.encode(), hashlib.sha1).digest())
    assert rest_api_password("north", username) == expected.decode()
    assert rest_api_password(b"north", username) == expected.decode()
    assert len(rest_api_password("north", username)) == 28  # 20 bytes in base64


def test_credentials_pair_and_check() -> None:
    username, password = rest_api_credentials("north", "bob", ttl=60, now=1000)
    assert username == "1060:bob"
    assert rest_api_password_matches("north", username, password)
    assert not rest_api_password_matches("south", username, password)
    assert not rest_api_password_matches("north", username, "é" + password[1:])


def test_expiry() -> None:
    assert rest_api_expiry("1060:bob") == 1060
    assert rest_api_expiry("1060") == 1060
    assert not rest_api_username_expired("1060:bob", now=1059.9)
    assert rest_api_username_expired("1060:bob", now=1060.1)
    for bad in ("bob", ":bob", "-5:bob", "١٢:bob", ""):
        with pytest.raises(TurnError):
            rest_api_expiry(bad)
        assert rest_api_username_expired(bad, now=0)
