"""The seam between the ICE agent and whatever provides relayed candidates.

A *relayed candidate* (RFC 8445 section 5.1.1.2) is an address on a relay server (TURN, RFC 8656)
that forwards to and from the agent. The agent does not care how the relay is made: it needs an
object that allocates, says which address it got, carries checks and media to peers, and hands
back what peers sent. :class:`RelayProvider` is that interface; :class:`TurnRelay` implements it
with icerelay's TURN client engine (:class:`icerelay.turn.client.allocation.Allocation`).

All of a relay's traffic goes between one local socket (``base``) and the server (``server``).
Over TCP or TLS (RFC 8656 section 3.1) the traffic is a byte stream on one connection per relay;
the engine still names it by (``base``, ``server``, ``transport``), and the driver keeps the
connection that stands for that triple (see :class:`icerelay.ice.events.Datagram`).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from icerelay.errors import TurnError
from icerelay.ice.candidate import TransportAddress
from icerelay.stun import Address
from icerelay.turn.client import events as turn_events
from icerelay.turn.client.allocation import Allocation

RelayTransport = Literal["udp", "tcp", "tls"]


@dataclass(frozen=True)
class TurnServer:
    """A TURN server to allocate on (Asterisk's ``turnaddr``/``turnport``/``turnusername``...).

    ``transport`` is how the agent reaches the server (the relayed address is UDP whatever it is):
    TCP or TLS get through firewalls that block UDP.
    """

    address: TransportAddress
    username: str
    password: str
    transport: RelayTransport = "udp"


@dataclass(frozen=True)
class RelayAllocated:
    """The relay is ready: ``relayed`` is the relayed candidate; ``mapped`` the server-reflexive
    address the server saw, when it said (a free srflx candidate)."""

    relayed: TransportAddress
    mapped: TransportAddress | None


@dataclass(frozen=True)
class RelayFailed:
    """No relayed candidate will come from this relay (or the allocation ended)."""

    reason: str


@dataclass(frozen=True)
class RelayData:
    """``peer`` sent ``data`` to the relayed address."""

    peer: TransportAddress
    data: bytes


RelayEvent = RelayAllocated | RelayFailed | RelayData


class RelayProvider(Protocol):
    """What the ICE agent needs from a relay (a sans-I/O engine itself)."""

    @property
    def base(self) -> TransportAddress:
        """The local socket address that talks to the server."""
        ...

    @property
    def server(self) -> TransportAddress:
        """Where every datagram of this relay goes now (it may change: TURN 300 redirects)."""
        ...

    @property
    def transport(self) -> RelayTransport:
        """ "udp", or "tcp"/"tls" for a stream connection to the server."""
        ...

    def connection_lost(self, now: float) -> None:
        """The TCP/TLS connection to the server ended (or could not be made)."""
        ...

    def start(self, now: float) -> None: ...

    def receive(self, data: bytes, now: float) -> None:
        """A datagram from ``server`` arrived on ``base``."""
        ...

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Payloads to send from ``base`` to ``server``."""
        ...

    def next_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> RelayEvent | None: ...

    def send_to(self, data: bytes, peer: TransportAddress, now: float) -> None:
        """Relay ``data`` to ``peer`` (queued until the relay is ready)."""
        ...

    def permit(self, peers: list[TransportAddress], now: float) -> None:
        """Let ``peers`` reach the relayed address before we send to them (remote candidates)."""
        ...

    def prefer(self, peer: TransportAddress, now: float) -> None:
        """``peer`` is on the selected pair: make its path cheap (a TURN channel)."""
        ...

    def close(self, now: float) -> None: ...


class TurnRelay:
    """A :class:`RelayProvider` on a UDP TURN allocation made by icerelay's TURN client."""

    def __init__(
        self,
        server: TurnServer,
        base: TransportAddress,
        *,
        software: str | None,
        rng: random.Random | None = None,
        rto: float = 0.5,
        rc: int = 7,
    ) -> None:
        self._base = base
        self.allocation = Allocation(
            Address(*server.address),
            server.username,
            server.password,
            transport=server.transport,
            software=software,
            # ICE tries many remote candidates through the relay: a channel for each would waste
            # the server's channels. One channel, for the selected pair, is bound in prefer().
            channel_threshold=0,
            rto=rto,
            rc=rc,
            rng=rng if rng is not None else random.SystemRandom(),
        )
        self._events: deque[RelayEvent] = deque()
        self._failed = False

    @property
    def base(self) -> TransportAddress:
        return self._base

    @property
    def server(self) -> TransportAddress:
        server = self.allocation.server
        return (server.host, server.port)

    @property
    def transport(self) -> RelayTransport:
        return self.allocation.transport

    def connection_lost(self, now: float) -> None:
        self.allocation.connection_lost(now)
        self._drain()

    def start(self, now: float) -> None:
        self.allocation.start(now)

    def receive(self, data: bytes, now: float) -> None:
        self.allocation.receive(data, self.allocation.server, Address(*self._base), now)
        self._drain()

    def datagrams_to_send(self, now: float) -> list[bytes]:
        return [datagram.data for datagram in self.allocation.datagrams_to_send(now)]

    def next_timer(self) -> float | None:
        return self.allocation.next_timer()

    def handle_timer(self, now: float) -> None:
        self.allocation.handle_timer(now)
        self._drain()

    def next_event(self) -> RelayEvent | None:
        self._drain()
        return self._events.popleft() if self._events else None

    def send_to(self, data: bytes, peer: TransportAddress, now: float) -> None:
        if self._failed:
            return
        try:
            self.allocation.send_to(data, Address(*peer), now)
        except TurnError:
            # The allocation is closing or gone: the check or packet is lost, as on a dead link.
            return

    def permit(self, peers: list[TransportAddress], now: float) -> None:
        if self._failed:
            return
        try:
            self.allocation.create_permission([Address(*peer) for peer in peers], now)
        except TurnError:
            return

    def prefer(self, peer: TransportAddress, now: float) -> None:
        if self._failed or self.allocation.relayed_address is None:
            return
        try:
            self.allocation.bind_channel(Address(*peer), now)
        except TurnError:
            return

    def close(self, now: float) -> None:
        self.allocation.close(now)

    def _drain(self) -> None:
        while (event := self.allocation.next_event()) is not None:
            if isinstance(event, turn_events.AllocationSucceeded):
                mapped = event.mapped_address
                self._events.append(
                    RelayAllocated(
                        (event.relayed_address.host, event.relayed_address.port),
                        (mapped.host, mapped.port) if mapped is not None else None,
                    )
                )
            elif isinstance(event, turn_events.AllocationFailed | turn_events.AllocationExpired):
                self._failed = True
                self._events.append(RelayFailed(event.reason))
            elif isinstance(event, turn_events.DataReceived):
                self._events.append(RelayData((event.peer.host, event.peer.port), event.data))
