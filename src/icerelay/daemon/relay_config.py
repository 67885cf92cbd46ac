"""``RelayServiceConfig``: the ``[relay]`` section, one validated, frozen model.

Like the other sections it can be built directly in code and tests, and it does not import
:mod:`icerelay.daemon.config` (which imports it to add the section).

Example (TOML)::

    [relay]
    enabled = true
    ng_listen = "127.0.0.1:2223"        # rtpengine's ng protocol, UDP and TCP
    mediaproxy_socket = "/run/mediaproxy/dispatcher.sock"   # OpenSIPS mediaproxy module
    accounting = "sqlite:///var/lib/icerelay/sessions.sqlite3"
    address_ipv4 = "192.0.2.10"          # where relay ports are bound
    advertised_ipv4 = "203.0.113.10"     # what SDP names, when behind a 1:1 NAT
    port_min = 16384
    port_max = 32767
    media_timeout = 60
    ice_priority = "low"                 # none | low | high
    dataplane = "auto"                   # auto | kernel | userspace (nftables when root)
"""

from __future__ import annotations

import ipaddress
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from icerelay.net import require_brackets, split_host_port
from icerelay.relay.policy import IcePriority
from icerelay.relay.sessions import RelayConfig

__all__ = [
    "DEFAULT_ACCOUNTING",
    "NG_DEFAULT",
    "RelayServiceConfig",
    "default_state_dir",
    "user_state_accounting",
]

NG_DEFAULT = ("127.0.0.1", 2223)
#: Where records go by default (a system path: a daemon runs as root or its own user).
DEFAULT_ACCOUNTING = "sqlite:///var/lib/icerelay/sessions.sqlite3"


def user_state_accounting() -> str:
    """The fallback store for a relay run as an ordinary user (``make run``): the XDG state
    directory, ``$XDG_STATE_HOME/icerelay/sessions.sqlite3`` (``~/.local/state`` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return "sqlite:///" + os.path.join(base, "icerelay", "sessions.sqlite3").lstrip("/")


def default_state_dir() -> str:
    """Where the relay keeps its journal by default: ``/var/lib/icerelay`` for root, else the
    user's ``$XDG_STATE_HOME/icerelay`` (``~/.local/state/icerelay``)."""
    if os.geteuid() == 0:
        return "/var/lib/icerelay"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "icerelay")


def _host_port(value: object) -> object:
    if isinstance(value, str):
        require_brackets(value)  # ops: "::1:2223" is a config error, not a bind error
        host, port = split_host_port(value, NG_DEFAULT[1])
        return (ipaddress.ip_address(host).compressed, port)
    return value


