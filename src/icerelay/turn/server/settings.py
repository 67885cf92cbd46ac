"""``TurnServerSettings``: what the TURN server engine needs to know, as plain values.

The engine takes this frozen dataclass, not the configuration file's model: it does not depend
on pydantic, and a test or the simulator builds one in a line. The daemon's ``[turn]`` section
(:class:`icerelay.daemon.turn_config.TurnServerConfig`) validates the operator's input and
produces one with :meth:`~icerelay.daemon.turn_config.TurnServerConfig.settings`, with the relay
addresses already resolved and the worker's share of ports and quotas applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from icerelay.turn.server.quotas import TurnQuotas

#: (host, port) as the socket layer gives it.
HostPort = tuple[str, int]


@dataclass(frozen=True)
class TurnServerSettings:
    """The TURN server engine's settings (see :class:`~.engine.TurnServerEngine`)."""

    realm: str = "icerelay"
    #: Static long-term credentials: user name -> password.
    users: Mapping[str, str] = field(default_factory=dict)
    #: TURN REST API shared secrets, first one preferred.
    auth_secrets: tuple[str, ...] = ()
    #: Seconds a NONCE stays valid before requests get 438 Stale Nonce.
    nonce_lifetime: float = 600.0
    #: Offer SHA-256 keys and USERHASH (RFC 8489 PASSWORD-ALGORITHMS) in the nonce cookie.
    sha256: bool = True
    #: The server's own listening addresses (UDP/TCP, and TLS): never relayed to.
    listen: tuple[HostPort, ...] = ()
    tls_listen: tuple[HostPort, ...] = ()
    #: Addresses relayed sockets are bound to, per family; None: no relays of that family.
    relay_ipv4: str | None = None
    relay_ipv6: str | None = None
    #: What XOR-RELAYED-ADDRESS says when the relay sits behind a 1:1 NAT (None: the bound one).
    relay_advertised_ipv4: str | None = None
    relay_advertised_ipv6: str | None = None
    relay_port_min: int = 61000
    relay_port_max: int = 65535
    #: Networks opened despite the default deny list, and more networks to deny.
    allow_peers: tuple[str, ...] = ()
    deny_peers: tuple[str, ...] = ()
    quotas: TurnQuotas = field(default_factory=TurnQuotas)
    default_lifetime: int = 600
    max_lifetime: int = 3600
    #: Answers per second to unauthenticated requests, per source IP (0: unlimited).
    unauthenticated_rate: float = 50.0
    unauthenticated_burst: float = 200.0
    #: SOFTWARE attribute value; omitted when None.
    software: str | None = None
    #: Accept RFC 5766's channel numbers up to 0x7FFF, not only RFC 8656's up to 0x4FFF.
    legacy_channel_numbers: bool = True

    def relay_host(self, family: int) -> str | None:
        """The address relays of *family* (4 or 6) are bound to, or None."""
        return self.relay_ipv4 if family == 4 else self.relay_ipv6

    def advertised_host(self, family: int) -> str | None:
        """The relay address of *family* as clients see it (advertised, else the bound one)."""
        advertised = self.relay_advertised_ipv4 if family == 4 else self.relay_advertised_ipv6
        return advertised if advertised is not None else self.relay_host(family)
