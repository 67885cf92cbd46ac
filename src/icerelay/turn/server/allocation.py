"""The state of one TURN allocation: relayed addresses, permissions, channels (RFC 8656 §2.2).

Plain slotted objects, owned and mutated only by :class:`~icerelay.turn.server.engine.
TurnServerEngine`. Times are absolute (the engine's clock); an entry whose time has passed is
dead even before the engine's timer sweeps it, so the hot path only compares numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from icerelay.turn.server.ratelimit import TokenBucket

#: (host, port) as the socket layer gives it.
HostPort = tuple[str, int]
#: RFC 8656's 5-tuple, as the engine keys it: (transport, client address, server address).
FiveTuple = tuple[str, HostPort, HostPort]

PERMISSION_LIFETIME = 300.0  # RFC 8656 §9
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12
#: RFC 8656 §12: after a channel expires, neither its number nor its peer may be rebound to
#: something else for 5 minutes, so late packets are not delivered to the wrong peer.
CHANNEL_COOLDOWN = 300.0
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
#: RFC 5766 allowed up to 0x7FFF; RFC 8656 §12 reserved 0x5000-0xFFFF, but clients still use them.
CHANNEL_MAX_LEGACY = 0x7FFF


@dataclass(slots=True, eq=False)
class Channel:
    """A channel binding: number ↔ peer transport address, on one relayed address."""

    number: int
    peer: HostPort
    relay: HostPort
    expires: float


@dataclass(slots=True, eq=False)
class Allocation:
    """One allocation, identified by its 5-tuple; one or two relayed addresses (dual stack)."""

    five_tuple: FiveTuple
    username: str
    quota_user: str
    relays: dict[int, HostPort]  # family (4 or 6) -> relayed address
    expires: float
    created: float
    stream: bool  # TCP or TLS to the client: ChannelData is padded (RFC 8656 §12.5)
    bucket: TokenBucket | None
    dont_fragment: bool = False
    #: When the pending expiry timer entry fires (0: none yet); see the engine's _schedule.
    timer_at: float = 0.0
    #: Peer IP address -> expiry (permissions ignore the port, RFC 8656 §9).
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    channel_by_peer: dict[HostPort, Channel] = field(default_factory=dict)
    #: Recently expired bindings that may not be rebound to something else yet.
    cooldown_numbers: dict[int, tuple[HostPort, float]] = field(default_factory=dict)
    cooldown_peers: dict[HostPort, tuple[int, float]] = field(default_factory=dict)
    #: The Allocate transaction and its answer, resent if the request is retransmitted.
    allocate_transaction: bytes = b""
    allocate_response: bytes = b""
    #: Traffic counters (relayed through, both directions).
    packets_to_peers: int = 0
    bytes_to_peers: int = 0
    packets_to_client: int = 0
    bytes_to_client: int = 0

    @property
    def transport(self) -> str:
        """How the client reaches us: "udp", "tcp" or "tls"."""
        return self.five_tuple[0]

    @property
    def client(self) -> HostPort:
        """The client's address as the server sees it (its server-reflexive address)."""
        return self.five_tuple[1]

    @property
    def server(self) -> HostPort:
        """The server address the client talks to."""
        return self.five_tuple[2]