class RelayServiceConfig(BaseModel):
    """Settings of the media relay daemon (see the module docstring for an example)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    #: ng control protocol listen address (UDP and TCP on the same port).
    ng_listen: tuple[str, int] = NG_DEFAULT
    ng_tcp: bool = True
    #: Relay port addresses per family; None disables that family.
    address_ipv4: str | None = "127.0.0.1"
    address_ipv6: str | None = None
    advertised_ipv4: str | None = None
    advertised_ipv6: str | None = None
    # Below Linux's ephemeral range (32768-60999), so client sockets never take relay ports, and
    # apart from the TURN server's default relay range.
    port_min: int = Field(default=16384, ge=1024, le=65534)
    port_max: int = Field(default=32767, ge=1025, le=65535)
    media_timeout: float = Field(default=60.0, gt=0)
    hold_timeout: float = Field(default=3600.0, gt=0)
    offer_timeout: float = Field(default=300.0, gt=0)
    #: 0 disables the limit.
    max_duration: float = Field(default=86400.0, ge=0)
    delete_delay: float = Field(default=30.0, ge=0)
    ice_priority: Literal["none", "low", "high"] = "low"
    strict_source: bool = False
    #: Send media to the SIP source address unless a request says trust-address (rtpengine's
    #: --sip-source); by default the SDP's address is trusted and latching corrects it.
    sip_source: bool = False
    #: Latching (see the README's "Latching and the threat model"): seconds the latched source
    #: must have been silent before another source that continues its RTP stream (same SSRC,
    #: plausible sequence number, as after a NAT rebinding) takes the leg over; 0: at once.
    #: Silence alone never hands a leg to a stranger.
    handover_after: float = Field(default=0.5, ge=0)
    #: OpenSIPS's mediaproxy module talks to this UNIX socket; the default is where the module
    #: looks unless configured otherwise. Empty disables it. Without the rights to create it the
    #: relay runs on without it (a warning is logged).
    mediaproxy_socket: str = "/run/mediaproxy/dispatcher.sock"
    #: Where session records go: ``sqlite:///PATH`` (or a plain path), or a PostgreSQL URL
    #: ``postgresql://user:password@host/db`` (needs the ``postgres`` extra); empty: log only.
    #: When the database cannot be opened the relay runs on and logs the records.
    accounting: str = DEFAULT_ACCOUNTING
    # -- accounting durability --
    #: The relay's own durable state: the journal every record is committed to before the
    #: ``delete`` is acknowledged, and the checkpoints of live calls. Empty: the directory of
    #: an SQLite ``accounting`` file, else :func:`default_state_dir`. Created 0700.
    state_dir: str = ""
    #: Seconds between checkpoints of the live calls (what a kill -9 would cost in counters).
    checkpoint_interval: float = Field(default=2.0, gt=0, le=3600)
    #: Replies kept for retransmitted ng requests.
    ng_cache_size: int = Field(default=10_000, ge=1)
    ng_cache_ttl: float = Field(default=30.0, gt=0)
    #: Bytes the kept replies may take together (big offers, ``list`` over TCP).
    ng_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=65_536)
    #: ng UDP requests waiting for the worker; beyond it a flood is dropped (and counted)
    #: rather than queued without end: the proxy retransmits.
    ng_queue_max: int = Field(default=4096, ge=16)

    # -- limits (issue 10): every resource a control client can make the relay hold ---------
    #: Open ng TCP connections (one per proxy process in practice); more are closed at once.
    ng_tcp_max_connections: int = Field(default=64, ge=1)
    #: Seconds an ng TCP connection may stay silent (proxies that keep one open send a ping
    #: now and then); 0 never closes them.
    ng_tcp_idle_timeout: float = Field(default=600.0, ge=0)
    #: Bytes one ng TCP message may take (and so what one connection may make the relay
    #: buffer); UDP messages are bounded by the datagram.
    ng_tcp_max_message: int = Field(default=256 * 1024, ge=4096, le=16 * 1024 * 1024)
    #: The largest ng reply sent as one UDP datagram; a request whose reply would be larger is
    #: refused (nothing allocated) with an error-reason that says to use TCP.
    ng_max_udp_reply: int = Field(default=65_507, ge=1024, le=65_507)
    #: Media streams (m-lines, or MediaProxy ``media`` entries) one request may carry; each
    #: holds up to four relay ports.
    max_streams_per_call: int = Field(default=32, ge=1, le=1024)
    #: Sessions (call legs; a forked call has one per branch) in progress at once; an offer
    #: opening one more is refused. Ports bound the sessions that carry media, but not those
    #: whose streams are all rejected (port 0), nor the branches of one call.
    max_sessions: int = Field(default=10_000, ge=1)
    #: Open MediaProxy dispatcher connections.
    mediaproxy_max_connections: int = Field(default=64, ge=1)
    #: Permissions of the MediaProxy socket file (octal text, e.g. "0660"): the proxy's user
    #: must share the relay's group; "0666" lets every local user drive the relay.
    mediaproxy_socket_mode: str = "0660"
    #: Raise the soft open-file limit (RLIMIT_NOFILE) at start to what the port range needs
    #: (two sockets per pair, plus control connections); false keeps the inherited limit.
    raise_fd_limit: bool = True
    #: Seconds between two log lines of the same kind of refusal or internal error.
    log_interval: float = Field(default=10.0, gt=0)

    # -- step-aside (issue 11) --
    #: Seconds without media or checks on the relay pair, after authenticated ICE checks crossed
    #: the relay, before the relay steps aside (frees the stream's ports).
    ice_settle: float = Field(default=3.0, gt=0)
    #: The same while only one of a two-component stream's relay ports saw traffic (ICE may
    #: still be checking the other component: baresip checks one pair at a time).
    ice_checking_wait: float = Field(default=10.0, gt=0)
    #: Seconds the ports of a stepped-aside stream stay out of the pool (late packets of that
    #: call must reach no other call).
    port_quarantine: float = Field(default=60.0, ge=0)

    # -- data plane (issue 12) --
    #: Who moves media: "kernel" forwards latched streams with nftables (needs root and the
    #: python3-nftables package; the relay refuses to start without them); "auto" uses the kernel
    #: when it can and otherwise says why in one log line and runs in userspace; "userspace"
    #: keeps every packet in the relay process. The default stays "userspace" because one host
    #: holds one ``icerelay`` table: two relays on one host (tests, a side-by-side upgrade) must
    #: not both program it.
    dataplane: Literal["auto", "kernel", "userspace"] = "userspace"
    #: Seconds between reads of the kernel's per-stream counters: the precision of the no-media
    #: timeout and of the handover rule for streams the kernel forwards.
    kernel_poll_interval: float = Field(default=1.0, gt=0, le=10)

    @field_validator("ng_listen", mode="before")
    @classmethod
    def _parse_listen(cls, value: object) -> object:
        return _host_port(value)

    @field_validator("mediaproxy_socket_mode")
    @classmethod
    def _check_mode(cls, value: str) -> str:
        try:
            mode = int(value, 8)
        except ValueError:
            raise ValueError(f"mediaproxy_socket_mode {value!r} is not an octal mode") from None
        if not 0 <= mode <= 0o777:
            raise ValueError(f"mediaproxy_socket_mode {value!r} is not a permission mode")
        return value

    @property
    def socket_mode(self) -> int:
        """:attr:`mediaproxy_socket_mode` as a number."""
        return int(self.mediaproxy_socket_mode, 8)

    @field_validator("accounting")
    @classmethod
    def _check_accounting(cls, value: str) -> str:
        if not value or value.startswith(("sqlite:", "postgresql://", "postgres://")):
            return value
        if "://" in value:
            scheme = value.split("://", 1)[0]
            raise ValueError(
                f"accounting store {scheme!r} is not supported (sqlite:///PATH or postgresql://...)"
            )
        return value

    @field_validator("address_ipv4", "address_ipv6", "advertised_ipv4", "advertised_ipv6")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        return None if value is None else ipaddress.ip_address(value).compressed

    @model_validator(mode="after")
    def _check(self) -> RelayServiceConfig:
        if self.port_max - self.port_min < 3:
            raise ValueError("port_min..port_max must hold at least two even/odd pairs")
        if self.address_ipv4 is None and self.address_ipv6 is None:
            raise ValueError("the relay needs address_ipv4 or address_ipv6")
        for name, family in (("address_ipv4", 4), ("address_ipv6", 6)):
            value = getattr(self, name)
            if value is not None and ipaddress.ip_address(value).version != family:
                raise ValueError(f"{name} {value} is not an IPv{family} address")
        return self

    def state_directory(self, accounting: str | None = None) -> str:
        """The state directory in use with the ``accounting`` URL (default: the setting)."""
        if self.state_dir:
            return self.state_dir
        url = self.accounting if accounting is None else accounting
        if url.startswith("sqlite:///"):
            return os.path.dirname("/" + url[len("sqlite:///") :])
        if url.startswith("sqlite:"):
            return os.path.dirname(os.path.abspath(url[len("sqlite:") :]))
        if url and "://" not in url:
            return os.path.dirname(os.path.abspath(url))
        return default_state_dir()

    def engine_config(self) -> RelayConfig:
        """The session engine's part of these settings."""
        addresses: dict[int, str] = {}
        advertised: dict[int, str] = {}
        for family, address, public in (
            (4, self.address_ipv4, self.advertised_ipv4),
            (6, self.address_ipv6, self.advertised_ipv6),
        ):
            if address is not None:
                addresses[family] = address
                if public is not None:
                    advertised[family] = public
        return RelayConfig(
            addresses=addresses,
            advertised=advertised,
            media_timeout=self.media_timeout,
            hold_timeout=self.hold_timeout,
            offer_timeout=self.offer_timeout,
            max_duration=self.max_duration or None,
            delete_delay=self.delete_delay,
            ice_priority=IcePriority(self.ice_priority),
            strict_source=self.strict_source,
            handover_after=self.handover_after or None,
            sip_source=self.sip_source,
            max_sessions=self.max_sessions,
            ice_settle=self.ice_settle,
            ice_checking_wait=self.ice_checking_wait,
            port_quarantine=self.port_quarantine,
        )
