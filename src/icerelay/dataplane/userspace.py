"""The userspace forwarder: one UDP socket per relay port, packets moved in the event loop.

Per packet the work is: find the leg and component from the socket, latch or check the source,
pick the destination (latched address, else the one from the SDP) and ``sendto`` from the other
leg's socket. Nothing is logged per packet; what happens is counted.

Latching (the relay learns where a party really is from the packets it sends, because the SDP
address is often a private one behind a NAT): the first RTP or RTCP packet on a leg latches its
source for that component. A later packet from another source is forwarded but does not move
the latch, unless the latched source has been silent for ``handover_after`` seconds (a phone that
changed network); with ``strict_source`` it is dropped instead. STUN packets never latch: ICE
connectivity checks arrive from every candidate of a party, not only from the one media will use.

On a leg with its own ICE credentials (``ICE=force``) the relay is an ICE-lite agent (RFC 8445
§2.5): it answers Binding requests itself and a nominating request (USE-CANDIDATE) latches.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from icerelay.aio.addresses import bound_socket
from icerelay.dataplane.interface import PortUnavailable
from icerelay.errors import StunError
from icerelay.relay.forwarding import (
    Forwarding,
    ForwardingCounters,
    Leg,
    LegCounters,
)
from icerelay.stun import (
    Address,
    AttributeType,
    MessageClass,
    Method,
    decode_message,
    is_stun,
)
from icerelay.stun.credentials import short_term_key
from icerelay.stun.message import Message

__all__ = ["UserspaceDataPlane"]


RTP, RTCP = 0, 1
_Sockaddr = tuple[str, int]


@dataclass(slots=True)
class _LegState:
    """Mutable per-leg state: the description, sockets, latches and counters."""

    leg: Leg
    transports: list[asyncio.DatagramTransport | None] = field(default_factory=lambda: [None, None])
    sockets: list[_Socket | None] = field(default_factory=lambda: [None, None])
    latched: list[_Sockaddr | None] = field(default_factory=lambda: [None, None])
    # When the latched source of each component last sent something (for handover).
    latched_seen: list[float] = field(default_factory=lambda: [0.0, 0.0])
    # Whether each latch came from media (final) or only from ICE checks (provisional).
    media_latched: list[bool] = field(default_factory=lambda: [False, False])
    packets: int = 0
    bytes: int = 0
    rtcp_packets: int = 0
    dropped: int = 0
    stun_requests: int = 0
    stun_nominations: int = 0
    last_packet: float | None = None

    def destination(self, component: int) -> _Sockaddr | None:
        """Where a packet of ``component`` for this party goes."""
        leg = self.leg
        if leg.rtcp_mux:
            component = RTP
        latched = self.latched[component]
        if latched is not None:
            return latched
        peer = leg.rtp_peer if component == RTP else leg.rtcp_peer
        return (peer.host, peer.port) if peer is not None else None

    def counters(self) -> LegCounters:
        rtp, rtcp = self.latched
        return LegCounters(
            packets=self.packets,
            bytes=self.bytes,
            rtcp_packets=self.rtcp_packets,
            dropped=self.dropped,
            stun_requests=self.stun_requests,
            stun_nominations=self.stun_nominations,
            last_packet=self.last_packet,
            latched_rtp=Address(rtp[0], rtp[1]) if rtp else None,
            latched_rtcp=Address(rtcp[0], rtcp[1]) if rtcp else None,
        )


class _Stream:
    """One installed forwarding: two legs and the rules that join them."""

    __slots__ = ("forwarding", "legs", "local", "loop")

    def __init__(self, forwarding: Forwarding, loop: asyncio.AbstractEventLoop) -> None:
        self.forwarding = forwarding
        self.legs = (_LegState(forwarding.a), _LegState(forwarding.b))
        self.loop = loop
        self.local: frozenset[_Sockaddr] = frozenset()
        self.update_local()

    def update_local(self) -> None:
        """Remember the stream's own sockets, to refuse packets the relay sent to itself."""
        own = set()
        for state in self.legs:
            address = state.leg.local
            own.add((address.host, address.port))
            own.add((address.host, address.port + 1))
        self.local = frozenset(own)

    def received(self, side: int, component: int, data: bytes, source: _Sockaddr) -> None:
        """The hot path: one datagram arrived on ``side``'s socket for ``component``."""
        state = self.legs[side]
        if source in self.local:
            # The relay talking to itself (a party named a relay port as its own address):
            # forwarding it would start a loop.
            state.dropped += 1
            return
        now = self.loop.time()
        first = data[0] if data else 0
        if first < 4 and is_stun(data):
            self._stun(state, side, component, data, source, now)
            return
        if component == RTP and state.leg.rtcp_mux and len(data) > 1 and 192 <= data[1] <= 223:
            # RFC 5761 §4: on a multiplexed port, packet types 192..223 are RTCP.
            component = RTCP
        latched = state.latched[component]
        if latched is None or (latched != source and not state.media_latched[component]):
            # The first media packet decides, also over a latch learnt from ICE checks.
            state.latched[component] = source
        elif latched != source:
            forwarding = self.forwarding
            handover = forwarding.handover_after
            if handover is not None and now - state.latched_seen[component] >= handover:
                state.latched[component] = source
            elif forwarding.strict_source:
                state.dropped += 1
                return
        if state.latched[component] == source:
            state.latched_seen[component] = now
            state.media_latched[component] = True
        state.last_packet = now
        if component == RTCP:
            state.rtcp_packets += 1
        else:
            state.packets += 1
            state.bytes += len(data)
        self._forward(side, component, data, state)

    def _forward(self, side: int, component: int, data: bytes, state: _LegState) -> None:
        other = self.legs[1 - side]
        destination = other.destination(component)
        socket_index = RTP if other.leg.rtcp_mux else component
        transport = other.transports[socket_index]
        if destination is None or transport is None:
            state.dropped += 1
            return
        transport.sendto(data, destination)

    def _stun(
        self,
        state: _LegState,
        side: int,
        component: int,
        data: bytes,
        source: _Sockaddr,
        now: float,
    ) -> None:
        try:
            message = decode_message(data)
        except StunError:
            state.dropped += 1
            return
        is_request = (
            message.method == Method.BINDING and message.message_class == MessageClass.REQUEST
        )
        nominating = is_request and message.has(AttributeType.USE_CANDIDATE)
        if is_request:
            state.stun_requests += 1
            if nominating:
                state.stun_nominations += 1
        credentials = state.leg.ice_credentials
        if credentials is None:
            # ICE runs end to end through the relay: pass the check (or its answer) along. A
            # party behind a NAT is reachable only where its checks come from, so they latch
            # provisionally (the first check, then a nominating one) until media arrives; the
            # answers to its checks could not reach it otherwise.
            provisional = is_request and not state.media_latched[component]
            if provisional and (state.latched[component] is None or nominating):
                state.latched[component] = source
                state.latched_seen[component] = now
            self._forward(side, component, data, state)
            return
        if not is_request:
            return
        username = message.get(AttributeType.USERNAME) or ""
        key = short_term_key(credentials.pwd)
        if not username.startswith(credentials.ufrag + ":") or not message.check_integrity(key):
            # RFC 8445 §7.3: a check with wrong credentials gets no answer from us here (a 401
            # would tell an attacker the ufrag is right); it is only counted.
            state.dropped += 1
            return
        if nominating:
            state.latched[component] = source
            state.latched_seen[component] = now
        response = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, message.transaction_id)
        response.add(AttributeType.XOR_MAPPED_ADDRESS, Address(source[0], source[1]))
        reply = response.encode(integrity_key=key, fingerprint=True)
        transport = state.transports[RTP if state.leg.rtcp_mux else component]
        if transport is not None:
            transport.sendto(reply, source)


