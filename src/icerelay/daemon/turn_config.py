"""``TurnServerConfig``: the ``[turn]`` section, as one validated, frozen model.

It is the ``[turn]`` section of icerelay's configuration file and can be built directly in
code and tests. It deliberately does not import :mod:`icerelay.daemon.config` (which imports this
module to add the section). The engine does not see it: :meth:`TurnServerConfig.settings` makes
the plain :class:`~icerelay.turn.server.settings.TurnServerSettings` the engine takes (listening
and TLS addresses, relay addresses resolved from the listen list).

Example (TOML)::

    [turn]
    enabled = true
    listen = ["0.0.0.0:3478"]
    realm = "example.org"
    relay_ipv4 = "198.51.100.7"
    relay_port_min = 20000
    relay_port_max = 29999
    auth_secrets = ["north"]            # coturn's static-auth-secret (TURN REST API)
    users = { alice = "wonderland" }     # static long-term credentials
    allow_peers = []                     # networks opened despite the default deny list
    [turn.quotas]
    allocations_per_user = 100
    allocations_per_source = 300
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from icerelay.net import require_brackets
from icerelay.turn.server.policy import parse_networks
from icerelay.turn.server.quotas import TurnQuotas
from icerelay.turn.server.settings import TurnServerSettings

TURN_PORT = 3478
TURNS_PORT = 5349


def parse_listen(value: object, default_port: int = TURN_PORT) -> tuple[str, int]:
    """``"ip:port"``, ``"[v6]:port"``, ``"ip"`` or a (host, port) pair → (compressed ip, port)."""
    if isinstance(value, tuple | list) and len(value) == 2:
        host, port = str(value[0]), int(value[1])
    elif isinstance(value, str):
        text = value.strip()
        require_brackets(text)  # ops: "::1:3478" is a config error, not a bind error
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else default_port
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            port = int(port_text)
        else:
            host, port = text, default_port
    else:
        raise ValueError(f"expected 'ip:port', got {value!r}")
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} out of range")
    return ipaddress.ip_address(host).compressed, port


_TRANSPORTS: tuple[Literal["udp", "tcp"], ...] = ("udp", "tcp")


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _listen_list(value: object) -> object:
    value = _comma_list(value)
    if isinstance(value, list):
        return [parse_listen(item) for item in value]
    return value


def _tls_listen_list(value: object) -> object:
    value = _comma_list(value)
    if isinstance(value, list):
        return [parse_listen(item, TURNS_PORT) for item in value]
    return value


def _ip_or_none(value: object) -> object:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return ipaddress.ip_address(value.strip()).compressed
    return value


def _format_endpoint(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: (host, port), written "ip:port" / "[v6]:port" when the configuration is printed.
EndpointValue = Annotated[tuple[str, int], PlainSerializer(_format_endpoint)]
ListenList = Annotated[list[EndpointValue], BeforeValidator(_listen_list)]
TlsListenList = Annotated[list[EndpointValue], BeforeValidator(_tls_listen_list)]
NetworkList = Annotated[list[str], BeforeValidator(_comma_list)]
OptionalIp = Annotated[str | None, BeforeValidator(_ip_or_none)]


class TurnQuotasConfig(BaseModel):
    """``[turn.quotas]``: resource limits (see :class:`~icerelay.turn.server.quotas.TurnQuotas`
    for what each means). Frozen; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allocations_per_user: int = Field(default=100, ge=1)
    #: Allocations from one client IP address (486 beyond); 0: unlimited.
    allocations_per_source: int = Field(default=300, ge=0)
    total_allocations: int = Field(default=10000, ge=1)
    permissions_per_allocation: int = Field(default=64, ge=1)
    channels_per_allocation: int = Field(default=64, ge=1)
    bandwidth_per_allocation: int = Field(default=1_000_000, ge=0)
    bandwidth_burst_seconds: float = Field(default=1.0, gt=0)

    def quotas(self) -> TurnQuotas:
        """The engine's plain form of these limits."""
        return TurnQuotas(**self.model_dump())


