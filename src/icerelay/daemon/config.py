"""The one configuration model of icerelay, and how it is loaded.

Sources, lowest precedence first:

1. defaults in the model (they run on a laptop: STUN on 127.0.0.1:3478, UDP and TCP);
2. a TOML file (``icerelay serve --config FILE``, or ``ICERELAY_CONFIG=FILE``);
3. environment variables: ``ICERELAY_<SECTION>__<KEY>`` such as ``ICERELAY_STUN__LISTEN``
   (lists are comma-separated: ``ICERELAY_STUN__LISTEN=127.0.0.1:3478,[::1]:3478``);
4. command-line flags (``--stun-listen``, ``--set stun.software=x``, ...).

Every section is a frozen pydantic model with ``extra="forbid"`` so that a typo is an error
that names the key and where it came from, never a silently ignored setting. Adding a section
(``[turn]``, ``[relay]``, ...) means: define its model here and add one field to :class:`Config`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from icerelay.daemon.cluster_config import ClusterConfig
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.errors import ConfigError
from icerelay.net import Address, require_brackets, split_host_port

ENV_PREFIX = "ICERELAY_"
ENV_CONFIG_FILE = "ICERELAY_CONFIG"
STUN_PORT = 3478


#: An IP address (no brackets) and a port, as given in the configuration: the one address type.
HostPort = Address


def parse_endpoint(value: object, default_port: int = STUN_PORT) -> HostPort:
    """Parse an IP literal with optional port into a :class:`HostPort` (names are refused:
    a server binds addresses, and resolving at load time would hide which address was meant)."""
    if isinstance(value, Address):
        return value
    if isinstance(value, tuple | list) and len(value) == 2:
        host, port = str(value[0]), int(value[1])
    elif isinstance(value, str):
        require_brackets(value)
        host, port = split_host_port(value, default_port)
    else:
        raise ValueError(f"expected 'ip:port' as a string, got {value!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} out of range")
    return HostPort(ip.compressed, port)


def _comma_list(value: object) -> object:
    # Environment variables and flags carry lists as "a,b,c"; TOML carries real lists.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Endpoint = Annotated[HostPort, BeforeValidator(parse_endpoint), PlainSerializer(str)]
_PORTLESS = -1


def _parse_alternate(value: object) -> object:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        # Keep "no port given" visible so the model can default it to primary port + 1.
        host, port = split_host_port(value, default_port=_PORTLESS)
        return HostPort(parse_endpoint((host, 1)).host, port)
    return parse_endpoint(value)


AlternateEndpoint = Annotated[
    HostPort | None,
    BeforeValidator(_parse_alternate),
    PlainSerializer(lambda value: None if value is None else str(value)),
]


class Section(BaseModel):
    """Base of every section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StunConfig(Section):
    """``[stun]``: the STUN Binding service (RFC 8489), with RFC 5780 when ``alternate`` is set."""

    enabled: bool = True
    listen: Annotated[list[Endpoint], BeforeValidator(_comma_list)] = Field(
        default_factory=lambda: [HostPort("127.0.0.1", STUN_PORT)], min_length=1
    )
    transports: Annotated[list[Literal["udp", "tcp"]], BeforeValidator(_comma_list)] = Field(
        default_factory=lambda: ["udp", "tcp"],  # type: ignore[arg-type]
        min_length=1,
    )
    alternate: AlternateEndpoint = None
    """RFC 5780 second address ``IP[:PORT]``; pairs with the listen address of its family.
    Without a port, the alternate port is the primary port + 1."""
    software: str | None = Field(default=None, max_length=127)
    """SOFTWARE attribute value; omitted unless set (it tells attackers what to attack)."""
    padding_limit: int = Field(default=1500, ge=0, le=65000)
    """Largest PADDING (RFC 5780) a response carries; responses are never padded beyond the size
    of the request, so PADDING cannot amplify."""
    log_interval: float = Field(default=60.0, ge=0)
    """Seconds between two log lines about malformed input from the same source."""
    tcp_idle_timeout: float = Field(default=300.0, gt=0)
    max_tcp_connections: int = Field(default=1024, ge=1)
    max_tcp_connections_per_source: int = Field(default=16, ge=1)
    """Open TCP connections from one IP address: one source must not hold all
    ``max_tcp_connections`` and lock everyone else out until they time out."""

    @model_validator(mode="after")
    def _check_alternate(self) -> StunConfig:
        if len(set(self.listen)) != len(self.listen):
            raise ValueError("listen has duplicate addresses")
        if self.alternate is None:
            return self
        primaries = [a for a in self.listen if a.family == self.alternate.family]
        if len(primaries) != 1:
            raise ValueError(
                f"alternate {self.alternate.host} needs exactly one listen address of IPv"
                f"{self.alternate.family}, found {len(primaries)}"
            )
        primary = primaries[0]
        if primary.host == self.alternate.host:
            raise ValueError("alternate must be a different IP address from the listen address")
        if ipaddress.ip_address(primary.host).is_unspecified:
            raise ValueError("RFC 5780 needs a concrete listen address, not a wildcard")
        if primary.port == 0:
            raise ValueError("RFC 5780 needs a fixed listen port, not 0")
        port = self.alternate.port if self.alternate.port != _PORTLESS else primary.port + 1
        if port == primary.port or not 0 < port < 65536:
            raise ValueError("alternate port must differ from the listen port")
        object.__setattr__(self, "alternate", HostPort(self.alternate.host, port))
        return self

    @property
    def rfc5780_primary(self) -> HostPort | None:
        """The listen address paired with ``alternate`` (RFC 5780 A1:P1), if any."""
        if self.alternate is None:
            return None
        return next(a for a in self.listen if a.family == self.alternate.family)