class _Socket(asyncio.DatagramProtocol):
    """Delivers one relay socket's datagrams to its stream, tagged with leg and component."""

    __slots__ = ("closed", "component", "side", "stream", "transport")

    def __init__(self, stream: _Stream, side: int, component: int) -> None:
        self.stream = stream
        self.side = side
        self.component = component
        self.transport: asyncio.DatagramTransport | None = None
        # Resolved once the socket is really closed (the transport closes it a loop turn after
        # close()), so that a removed forwarding's ports can be bound again straight away.
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        # IPv6 sockets report (host, port, flowinfo, scope_id); latching compares (host, port).
        source = cast(_Sockaddr, addr[:2]) if len(addr) > 2 else cast(_Sockaddr, addr)
        self.stream.received(self.side, self.component, data, source)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a party that hung up: nothing to do but keep the port.
        self.stream.legs[self.side].dropped += 1


class UserspaceDataPlane:
    """The asyncio forwarder (see the module docstring). Implements :class:`DataPlane`."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}

    @property
    def forwarding_count(self) -> int:
        """Installed forwardings."""
        return len(self._streams)

    async def install(self, forwarding: Forwarding) -> None:
        """Start forwarding, or update the forwarding with the same key in place."""
        stream = self._streams.get(forwarding.key)
        if stream is None:
            stream = _Stream(forwarding, asyncio.get_running_loop())
            self._streams[forwarding.key] = stream
            try:
                for side in (0, 1):
                    await self._open(stream, side)
            except BaseException:
                await self.remove(forwarding.key)
                raise
            return
        stream.forwarding = forwarding
        previous_legs = [state.leg for state in stream.legs]
        for state, leg in zip(stream.legs, (forwarding.a, forwarding.b), strict=True):
            state.leg = leg
        stream.update_local()
        for side, leg in enumerate((forwarding.a, forwarding.b)):
            state = stream.legs[side]
            previous = previous_legs[side]
            if leg.local != previous.local:
                await _close(state)
                state.latched = [None, None]
                state.media_latched = [False, False]
                await self._open(stream, side)
            elif (leg.rtp_peer, leg.rtcp_peer) != (previous.rtp_peer, previous.rtcp_peer):
                # New SDP addresses (a re-INVITE moved the party): learn the source afresh.
                state.latched = [None, None]
                state.media_latched = [False, False]

    async def remove(self, key: str) -> None:
        """Stop forwarding ``key`` and close its sockets."""
        stream = self._streams.pop(key, None)
        if stream is not None:
            for state in stream.legs:
                await _close(state)

    def counters(self, key: str) -> ForwardingCounters | None:
        """A snapshot of the counters of ``key``."""
        stream = self._streams.get(key)
        if stream is None:
            return None
        return ForwardingCounters(stream.legs[0].counters(), stream.legs[1].counters())

    async def close(self) -> None:
        """Remove every forwarding."""
        for key in list(self._streams):
            await self.remove(key)

    async def _open(self, stream: _Stream, side: int) -> None:
        loop = asyncio.get_running_loop()
        state = stream.legs[side]
        local = state.leg.local
        # Both ports are bound even when the party multiplexes: the pair is the relay's either
        # way, and the far party may not multiplex.
        for component, port in ((RTP, local.port), (RTCP, local.port + 1)):
            address = Address(local.host, port)
            try:
                sock = bound_socket(address, socket.SOCK_DGRAM)
            except OSError as error:
                raise PortUnavailable(
                    f"cannot bind relay port {address}: {error.strerror}", local.port
                ) from None
            protocol = _Socket(stream, side, component)
            state.sockets[component] = protocol
            try:
                await loop.create_datagram_endpoint(_factory(protocol), sock=sock)
            except BaseException:
                sock.close()
                state.sockets[component] = None
                raise
            state.transports[component] = protocol.transport


def _factory(protocol: _Socket) -> Callable[[], _Socket]:
    return lambda: protocol


async def _close(state: _LegState) -> None:
    waiting = []
    for index, transport in enumerate(state.transports):
        if transport is not None:
            transport.close()
            state.transports[index] = None
        protocol = state.sockets[index]
        if protocol is not None:
            waiting.append(protocol.closed)
            state.sockets[index] = None
    if waiting:
        await asyncio.gather(*waiting)
