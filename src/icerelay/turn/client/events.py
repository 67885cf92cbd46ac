"""What the TURN allocation engine tells its driver: outgoing datagrams, events and counters.

Events are small frozen dataclasses, returned one at a time by
:meth:`icerelay.turn.client.allocation.Allocation.next_event`.
"""

from __future__ import annotations

from dataclasses import dataclass

# The engine's datagrams are the shared :class:`icerelay.net.Datagram`, ``source`` None (one
# socket or connection) and ``destination`` always the TURN server. On stream transports (TCP,
# TLS) ``data`` is a piece of the byte stream, already framed. Kept importable from here.
from icerelay.net import Datagram as Datagram
from icerelay.stun import Address


class Event:
    """Base class of everything :meth:`Allocation.next_event` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class AllocationSucceeded(Event):
    """The server made the allocation.

    *relayed_address* is the transport address peers send to (the relayed candidate);
    *mapped_address* is how the server saw us (a server-reflexive candidate, for free);
    *lifetime* is what the server granted, in seconds. *reservation_token* is set when the
    request had EVEN-PORT with R=1: give it to a second allocation for the port after this one.
    """

    relayed_address: Address
    mapped_address: Address | None
    lifetime: int
    reservation_token: bytes | None = None


@dataclass(frozen=True, slots=True)
class AllocationFailed(Event):
    """The allocation could not be made (or a stream connection broke before it was).

    *code* is the STUN error code when the server sent one (401 after credentials: wrong
    password; 486: quota; 508: no capacity ...), else None (timeout, protocol violation).
    """

    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class AlternateServer(Event):
    """The server answered 300 (Try Alternate, RFC 8489 §10): the engine now talks to *server*.

    Over UDP nothing else is needed: the next datagrams simply go to *server*. Over TCP/TLS the
    driver must open a new connection to *server* before it sends the next datagrams.
    The engine follows at most one redirection, so a loop of 300s cannot hold it forever.
    """

    server: Address


@dataclass(frozen=True, slots=True)
class AllocationRefreshed(Event):
    """A Refresh succeeded; the allocation now lives *lifetime* more seconds."""

    lifetime: int


@dataclass(frozen=True, slots=True)
class PermissionCreated(Event):
    """The server now relays traffic from/to the peer IP address *peer* (RFC 8656 §9)."""

    peer: str


@dataclass(frozen=True, slots=True)
class PermissionFailed(Event):
    """CreatePermission for *peer* failed (403 forbidden peer, timeout, ...); the data queued
    for it, or pipelined behind the request (which the server dropped), is counted in
    ``counters.dropped``. After a 403 the peer is not asked for again for
    :data:`~icerelay.turn.client.allocation.REFUSED_HOLD` seconds."""

    peer: str
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class ChannelBound(Event):
    """*channel* (0x4000-0x4FFF) now stands for *peer*; data goes as ChannelData (RFC 8656 §12)."""

    peer: Address
    channel: int


@dataclass(frozen=True, slots=True)
class ChannelBindFailed(Event):
    """ChannelBind for *peer* failed; data keeps flowing in Send/Data indications."""

    peer: Address
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """*peer* sent *data* to our relayed address (in a Data indication or ChannelData)."""

    peer: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class AllocationExpired(Event):
    """The allocation ended without us closing it: a Refresh failed (437, timeout) or its
    lifetime passed. Nothing more can be sent."""

    reason: str


@dataclass(frozen=True, slots=True)
class AllocationClosed(Event):
    """:meth:`Allocation.close` finished. This is always the last event.

    *confirmed* is True when the server answered the Refresh with LIFETIME 0 (or there was
    nothing to deallocate), False when we stopped waiting (timeout, connection lost): then the
    allocation lingers on the server until its lifetime ends.
    """

    confirmed: bool = True


@dataclass(slots=True)
class AllocationCounters:
    """Plain counters, read by drivers, tests and benchmarks. Never reset by the engine."""

    #: Requests put on the wire the first time and again (retransmissions, UDP only).
    requests_sent: int = 0
    retransmissions: int = 0
    #: 438 (Stale Nonce) answers, each retried with the new nonce (RFC 8489 §9.2.5).
    stale_nonces: int = 0
    send_indications_sent: int = 0
    channel_data_sent: int = 0
    data_indications_received: int = 0
    channel_data_received: int = 0
    #: Bytes of application data both ways, before TURN framing.
    bytes_sent: int = 0
    bytes_received: int = 0
    #: Input that could not be parsed (bad STUN, bad ChannelData, broken stream framing).
    malformed: int = 0
    #: Well-formed but ignored: responses with no matching transaction, datagrams from elsewhere,
    #: Data indications for peers without a permission, ChannelData on unknown channels.
    ignored: int = 0
    #: Responses whose MESSAGE-INTEGRITY did not verify (dropped, as RFC 8489 §9.2.5 says).
    integrity_failures: int = 0
    #: Application data dropped because a queue was full, its permission failed, or the
    #: server refused its peer (403) a moment ago.
    dropped: int = 0
