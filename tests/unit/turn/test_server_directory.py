"""Users and secrets from outside the configuration (the cluster's Redis directory), and
per-user quotas counted across instances."""

from __future__ import annotations

import random

from tests.unit.turn.server_helpers import make_engine

from icerelay.stun import PasswordAlgorithm
from icerelay.stun.credentials import long_term_key
from icerelay.turn.server.auth import Authenticator

MD5 = PasswordAlgorithm.MD5


def make() -> Authenticator:
    return Authenticator("realm", {"static": "pw"}, [], rng=random.Random(1))


def test_update_adds_and_removes_users_and_configured_ones_win() -> None:
    auth = make()
    assert auth._key("dynamic", MD5, 0.0) is None
    auth.update_users({"dynamic": "secret", "static": "overridden"}, [])
    found = auth._key("dynamic", MD5, 0.0)
    assert found == (long_term_key("dynamic", "realm", "secret"), "dynamic")
    static = auth._key("static", MD5, 0.0)
    assert static is not None and static[0] == long_term_key("static", "realm", "pw")
    auth.update_users({}, [])
    assert auth._key("dynamic", MD5, 0.0) is None
    assert auth._key("static", MD5, 0.0) is not None


def test_update_with_secrets_turns_rest_api_on() -> None:
    auth = make()
    auth.update_users({}, ["shared"])
    assert auth.secrets == [b"shared"]
    # A REST API username (expiry:user) now has a key; quotas count the user part.
    found = auth._key("4000000000:bob", MD5, 0.0)
    assert found is not None and found[1] == "bob"
    auth.update_users({}, [])
    assert auth._key("4000000000:bob", MD5, 0.0) is None


def test_user_count_includes_other_instances_and_quota_overrides() -> None:
    engine, _ = make_engine()
    state = engine.state
    state.add_user("carol", 1)
    state.elsewhere = {"carol": 2}
    assert state.user_count("carol") == 3
    state.user_quotas = {"carol": 5}
    assert state.quota_of("carol", 100) == 5 and state.quota_of("dave", 100) == 100