class LogConfig(Section):
    """``[log]``: structured logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["kv", "json"] = "kv"

    @model_validator(mode="before")
    @classmethod
    def _lower(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v.lower() if isinstance(v, str) else v for k, v in data.items()}
        return data


# --- [http] (ops, issue 14): metrics, the live page and the control API ----------------------

HTTP_PORT = 9470


def _optional_endpoint(value: object) -> object:
    # `--set http.listen=` (an empty value) turns the listener off.
    if value is None or value == "":
        return None
    return parse_endpoint(value, HTTP_PORT)


class HttpConfig(Section):
    """``[http]``: Prometheus ``/metrics``, the live page ``/`` and the JSON API ``/api/...``.

    On by default on loopback only: the API can delete calls and drain the daemon, so it must
    not face other hosts unless a firewall or a reverse proxy guards it.
    """

    listen: Annotated[
        HostPort | None,
        BeforeValidator(_optional_endpoint),
        PlainSerializer(lambda value: None if value is None else str(value)),
    ] = Field(default_factory=lambda: HostPort("127.0.0.1", HTTP_PORT))
    #: Seconds between two server-sent-event updates of the live page.
    update_interval: float = Field(default=1.0, gt=0, le=60)


class Config(Section):
    """The whole configuration. One field per section."""

    stun: StunConfig = Field(default_factory=StunConfig)
    turn: TurnServerConfig = Field(default_factory=TurnServerConfig)
    relay: RelayServiceConfig = Field(default_factory=RelayServiceConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    # Scale-out and failover on Redis (issue 15): empty redis URL, no cluster.
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)


# --- loading -----------------------------------------------------------------------------------


def _deep_merge(
    base: dict[str, Any],
    update: Mapping[str, Any],
    origin: str,
    sources: dict[tuple[str, ...], str],
    path: tuple[str, ...] = (),
) -> None:
    for key, value in update.items():
        here = (*path, key)
        if isinstance(value, Mapping):
            if not isinstance(base.get(key), dict):
                base[key] = {}
            _deep_merge(base[key], value, origin, sources, here)
        else:
            base[key] = value
            sources[here] = origin


def _set_path(tree: dict[str, Any], dotted: str, value: Any, what: str) -> None:
    parts = [p for p in dotted.split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"{what}: expected section.key, got {dotted!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {dotted!r} conflicts with another setting")
        node = child
    node[parts[-1]] = value


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML configuration file; errors become :class:`ConfigError` naming the file."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        # TOML files are UTF-8 (TOML 1.0 §"Spec"); a Latin-1 comment is the usual culprit.
        raise ConfigError(
            f"config file {os.fspath(path)!r} is not UTF-8 (TOML must be): byte "
            f"0x{exc.object[exc.start]:02x} at offset {exc.start}"
        ) from None


def toml_value(text: str) -> Any:
    """A value from ``--set`` or the environment: a TOML inline table, array or quoted string
    when it is written as one (``{alice="wonderland"}``, ``["a", "b"]``, ``"x"``), else the
    text itself (the model converts numbers, booleans and comma lists; ``[::1]:3478`` stays an
    address). Raises ConfigError for a table, array or string that is not valid TOML."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[\"'":
        return text
    try:
        return tomllib.loads(f"value = {stripped}")["value"]
    except tomllib.TOMLDecodeError as exc:
        if stripped[0] == "[":
            return text  # "[::1]:3478" and other bracketed addresses
        raise ConfigError(f"{text!r} is not a valid TOML value: {exc}") from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``ICERELAY_SECTION__KEY=value`` → ``{"section": {"key": "value"}}``.

    Variables without ``__`` (such as ``ICERELAY_CONFIG``) are not settings and are skipped.
    """
    tree: dict[str, Any] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        what = f"environment variable {name}"
        try:
            parsed = toml_value(value)
        except ConfigError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        _set_path(tree, dotted, parsed, what)
    return tree


def parse_set_options(options: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["stun.software=x", ...]`` (from ``--set``) → nested overrides."""
    tree: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise ConfigError(f"--set {option!r}: expected section.key=value")
        try:
            parsed = toml_value(value)
        except ConfigError as exc:
            raise ConfigError(f"--set {option!r}: {exc}") from None
        _set_path(tree, key.strip(), parsed, f"--set {option!r}")
    return tree


