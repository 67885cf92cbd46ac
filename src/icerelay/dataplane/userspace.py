"""The userspace forwarder: one UDP socket per relay port, packets moved in the event loop.

Per packet the work is: find the leg and component from the socket, ask the latching policy
(:func:`icerelay.relay.latching.decide`) what to do, and do it: ``sendto`` from the other leg's
socket (forward), from this one (an ICE-lite answer), or nothing (drop). Every rule -- latching,
strict source, handover, rtcp-mux demultiplexing, ICE-lite answers -- and every
count lives in the policy, which every data plane shares; this module only owns sockets. Nothing
is logged per packet.

The time the policy sees comes from an injected ``clock`` (the event loop's ``time()`` unless
given), the same clock the relay engine's ``now`` uses, so counters' ``last_packet`` compare.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, cast

from icerelay.aio.addresses import bound_socket
from icerelay.dataplane.interface import PortUnavailable
from icerelay.relay.forwarding import Forwarding, ForwardingCounters
from icerelay.relay.latching import (
    RTCP,
    RTP,
    Answer,
    Forward,
    ForwardingState,
    LegState,
    decide,
)
from icerelay.stun import Address

__all__ = ["UserspaceDataPlane"]

_Transports = list[asyncio.DatagramTransport | None]


class _Stream:
    """One installed forwarding: its latching state and the sockets of both legs, by side."""

    __slots__ = ("clock", "sockets", "state", "transports")

    def __init__(self, forwarding: Forwarding, clock: Callable[[], float]) -> None:
        self.state = ForwardingState(forwarding)
        self.clock = clock
        # Indexed [side][component]; the lists are updated in place, the sockets keep them.
        self.transports: tuple[_Transports, _Transports] = ([None, None], [None, None])
        self.sockets: tuple[list[_Socket | None], list[_Socket | None]] = (
            [None, None],
            [None, None],
        )


class _Socket(asyncio.DatagramProtocol):
    """One relay socket: hands each datagram to the policy and carries out the verdict."""

    __slots__ = (
        "clock",
        "closed",
        "component",
        "own_transports",
        "peer_transports",
        "state",
        "transport",
    )

    def __init__(self, stream: _Stream, side: int, component: int) -> None:
        # What the hot path needs, resolved once.
        self.state: LegState = stream.state.legs[side]
        self.component = component
        self.clock = stream.clock
        self.own_transports = stream.transports[side]
        self.peer_transports = stream.transports[1 - side]
        self.transport: asyncio.DatagramTransport | None = None
        # Resolved once the socket is really closed (the transport closes it a loop turn after
        # close()), so that a removed forwarding's ports can be bound again straight away.
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[Any, int]) -> None:
        # IPv6 sockets report (host, port, flowinfo, scope_id); latching compares (host, port).
        source = addr if len(addr) == 2 else addr[:2]
        state = self.state
        verdict = decide(state, self.component, data, source, self.clock())
        if type(verdict) is Forward:
            transport = self.peer_transports[verdict.socket]
            if transport is None:
                state.dropped += 1
                return
            transport.sendto(data, verdict.destination)
        elif type(verdict) is Answer:
            transport = self.own_transports[verdict.socket]
            if transport is not None:
                transport.sendto(verdict.data, verdict.destination)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a party that hung up: nothing to do but keep the port.
        self.state.dropped += 1


class UserspaceDataPlane:
    """The asyncio forwarder (see the module docstring). Implements :class:`DataPlane`.

    :param clock: the time the latching policy sees (seconds); the running loop's ``time()``
        by default.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._streams: dict[str, _Stream] = {}
        self._clock = clock

    @property
    def forwarding_count(self) -> int:
        """Installed forwardings."""
        return len(self._streams)

    async def install(self, forwarding: Forwarding) -> None:
        """Start forwarding, or update the forwarding with the same key in place."""
        stream = self._streams.get(forwarding.key)
        if stream is None:
            clock = self._clock or asyncio.get_running_loop().time
            stream = _Stream(forwarding, clock)
            self._streams[forwarding.key] = stream
            try:
                for side in (0, 1):
                    await self._open(stream, side)
            except BaseException:
                await self.remove(forwarding.key)
                raise
            return
        previous = [state.leg.local for state in stream.state.legs]
        # The policy forgets the latches of a leg whose port or SDP addresses changed.
        stream.state.update(forwarding)
        for side, state in enumerate(stream.state.legs):
            if state.leg.local != previous[side]:
                await _close(stream, side)
                await self._open(stream, side)

    async def remove(self, key: str) -> None:
        """Stop forwarding ``key`` and close its sockets."""
        stream = self._streams.pop(key, None)
        if stream is not None:
            for side in (0, 1):
                await _close(stream, side)

    def counters(self, key: str) -> ForwardingCounters | None:
        """A snapshot of the counters of ``key``."""
        stream = self._streams.get(key)
        return stream.state.counters() if stream is not None else None

    async def close(self) -> None:
        """Remove every forwarding."""
        for key in list(self._streams):
            await self.remove(key)

    async def _open(self, stream: _Stream, side: int) -> None:
        loop = asyncio.get_running_loop()
        local = stream.state.legs[side].leg.local
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
            stream.sockets[side][component] = protocol
            try:
                await loop.create_datagram_endpoint(_factory(protocol), sock=sock)
            except BaseException:
                sock.close()
                stream.sockets[side][component] = None
                raise
            stream.transports[side][component] = protocol.transport


def _factory(protocol: _Socket) -> Callable[[], _Socket]:
    return lambda: protocol


async def _close(stream: _Stream, side: int) -> None:
    transports, sockets = stream.transports[side], stream.sockets[side]
    waiting = []
    for component, transport in enumerate(transports):
        if transport is not None:
            transport.close()
            transports[component] = None
        protocol = sockets[component]
        if protocol is not None:
            waiting.append(protocol.closed)
            sockets[component] = None
    if waiting:
        await asyncio.gather(*waiting)