class TurnServerConfig(BaseModel):
    """``[turn]``: the TURN server (RFC 8656). Frozen; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    """Run the TURN server under ``icerelay serve``."""
    listen: ListenList = Field(default_factory=lambda: [("127.0.0.1", TURN_PORT)])
    """Addresses the server listens on (UDP and/or TCP, see ``transports``)."""
    transports: Annotated[list[Literal["udp", "tcp"]], BeforeValidator(_comma_list)] = Field(
        default_factory=lambda: list(_TRANSPORTS), min_length=1
    )
    tls_listen: TlsListenList = Field(default_factory=list)
    """TLS listening addresses; when empty and a certificate is configured, port 5349 on each
    ``listen`` host."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    realm: str = Field(default="icerelay", min_length=1, max_length=127)
    users: dict[str, str] = Field(default_factory=dict)
    """Static long-term credentials: user name → password."""
    auth_secrets: NetworkList = Field(default_factory=list)
    """TURN REST API shared secrets (coturn ``use-auth-secret``/``static-auth-secret``); several
    may be listed so that a secret can be rotated without downtime."""
    relay_ipv4: OptionalIp = None
    """IPv4 address relayed addresses are bound to; defaults to the first concrete IPv4 listen
    address."""
    relay_ipv6: OptionalIp = None
    """IPv6 address for IPv6 relays (REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY);
    defaults to the first concrete IPv6 listen address; without one, IPv6 relays get 440."""
    relay_advertised_ipv4: OptionalIp = None
    """The IPv4 address written in XOR-RELAYED-ADDRESS when the relay sits behind a 1:1 NAT
    (a cloud VM's public address; coturn's ``external-ip``); sockets still bind ``relay_ipv4``."""
    relay_advertised_ipv6: OptionalIp = None
    """Same for IPv6 relays."""
    relay_port_min: int = Field(default=61000, ge=1, le=65535)
    relay_port_max: int = Field(default=65535, ge=1, le=65535)
    """Relay ports; the range must not overlap the OS ephemeral range (checked at start)."""
    force_relay_port_range: bool = False
    """Start even when the relay range overlaps the OS ephemeral range."""
    allow_peers: NetworkList = Field(default_factory=list)
    """Networks opened despite the default deny list (e.g. ``127.0.0.0/8`` in tests)."""
    deny_peers: NetworkList = Field(default_factory=list)
    """More networks to deny; wins over ``allow_peers``."""
    quotas: TurnQuotasConfig = Field(default_factory=TurnQuotasConfig)
    default_lifetime: int = Field(default=600, ge=60)
    max_lifetime: int = Field(default=3600, ge=60)
    nonce_lifetime: int = Field(default=600, ge=10)
    """Seconds a NONCE stays valid before requests get 438 Stale Nonce."""
    unauthenticated_rate: float = Field(default=50.0, ge=0)
    """Answers per second to unauthenticated requests, per source IP (0: unlimited)."""
    unauthenticated_burst: float = Field(default=200.0, ge=1)
    software: str | None = Field(default=None, max_length=127)
    """SOFTWARE attribute value; omitted unless set."""
    sha256: bool = True
    """Offer SHA-256 keys and USERHASH (RFC 8489 PASSWORD-ALGORITHMS) in the nonce cookie."""
    legacy_channel_numbers: bool = True
    """Accept RFC 5766's channel numbers 0x4000-0x7FFF, not only RFC 8656's 0x4000-0x4FFF.
    Deployed clients (libwebrtc, coturn's own tools) still pick numbers up to 0x7FFF; turn
    this off on a server that multiplexes with something that uses 0x50-0x7F first bytes."""
    # --- speed: worker processes and the kernel offload (issue 13) ------------------------
    workers: int | Literal["auto"] = "auto"
    """Processes serving TURN (1-64), or "auto": one per CPU this process may run on, as
    coturn has one relay thread per CPU (1 when a listening port is 0: workers share fixed
    ports). With more than one, every worker listens on the same addresses (SO_REUSEPORT: the
    kernel keeps each client on one worker) and gets an equal slice of the relay port range;
    quotas and the unauthenticated rate are divided among the workers (each enforces its
    share), so a user may be refused slightly before the configured total when its clients
    are unevenly spread."""
    offload: Literal["auto", "ebpf", "off"] = "auto"
    """ChannelData over UDP relayed by an eBPF program in the kernel (TC ingress) once a channel
    is bound (:mod:`icerelay.dataplane.turn_offload`). "auto": used when running as root and
    the kernel accepts the program, otherwise the server runs without it and says why once;
    "ebpf": refuse to start without it; "off": everything in userspace."""
    offload_interfaces: NetworkList = Field(default_factory=list)
    """Interfaces the offload program is attached to; empty: the interfaces holding the
    listening and relay addresses (every interface that is up for a wildcard address)."""
    tcp_idle_timeout: float = Field(default=30.0, gt=0)
    """Seconds a TCP/TLS connection without an allocation may stay idle (a client allocates
    right after connecting; idle connections only hold descriptors)."""
    max_tcp_connections: int = Field(default=4096, ge=1)
    """TCP/TLS client connections at once (per worker)."""
    max_tcp_connections_per_source: int = Field(default=64, ge=1)
    """TCP/TLS client connections from one IP address at once, so one host cannot take them
    all."""

    @model_validator(mode="after")
    def _check(self) -> TurnServerConfig:
        if self.relay_port_min > self.relay_port_max:
            raise ValueError("relay_port_min is above relay_port_max")
        if self.max_lifetime < self.default_lifetime:
            raise ValueError("max_lifetime is below default_lifetime")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if isinstance(self.workers, int) and not 1 <= self.workers <= 64:
            raise ValueError("workers must be 1-64 or \"auto\"")
        if self.relay_port_max - self.relay_port_min + 1 < 2 * self.worker_count():
            raise ValueError("relay port range too small for the number of workers")
        if self.tls_listen and self.tls_cert is None:
            raise ValueError("tls_listen needs tls_cert and tls_key")
        parse_networks(self.allow_peers)
        parse_networks(self.deny_peers)
        for host in (
            self.relay_ipv4,
            self.relay_ipv6,
            self.relay_advertised_ipv4,
            self.relay_advertised_ipv6,
        ):
            if host is not None and ipaddress.ip_address(host).is_unspecified:
                raise ValueError("a relay address must be concrete, not a wildcard")
        if self.relay_ipv4 is not None and ":" in self.relay_ipv4:
            raise ValueError("relay_ipv4 is not an IPv4 address")
        if self.relay_ipv6 is not None and ":" not in self.relay_ipv6:
            raise ValueError("relay_ipv6 is not an IPv6 address")
        if self.relay_advertised_ipv4 is not None and ":" in self.relay_advertised_ipv4:
            raise ValueError("relay_advertised_ipv4 is not an IPv4 address")
        if self.relay_advertised_ipv6 is not None and ":" not in self.relay_advertised_ipv6:
            raise ValueError("relay_advertised_ipv6 is not an IPv6 address")
        return self

    def relay_host(self, family: int) -> str | None:
        """The relay IP for *family* (4 or 6), falling back to a concrete listen address."""
        explicit = self.relay_ipv4 if family == 4 else self.relay_ipv6
        if explicit is not None:
            return explicit
        for host, _port in self.listen:
            address = ipaddress.ip_address(host)
            if address.version == family and not address.is_unspecified:
                return host
        return None

    def worker_count(self) -> int:
        """How many worker processes serve TURN: ``workers``, or for "auto" one per usable CPU
        (at most 64, and at most what the relay range can slice), but 1 when a listening
        port is 0 (SO_REUSEPORT needs every worker on the same fixed port)."""
        if isinstance(self.workers, int):
            return self.workers
        if any(port == 0 for _host, port in self.listen + self.tls_endpoints()):
            return 1
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        span = (self.relay_port_max - self.relay_port_min + 1) // 2
        return max(1, min(cpus, 64, span))

    def worker_share(self, index: int) -> TurnServerConfig:
        """The configuration worker *index* (of :meth:`worker_count`) enforces: its slice of
        the relay range (even-aligned, so EVEN-PORT pairs stay inside one slice), its share of
        quotas."""
        count = self.worker_count()
        if count == 1:
            return self
        size = (self.relay_port_max - self.relay_port_min + 1) // count & ~1
        low = self.relay_port_min + index * size
        high = self.relay_port_max if index == count - 1 else low + size - 1

        def share(value: int) -> int:
            return max(1, -(-value // count))

        quotas = self.quotas.model_copy(
            update={
                "allocations_per_user": share(self.quotas.allocations_per_user),
                "allocations_per_source": (
                    share(self.quotas.allocations_per_source)
                    if self.quotas.allocations_per_source
                    else 0
                ),
                "total_allocations": share(self.quotas.total_allocations),
            }
        )
        return self.model_copy(
            update={
                "workers": 1,
                "relay_port_min": low,
                "relay_port_max": high,
                "quotas": quotas,
                "unauthenticated_rate": self.unauthenticated_rate / count,
                "unauthenticated_burst": max(1.0, self.unauthenticated_burst / count),
            }
        )

    def settings(self) -> TurnServerSettings:
        """What the engine needs, as a plain frozen dataclass (apply :meth:`worker_share`
        first in a worker)."""
        return TurnServerSettings(
            realm=self.realm,
            users=dict(self.users),
            auth_secrets=tuple(self.auth_secrets),
            nonce_lifetime=self.nonce_lifetime,
            sha256=self.sha256,
            listen=tuple(self.listen),
            tls_listen=tuple(self.tls_endpoints()),
            relay_ipv4=self.relay_host(4),
            relay_ipv6=self.relay_host(6),
            relay_advertised_ipv4=self.relay_advertised_ipv4,
            relay_advertised_ipv6=self.relay_advertised_ipv6,
            relay_port_min=self.relay_port_min,
            relay_port_max=self.relay_port_max,
            allow_peers=tuple(self.allow_peers),
            deny_peers=tuple(self.deny_peers),
            quotas=self.quotas.quotas(),
            default_lifetime=self.default_lifetime,
            max_lifetime=self.max_lifetime,
            unauthenticated_rate=self.unauthenticated_rate,
            unauthenticated_burst=self.unauthenticated_burst,
            software=self.software,
            legacy_channel_numbers=self.legacy_channel_numbers,
        )

    def advertised_host(self, family: int) -> str | None:
        """The relay IP for *family* as clients see it (advertised, else the bound one)."""
        advertised = self.relay_advertised_ipv4 if family == 4 else self.relay_advertised_ipv6
        return advertised if advertised is not None else self.relay_host(family)

    def tls_endpoints(self) -> list[tuple[str, int]]:
        """TLS listening addresses in effect (empty without a certificate)."""
        if self.tls_cert is None:
            return []
        if self.tls_listen:
            return list(self.tls_listen)
        return sorted({(host, TURNS_PORT) for host, _port in self.listen})