def load_config(
    *,
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration: defaults < file < environment < ``overrides`` (CLI flags).

    ``path`` defaults to ``$ICERELAY_CONFIG`` when set. Raises :class:`ConfigError` with one line
    per problem, each naming the setting and the source it came from.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get(ENV_CONFIG_FILE):
        path = environ[ENV_CONFIG_FILE]
    merged: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    if path is not None:
        _deep_merge(merged, read_toml(path), f"file {os.fspath(path)}", sources)
    for name in sorted(environ):
        # One variable at a time, so an error can name the variable it came from.
        tree = env_overrides({name: environ[name]})
        if tree:
            _deep_merge(merged, tree, f"environment variable {name}", sources)
    if overrides:
        _deep_merge(merged, overrides, "command line", sources)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None


def _describe(exc: ValidationError, sources: Mapping[tuple[str, ...], str]) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        where = ".".join(loc) or "(top level)"
        origin = next(
            (sources[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in sources), None
        )
        if origin is None and loc:
            # A whole unknown section ([stunn]): its keys were recorded, not the section.
            origin = next((o for key, o in sources.items() if key[: len(loc)] == loc), None)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
            if len(loc) == 1:
                message = f"unknown section (known: {', '.join(Config.model_fields)})"
        line = f"{where}: {message}"
        if origin:
            line += f" (from {origin})"
        lines.append(line)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def example_toml() -> str:
    """A commented example configuration: every section with its defaults, as a starting
    point for an operator's file (no command prints it yet)."""
    return EXAMPLE_TOML


EXAMPLE_TOML = """\
# icerelay configuration. Every key is optional; shown values are the defaults unless noted.

[stun]
enabled = true
listen = ["127.0.0.1:3478"]          # also e.g. "[::1]:3478"
transports = ["udp", "tcp"]
# alternate = "127.0.0.2"            # RFC 5780: second IP (optionally :PORT, default port+1)
# software = "icerelay"              # SOFTWARE attribute; omitted unless set
padding_limit = 1500
log_interval = 60.0                   # seconds between log lines about one bad source
tcp_idle_timeout = 300.0
max_tcp_connections = 1024
max_tcp_connections_per_source = 16

[turn]                                # TURN server (RFC 8656); also answers Binding on its ports
enabled = false
listen = ["127.0.0.1:3478"]          # the STUN service leaves addresses that TURN listens on
transports = ["udp", "tcp"]
# tls_cert = "/etc/icerelay/cert.pem" # with tls_key: TURN over TLS on 5349 (tls_listen to change)
# tls_key = "/etc/icerelay/key.pem"
realm = "icerelay"
users = {}                            # static users, e.g. { alice = "wonderland" }
auth_secrets = []                     # TURN REST API secrets (coturn use-auth-secret)
# relay_ipv4 = "192.0.2.10"           # default: the first concrete IPv4 listen address
# relay_ipv6 = "2001:db8::10"         # IPv6 relays (REQUESTED-ADDRESS-FAMILY, dual allocations)
# relay_advertised_ipv4 = "203.0.113.7"  # public address behind a 1:1 NAT (coturn external-ip)
relay_port_min = 61000                # must not overlap net.ipv4.ip_local_port_range
relay_port_max = 65535
allow_peers = []                      # networks opened despite the default deny list
deny_peers = []                       # more networks to deny (wins over allow_peers)
workers = 1                           # processes on SO_REUSEPORT listeners
# software = "icerelay"               # SOFTWARE attribute; omitted unless set

[turn.quotas]
allocations_per_user = 100
allocations_per_source = 300         # allocations from one client IP address (486 beyond)
total_allocations = 10000
permissions_per_allocation = 64
channels_per_allocation = 64
bandwidth_per_allocation = 1000000    # bytes/s per allocation, both directions (0: unlimited)

[relay]                               # the media relay a SIP proxy drives (issue 5)
enabled = true
ng_listen = "127.0.0.1:2223"          # rtpengine's ng protocol, UDP and TCP
mediaproxy_socket = "/run/mediaproxy/dispatcher.sock"   # mediaproxy module (OpenSIPS); "" = off
address_ipv4 = "127.0.0.1"            # relay ports are bound here
# advertised_ipv4 = "203.0.113.10"    # written into SDP instead (relay behind a 1:1 NAT)
# address_ipv6 = "::1"
port_min = 16384                      # even RTP / odd RTCP pairs from this range
port_max = 32767
media_timeout = 60.0
hold_timeout = 3600.0
offer_timeout = 300.0
max_duration = 86400.0                # 0: no limit
delete_delay = 30.0
ice_priority = "low"                  # relay candidate: none | low | high
strict_source = false                 # after latching, drop other sources (README: latching)
handover_after = 0.5                  # s the latched source is silent before a same-SSRC handover
sip_source = false                    # true: media to the SIP source address, not the SDP's
accounting = "sqlite:///var/lib/icerelay/sessions.sqlite3"   # or postgresql://...; "" = log only
# limits: what one control client can make the relay hold (README, "Resource limits")
ng_tcp_max_connections = 64
ng_tcp_idle_timeout = 600.0           # 0: never close a silent ng TCP connection
ng_tcp_max_message = 262144
ng_max_udp_reply = 65507              # larger replies: error-reason, use TCP
ng_queue_max = 4096                   # UDP requests waiting; a flood beyond is dropped
ng_cache_bytes = 67108864             # replies kept for retransmissions, in bytes
max_streams_per_call = 32             # m-lines / MediaProxy streams per request
max_sessions = 10000                  # call legs in progress; a new one beyond is refused
mediaproxy_max_connections = 64
mediaproxy_socket_mode = "0660"
raise_fd_limit = true                 # raise RLIMIT_NOFILE to what the port range needs
log_interval = 10.0                   # seconds between two log lines of one kind of refusal

[http]                                # /metrics, the live page /, the JSON API /api/...
listen = "127.0.0.1:9470"            # "" turns it off; keep it on loopback or behind a firewall
update_interval = 1.0                 # seconds between live page updates

[log]
level = "info"                        # debug | info | warning | error
format = "kv"                         # kv | json

[cluster]                             # calls shared in Redis: failover and scale-out (issue 15)
redis = ""                            # e.g. "redis://127.0.0.1:6379/0"; "" = no cluster
# instance = "relay-a"                # unique per instance; default: the host name
key_prefix = "icerelay"
heartbeat_interval = 0.3              # seconds
heartbeat_ttl = 1.0                   # silent this long: dead, its calls are adopted
write_interval = 0.2                  # changed calls are written at most this often
write_before_reply = true             # a call changed by ng is in Redis before the reply
counters_interval = 5.0               # unchanged calls are rewritten (fresh counters)
adopt_lock = 30.0
forward_timeout = 0.3                 # ng commands passed to the owning instance
# ng_address = "10.0.0.1:2223"        # where others reach this ng port (default: ng_listen)
log_interval = 30.0                   # "Redis unreachable" at most once per interval
turn_users = false                    # TURN users, secrets, quotas in Redis
"""
