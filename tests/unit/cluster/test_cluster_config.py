"""The [cluster] section: defaults, validation, loading from the environment."""

from __future__ import annotations

import pytest

from icerelay.daemon.cluster_config import ClusterConfig
from icerelay.daemon.config import load_config
from icerelay.errors import ConfigError


def test_default_is_no_cluster() -> None:
    config = load_config(environ={})
    assert not config.cluster.enabled
    assert config.cluster.instance  # the host name
    assert config.cluster.heartbeat_ttl > config.cluster.heartbeat_interval


def test_environment_enables_it() -> None:
    config = load_config(
        environ={
            "ICERELAY_CLUSTER__REDIS": "redis://127.0.0.1:6390/2",
            "ICERELAY_CLUSTER__INSTANCE": "relay-b",
        }
    )
    assert config.cluster.enabled
    assert config.cluster.instance == "relay-b"


@pytest.mark.parametrize(
    "settings",
    [
        {"redis": "http://x"},
        {"instance": "a:b"},
        {"instance": ""},
        {"heartbeat_interval": 2.0, "heartbeat_ttl": 1.0},
        {"write_interval": 0},
        {"unknown": 1},
        {"ng_address": "0.0.0.0:2223"},
        {"ng_address": "10.0.0.1"},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="cluster"):
        load_config(environ={}, overrides={"cluster": settings})


def test_model_directly() -> None:
    config = ClusterConfig(redis="unix:///run/redis.sock", instance="x")
    assert config.enabled
