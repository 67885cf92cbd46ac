"""``ClusterConfig``: the ``[cluster]`` section (scale-out and failover on Redis, issue 15).

Several relays share their calls' state in one Redis database. Each instance writes the state of
its calls there and heartbeats with a TTL; when an instance's heartbeat expires, one survivor
(the holder of a Redis lock) adopts its calls. Empty ``redis``: no cluster, as before.

Example (TOML)::

    [cluster]
    redis = "redis://127.0.0.1:6379/0"
    instance = "relay-a"                 # unique per instance; default: the host name
    heartbeat_interval = 0.3             # seconds between heartbeats
    heartbeat_ttl = 1.0                  # an instance silent this long is dead
    write_interval = 0.2                 # changed calls are written at most this often

Why these defaults: media must resume within 2 s of an instance's death. Detection takes up to
``heartbeat_ttl`` + ``heartbeat_interval`` (the survivor's check, 1.3 s), adoption itself a few
milliseconds per call; a TTL of three heartbeats survives two late heartbeats of a busy instance.
"""

from __future__ import annotations

import ipaddress
import socket

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from icerelay.net import split_host_port

__all__ = ["ClusterConfig"]


class ClusterConfig(BaseModel):
    """Settings of the cluster service (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    redis: str = ""
    """``redis://host:port/db`` (or ``rediss://``, ``unix://``); empty: no cluster."""
    instance: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    """This instance's name, unique in the cluster (keys and locks are named after it)."""
    key_prefix: str = Field(default="icerelay", min_length=1, max_length=64)
    """Prefix of every Redis key, so that several clusters can share one database."""
    heartbeat_interval: float = Field(default=0.3, gt=0, le=60)
    heartbeat_ttl: float = Field(default=1.0, gt=0, le=600)
    write_interval: float = Field(default=0.2, gt=0, le=60)
    """Changed calls are written in one pipeline at most this often (off the packet path)."""
    write_before_reply: bool = True
    """Write a call an ng command changed before the reply leaves (about 1 ms per command on
    a local Redis): a call the proxy was told about survives an instant kill. False: it is
    written within ``write_interval``, and a kill in between loses that change."""
    counters_interval: float = Field(default=5.0, gt=0, le=3600)
    """Unchanged calls are rewritten this often, so their counters in Redis stay fresh."""
    adopt_lock: float = Field(default=30.0, gt=0, le=3600)
    """Seconds the adoption lock of a dead instance is held (longer than an adoption takes)."""
    forward_timeout: float = Field(default=0.3, gt=0, le=30)
    """How long an ng command forwarded to the owning instance waits for its reply (well
    under the proxy's own timeout: Kamailio's rtpengine module waits 1 s by default)."""
    ng_address: str = ""
    """``host:port`` where the other instances reach this one's ng port (forwarded
    commands); empty: the relay's ``ng_listen``, which must then not be a wildcard."""
    log_interval: float = Field(default=30.0, ge=0)
    """While Redis is unreachable, it is said once per this many seconds."""
    turn_users: bool = False
    """True: TURN users, REST secrets and per-user allocation quotas also live in Redis."""

    @field_validator("instance", "key_prefix")
    @classmethod
    def _plain(cls, value: str) -> str:
        # Names end up in Redis keys joined by ':'; keep them unambiguous.
        if any(char in value for char in ": \t\r\n{}*?[]"):
            raise ValueError("may not contain ':', spaces, braces or glob characters")
        return value

    @field_validator("ng_address")
    @classmethod
    def _ng_address(cls, value: str) -> str:
        if value:
            host, port = split_host_port(value, 0)
            if not 0 < port < 65536 or ipaddress.ip_address(host).is_unspecified:
                raise ValueError("expected a concrete ip:port")
        return value

    @field_validator("redis")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://host:port/db, rediss://... or unix://path")
        return value

    @model_validator(mode="after")
    def _timing(self) -> ClusterConfig:
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ValueError("heartbeat_ttl must be longer than heartbeat_interval")
        return self

    @property
    def enabled(self) -> bool:
        """True when a Redis URL is set."""
        return bool(self.redis)
