"""Building blocks of the TURN server: policy, ports, framing, nonces, rate limit, config."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.errors import ConfigError, TurnError
from icerelay.stun.constants import SecurityFeature
from icerelay.stun.nonce import nonce_security_features
from icerelay.turn.server.auth import Authenticator
from icerelay.turn.server.framing import StreamFramer
from icerelay.turn.server.policy import PeerPolicy, embedded_addresses
from icerelay.turn.server.ports import PortPool, check_relay_range
from icerelay.turn.server.ratelimit import SourceRateLimiter, TokenBucket
from icerelay.turn.server.settings import TurnServerSettings

# --- policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["8.8.8.8", "1.1.1.1", "2600::1", "2a00:1450::1", "2002:808:808::1", "64:ff9b::808:808"],
)
def test_public_addresses_are_allowed(host: str) -> None:
    assert PeerPolicy().is_allowed(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "100.64.0.1",
        "169.254.169.254",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
        "::ffff:8.8.8.8",
        "64:ff9b::7f00:1",
        "64:ff9b:1::1",
        "2002:c0a8:101::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "::127.0.0.1",
        "not-an-ip",
        "fe80::1%eth0",
    ],
)
def test_special_purpose_addresses_are_denied(host: str) -> None:
    assert not PeerPolicy().is_allowed(host)


def test_teredo_embeds_server_and_inverted_client() -> None:
    import ipaddress

    found = embedded_addresses(ipaddress.ip_address("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
    assert {str(a) for a in found[1:]} == {"65.54.227.120", "192.0.2.45"}  # RFC 4380 example


def test_bad_network_in_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        PeerPolicy(allow=["300.0.0.0/8"])


# --- ports ---------------------------------------------------------------------------------


def test_pool_hands_out_each_port_once_in_random_order_and_reuses_late() -> None:
    pool = PortPool(1000, 1099, rng=random.Random(1))
    ports = [pool.take() for _ in range(100)]
    assert sorted(p for p in ports if p is not None) == list(range(1000, 1100))
    assert ports != sorted(ports)  # type: ignore[type-var]
    assert pool.take() is None
    pool.give_back(1005)
    pool.give_back(1005)
    pool.give_back(5)  # not ours: ignored
    assert len(pool) == 1 and pool.take() == 1005


def test_even_pair() -> None:
    pool = PortPool(1000, 1003, rng=random.Random(2))
    port = pool.take_even_pair(True)
    assert port is not None and port % 2 == 0
    assert {pool.take(), pool.take()} == ({1000, 1001, 1002, 1003} - {port, port + 1})
    assert pool.take_even_pair(False) is None


def test_relay_range_overlapping_the_ephemeral_range_is_refused(tmp_path: Path) -> None:
    proc = tmp_path / "ip_local_port_range"
    proc.write_text("32768\t60999\n")
    with pytest.raises(ConfigError, match="ephemeral"):
        check_relay_range(49152, 65535, path=proc)
    check_relay_range(49152, 65535, path=proc, force=True)
    check_relay_range(61000, 65535, path=proc)
    check_relay_range(20000, 29999, path=proc)
    check_relay_range(1, 2, path=tmp_path / "missing")  # unknown OS range: nothing to check


# --- framing -------------------------------------------------------------------------------


def test_framer_cuts_stun_and_padded_channel_data_in_any_chunking() -> None:
    stun = b"\x00\x01\x00\x04" + b"\x21\x12\xa4\x42" + b"x" * 12 + b"abcd"
    channel = b"\x40\x00\x00\x05hello\x00\x00\x00"
    stream = stun + channel + stun + b"\x40\x01\x00\x04ping"
    for size in (1, 3, 7, len(stream)):
        framer = StreamFramer()
        frames = []
        for offset in range(0, len(stream), size):
            frames += framer.feed(stream[offset : offset + size])
        assert frames == [stun, b"\x40\x00\x00\x05hello", stun, b"\x40\x01\x00\x04ping"]


def test_framer_refuses_garbage() -> None:
    with pytest.raises(TurnError):
        StreamFramer().feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(TurnError):
        StreamFramer().feed(b"\x00\x01\x00\x05" + b"x" * 16)


# --- nonces and features ---------------------------------------------------------------------


def test_nonce_is_bound_to_address_transport_and_time() -> None:
    auth = Authenticator("r", {"u": "p"}, [], nonce_lifetime=10, rng=random.Random(1))
    nonce = auth.nonce("udp", ("192.0.2.1", 1), 100.0)
    assert auth.nonce_valid(nonce, "udp", ("192.0.2.1", 1), 109.0)
    assert not auth.nonce_valid(nonce, "udp", ("192.0.2.1", 1), 110.0)
    assert not auth.nonce_valid(nonce, "udp", ("192.0.2.1", 2), 101.0)
    assert not auth.nonce_valid(nonce, "udp", ("192.0.2.2", 1), 101.0)
    assert not auth.nonce_valid(nonce, "tcp", ("192.0.2.1", 1), 101.0)
    # Change one character inside the MAC (not the last one, whose low bits are padding).
    forged = nonce[:-5] + ("B" if nonce[-5] == "A" else "A") + nonce[-4:]
    assert not auth.nonce_valid(forged, "udp", ("192.0.2.1", 1), 101.0)


def test_username_anonymity_is_offered_only_without_rest_secrets() -> None:
    static = Authenticator("r", {"u": "p"}, [], rng=random.Random(1))
    assert nonce_security_features(static.nonce("udp", ("h", 1), 0)) == (
        SecurityFeature.PASSWORD_ALGORITHMS | SecurityFeature.USERNAME_ANONYMITY
    )
    rest = Authenticator("r", {"u": "p"}, ["s"], rng=random.Random(1))
    assert nonce_security_features(rest.nonce("udp", ("h", 1), 0)) == (
        SecurityFeature.PASSWORD_ALGORITHMS
    )
    plain = Authenticator("r", {"u": "p"}, [], sha256=False, rng=random.Random(1))
    assert nonce_security_features(plain.nonce("udp", ("h", 1), 0)) is None


# --- rate limiting -------------------------------------------------------------------------


def test_token_bucket_and_bounded_source_table() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0)
    assert [bucket.take(1, 0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(1, 0.1)
    limiter = SourceRateLimiter(rate=1, burst=1, max_sources=4)
    for index in range(10):
        assert limiter.allow(f"10.0.0.{index}", 0.0)
    assert len(limiter._buckets) <= 4


# --- configuration -------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    config = TurnServerConfig()
    assert config.listen == [("127.0.0.1", 3478)]
    assert config.relay_host(4) == "127.0.0.1" and config.relay_host(6) is None
    assert config.quotas.allocations_per_user > 0 and config.quotas.bandwidth_per_allocation > 0
    assert TurnServerConfig(listen="[::1]:3479,0.0.0.0").listen == [
        ("::1", 3479),
        ("0.0.0.0", 3478),
    ]
    assert TurnServerConfig(listen=["0.0.0.0:3478"]).relay_host(4) is None
    for bad in (
        {"relay_port_min": 3000, "relay_port_max": 2000},
        {"tls_cert": "/x"},
        {"relay_ipv4": "::1"},
        {"relay_ipv4": "0.0.0.0"},
        {"allow_peers": ["nonsense"]},
        {"unknown": 1},
    ):
        with pytest.raises((ValidationError, ConfigError)):
            TurnServerConfig.model_validate(bad)


def test_worker_share_slices_the_relay_range_and_divides_quotas() -> None:
    config = TurnServerConfig(
        workers=3,
        relay_port_min=20000,
        relay_port_max=20999,
        quotas={"allocations_per_user": 10, "total_allocations": 100},
        unauthenticated_rate=30,
        unauthenticated_burst=60,
    )
    shares = [config.worker_share(index) for index in range(3)]
    ranges = [(s.relay_port_min, s.relay_port_max) for s in shares]
    assert ranges == [(20000, 20331), (20332, 20663), (20664, 20999)]
    assert all(low % 2 == 0 for low, _ in ranges)
    assert [s.quotas.allocations_per_user for s in shares] == [4, 4, 4]
    assert shares[0].quotas.total_allocations == 34
    assert shares[0].unauthenticated_rate == 10 and shares[0].workers == 1
    assert TurnServerConfig(workers=1).worker_share(0) == TurnServerConfig(workers=1)
    settings = shares[2].settings()
    assert (settings.relay_port_min, settings.relay_port_max) == (20664, 20999)
    assert settings.quotas.allocations_per_user == 4 and settings.unauthenticated_rate == 10


def test_workers_auto_is_one_per_cpu_but_one_on_ephemeral_ports() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert TurnServerConfig().workers == "auto"
    assert TurnServerConfig().worker_count() == min(cpus, 64)
    assert TurnServerConfig(listen=["127.0.0.1:0"]).worker_count() == 1
    # A narrow relay range caps the count (each worker needs an even pair).
    narrow = TurnServerConfig(relay_port_min=62000, relay_port_max=62001)
    assert narrow.worker_count() == 1
    assert TurnServerConfig(workers=3).worker_count() == 3
    assert TurnServerConfig().offload == "auto"
    for bad in ({"workers": 0}, {"workers": 65}, {"workers": "many"}, {"offload": "xdp"}):
        with pytest.raises(ValidationError):
            TurnServerConfig.model_validate(bad)


def test_config_makes_the_engine_settings() -> None:
    config = TurnServerConfig(
        listen=["192.0.2.1:3478", "[2001:db8::1]:3478"],
        relay_advertised_ipv4="203.0.113.7",
        tls_cert="/cert.pem",
        tls_key="/key.pem",
        users={"u": "p"},
        auth_secrets="a,b",
        allow_peers=["10.0.0.0/8"],
    )
    settings = config.settings()
    assert settings.relay_host(4) == "192.0.2.1" and settings.relay_host(6) == "2001:db8::1"
    assert settings.advertised_host(4) == "203.0.113.7"
    assert settings.advertised_host(6) == "2001:db8::1"
    assert settings.listen == (("192.0.2.1", 3478), ("2001:db8::1", 3478))
    assert settings.tls_listen == (("192.0.2.1", 5349), ("2001:db8::1", 5349))
    assert settings.auth_secrets == ("a", "b") and settings.users == {"u": "p"}
    assert settings.allow_peers == ("10.0.0.0/8",)
    # The engine's defaults are the configuration's defaults.
    assert TurnServerConfig().settings().quotas == TurnServerSettings().quotas
    defaults = TurnServerConfig().settings()
    for name in (
        "realm",
        "nonce_lifetime",
        "default_lifetime",
        "max_lifetime",
        "sha256",
        "unauthenticated_rate",
        "unauthenticated_burst",
        "legacy_channel_numbers",
        "relay_port_min",
        "relay_port_max",
        "software",
    ):
        assert getattr(defaults, name) == getattr(TurnServerSettings(), name), name


def test_serve_composition_leaves_shared_addresses_to_turn() -> None:
    from icerelay.daemon.compose import build_services
    from icerelay.daemon.config import Config

    def names(config: Config) -> list[str]:
        # Other sections (relay, ...) may add services of their own: look at these two only.
        return [s.name for s in build_services(config) if s.name in ("stun", "turn")]

    users = {"alice": "wonderland"}
    assert names(Config.model_validate({"turn": {"enabled": True, "users": users}})) == ["turn"]
    config = Config.model_validate(
        {
            "stun": {"listen": ["127.0.0.1:3478", "127.0.0.1:3479"]},
            "turn": {"enabled": True, "users": users},
        }
    )
    assert names(config) == ["stun", "turn"]
    stun = next(s for s in build_services(config) if s.name == "stun")
    assert [str(a) for a in stun.config.listen] == ["127.0.0.1:3479"]  # type: ignore[attr-defined]
    assert names(Config()) == ["stun"]
    wildcard = Config.model_validate(
        {"turn": {"enabled": True, "users": users, "listen": ["0.0.0.0:3478"],
                  "relay_ipv4": "127.0.0.1"}}
    )  # fmt: skip
    assert names(wildcard) == ["turn"]
