"""The userspace forwarder: one UDP socket per relay port, packets moved in the event loop.

Per packet the work is: find the leg and component from the socket, ask the latching policy
(:func:`icerelay.relay.latching.decide`) what to do, and do it: ``sendto`` from the other leg's
socket (forward), from this one (an ICE-lite answer), or nothing (drop). Every rule -- latching,
strict source, handover, rtcp-mux demultiplexing, ICE-lite answers -- and every
count lives in the policy, which every data plane shares; this module only owns sockets. Nothing
is logged per packet.

Sockets are read in batches (:class:`~icerelay.aio.batch.BatchReader`, as the TURN server does):
one readiness callback reads every queued datagram of a port (up to a budget) and the policy's
clock is read once per batch, so a busy relay pays one event-loop wake-up per batch instead of
one protocol callback per packet, and sends with a plain ``sendto`` (no transport buffering: a
packet the kernel cannot take now is dropped and counted, as late media is useless anyway).

The time the policy sees comes from an injected ``clock`` (the event loop's ``time()`` unless
given), the same clock the relay engine's ``now`` uses, so counters' ``last_packet`` compare.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from icerelay.aio.addresses import bound_socket
from icerelay.aio.batch import BatchReader, Received
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

_Sockets = list[socket.socket | None]
_Readers = list["BatchReader[_Port] | None"]
#: Told the key of a forwarding whose latches a batch of packets moved.
LatchListener = Callable[[str], None]

# Datagrams read per socket and wake-up: enough to drain a burst in one go, small enough that
# thousands of ready sockets share the loop fairly (the reader is level-triggered).
_READ_LIMIT = 32
# RTP over UDP stays far below this; a larger datagram is truncated and forwarded as such.
_DATAGRAM = 4096


class _Stream:
    """One installed forwarding: its latching state and the sockets of both legs, by side."""

    __slots__ = ("clock", "key", "readers", "sockets", "state")

    def __init__(self, forwarding: Forwarding, clock: Callable[[], float]) -> None:
        self.key = forwarding.key
        self.state = ForwardingState(forwarding)
        self.clock = clock
        # Indexed [side][component]; the lists are updated in place, the ports keep them.
        self.sockets: tuple[_Sockets, _Sockets] = ([None, None], [None, None])
        self.readers: tuple[_Readers, _Readers] = ([None, None], [None, None])


class _Port:
    """One relay port: hands each datagram of a batch to the policy and carries out the
    verdict. What the hot path needs is resolved once, here."""

    __slots__ = ("clock", "component", "key", "on_latch", "own_sockets", "peer_sockets", "state")

    def __init__(
        self, stream: _Stream, side: int, component: int, on_latch: LatchListener | None
    ) -> None:
        self.state: LegState = stream.state.legs[side]
        self.component = component
        self.clock = stream.clock
        self.key = stream.key
        self.own_sockets = stream.sockets[side]
        self.peer_sockets = stream.sockets[1 - side]
        self.on_latch = on_latch


def _on_batch(port: _Port, batch: list[Received]) -> None:
    """The batch handler every relay port's reader shares (no closure per socket)."""
    state = port.state
    component = port.component
    now = port.clock()
    moved = False
    for data, addr in batch:
        # IPv6 sockets report (host, port, flowinfo, scope_id); latching compares (host, port).
        source = addr if len(addr) == 2 else addr[:2]
        verdict = decide(state, component, data, source, now)
        kind = type(verdict)
        if kind is Forward:
            sock = port.peer_sockets[verdict.socket]  # type: ignore[union-attr]
            if sock is None:
                state.dropped += 1
            else:
                try:
                    sock.sendto(data, verdict.destination)  # type: ignore[union-attr]
                except OSError:
                    # A full send buffer or an unreachable party: the packet is lost, counted.
                    state.dropped += 1
        elif kind is Answer:
            sock = port.own_sockets[verdict.socket]  # type: ignore[union-attr]
            if sock is not None:
                try:
                    sock.sendto(verdict.data, verdict.destination)  # type: ignore[union-attr]
                except OSError:
                    state.dropped += 1
        if verdict.moved:
            moved = True
    if moved and port.on_latch is not None:
        # Latches changed: a kernel plane reprograms this stream (rare, not per packet).
        port.on_latch(port.key)


def _on_error(port: _Port, error: OSError) -> bool:
    # ICMP port unreachable from a party that hung up: nothing to do but keep the port.
    port.state.dropped += 1
    return True


class UserspaceDataPlane:
    """The asyncio forwarder (see the module docstring). Implements :class:`DataPlane`.

    :param clock: the time the latching policy sees (seconds); the running loop's ``time()``
        by default.
    :param on_latch: called with a forwarding's key after a batch of its packets moved a latch
        (the verdict's ``moved``): how a kernel plane learns that a stream can be offloaded or
        must be reprogrammed.
    """

    def __init__(
        self,
        clock: Callable[[], float] | None = None,
        *,
        on_latch: LatchListener | None = None,
    ) -> None:
        self._streams: dict[str, _Stream] = {}
        self._clock = clock
        self._on_latch = on_latch

    @property
    def forwarding_count(self) -> int:
        """Installed forwardings."""
        return len(self._streams)

    def state(self, key: str) -> ForwardingState | None:
        """The latching state of ``key`` (for a plane layered on this one), or None."""
        stream = self._streams.get(key)
        return stream.state if stream is not None else None

    async def start(self) -> None:
        """Nothing to prepare: sockets are opened per forwarding."""

    async def install(self, forwarding: Forwarding) -> None:
        """Start forwarding, or update the forwarding with the same key in place."""
        stream = self._streams.get(forwarding.key)
        if stream is None:
            clock = self._clock or asyncio.get_running_loop().time
            stream = _Stream(forwarding, clock)
            self._streams[forwarding.key] = stream
            try:
                for side in (0, 1):
                    self._open(stream, side)
            except BaseException:
                await self.remove(forwarding.key)
                raise
            return
        previous = [state.leg.local for state in stream.state.legs]
        # The policy forgets the latches of a leg whose port or SDP addresses changed.
        stream.state.update(forwarding)
        for side, state in enumerate(stream.state.legs):
            if state.leg.local != previous[side]:
                _close(stream, side)
                self._open(stream, side)

    async def remove(self, key: str) -> None:
        """Stop forwarding ``key`` and close its sockets."""
        stream = self._streams.pop(key, None)
        if stream is not None:
            for side in (0, 1):
                _close(stream, side)

    def counters(self, key: str) -> ForwardingCounters | None:
        """A snapshot of the counters of ``key``."""
        stream = self._streams.get(key)
        return stream.state.counters() if stream is not None else None

    async def close(self) -> None:
        """Remove every forwarding."""
        for key in list(self._streams):
            await self.remove(key)

    def _open(self, stream: _Stream, side: int) -> None:
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
            stream.sockets[side][component] = sock
            reader = BatchReader(
                loop,
                sock,
                _on_batch,
                _Port(stream, side, component, self._on_latch),
                limit=_READ_LIMIT,
                chunk=_READ_LIMIT,
                size=_DATAGRAM,
                on_error=_on_error,
            )
            stream.readers[side][component] = reader
            reader.start()


def _close(stream: _Stream, side: int) -> None:
    # Closed synchronously: a removed forwarding's ports can be bound again straight away.
    readers, sockets = stream.readers[side], stream.sockets[side]
    for component in (RTP, RTCP):
        reader = readers[component]
        if reader is not None:
            reader.close()
            readers[component] = None
        sock = sockets[component]
        if sock is not None:
            sock.close()
            sockets[component] = None
