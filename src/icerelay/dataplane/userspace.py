"""The userspace forwarder: one UDP socket per relay port, packets moved in the event loop.

Per packet the work is: find the leg and component from the socket, ask the latching policy
(:func:`icerelay.relay.latching.decide`) what to do, and do it: ``sendto`` from the other leg's
socket (forward), from this one (an ICE-lite answer), or nothing (drop). Every rule -- latching,
strict source, handover, rtcp-mux demultiplexing, ICE-lite answers -- and every
count lives in the policy, which every data plane shares; this module only owns sockets. Nothing
is logged per packet.

Every relay port's socket is read through one :class:`~icerelay.aio.poller.DatagramPoller` per
plane (as the TURN server reads its relayed sockets): one epoll set that the event loop sees as a
single descriptor, read in rounds, each ready port read once per round (up to a budget when it
was ready in the round before too: a backlog), wake-ups coalesced under load. A busy relay thus
pays one wake-up per round for all its ports instead of one per port and batch, and no "nothing
to read" call per datagram. Packets are sent as soon as the policy has decided, with a plain
``sendto`` (no transport buffering: a packet the kernel cannot take now is dropped and counted,
as late media is useless anyway); the poller's flush, at the end of every round, only tells
``on_latch`` which forwardings' latches moved in it.

The time the policy sees comes from an injected ``clock`` (the event loop's ``time()`` unless
given), the same clock the relay engine's ``now`` uses, so counters' ``last_packet`` compare;
the poller reads it once per round.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from icerelay.aio.addresses import bound_socket
from icerelay.aio.poller import DatagramPoller
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
#: Told the key of a forwarding whose latches a round of packets moved.
LatchListener = Callable[[str], None]

#: Datagrams read from one relay port per round when it has a backlog (it was ready in the
#: round before too); otherwise one. A port carries one stream (50 packets/s of voice, a few
#: hundred of video): 8 per round and millisecond is far above any, and under overload every
#: port gets about the same turn (the TURN server's relayed sockets read as many).
PORT_BUDGET = 8
# RTP over UDP stays far below this; a larger datagram is truncated and forwarded as such.
_DATAGRAM = 4096


#: Datagrams a timed round must read for the relay to stay on the poller's timer: about 16,000
#: packets/s (320 streams at 50/s). Below that, waking per packet costs a few % of a CPU more
#: and saves about half a millisecond of median delay per packet (benchmarks/relay: p50 494 us
#: at 100 streams with the poller's default of 4, 27 us before coalescing).
COALESCE_WHILE = 16


class _Stream:
    """One installed forwarding: its latching state and the sockets of both legs, by side."""

    __slots__ = ("key", "sockets", "state")

    def __init__(self, forwarding: Forwarding) -> None:
        self.key = forwarding.key
        self.state = ForwardingState(forwarding)
        # Indexed [side][component]; the lists are updated in place, the ports keep them.
        self.sockets: tuple[_Sockets, _Sockets] = ([None, None], [None, None])


class _Port:
    """One relay port, the poller's tag for its socket: what the hot path needs to carry out
    the policy's verdicts, resolved once, here."""

    __slots__ = ("component", "key", "moved", "own_sockets", "peer_sockets", "state")

    def __init__(self, stream: _Stream, side: int, component: int, moved: set[str] | None) -> None:
        self.state: LegState = stream.state.legs[side]
        self.component = component
        self.key = stream.key
        self.own_sockets = stream.sockets[side]
        self.peer_sockets = stream.sockets[1 - side]
        #: Where a packet that moved a latch leaves its forwarding's key (None: nobody asks).
        self.moved = moved


def _on_datagram(data: bytes, source: Any, port: _Port, now: float) -> None:
    """The handler every relay port shares (no closure per socket): ask the policy, obey."""
    verdict = decide(port.state, port.component, data, source, now)
    kind = type(verdict)
    if kind is Forward:
        sock = port.peer_sockets[verdict.socket]  # type: ignore[union-attr]
        if sock is None:
            port.state.dropped += 1
        else:
            try:
                sock.sendto(data, verdict.destination)  # type: ignore[union-attr]
            except OSError:
                # A full send buffer or an unreachable party: the packet is lost, counted.
                port.state.dropped += 1
    elif kind is Answer:
        sock = port.own_sockets[verdict.socket]  # type: ignore[union-attr]
        if sock is not None:
            try:
                sock.sendto(verdict.data, verdict.destination)  # type: ignore[union-attr]
            except OSError:
                port.state.dropped += 1
    if verdict.moved and port.moved is not None:
        port.moved.add(port.key)


def _on_error(port: _Port, error: OSError) -> bool:
    # ICMP port unreachable from a party that hung up: nothing to do but keep the port.
    port.state.dropped += 1
    return True


class UserspaceDataPlane:
    """The asyncio forwarder (see the module docstring). Implements :class:`DataPlane`.

    :param clock: the time the latching policy sees (seconds); the running loop's ``time()``
        by default.
    :param on_latch: called with a forwarding's key at the end of a round of packets in which
        some moved one of its latches (the verdict's ``moved``): how a kernel plane learns that
        a stream can be offloaded or must be reprogrammed.
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
        #: Keys of forwardings whose latches moved in the current round (see _flush).
        self._moved: set[str] | None = set() if on_latch is not None else None
        self._poller: DatagramPoller[_Port] | None = None

    @property
    def forwarding_count(self) -> int:
        """Installed forwardings."""
        return len(self._streams)

    @property
    def poller(self) -> DatagramPoller[_Port] | None:
        """The reader of every relay port (None before the first install; for status, tests)."""
        return self._poller

    def state(self, key: str) -> ForwardingState | None:
        """The latching state of ``key`` (for a plane layered on this one), or None."""
        stream = self._streams.get(key)
        return stream.state if stream is not None else None

    async def start(self) -> None:
        """Start the reader; sockets are opened per forwarding (install starts it too)."""
        self._reader()

    async def install(self, forwarding: Forwarding) -> None:
        """Start forwarding, or update the forwarding with the same key in place."""
        stream = self._streams.get(forwarding.key)
        if stream is None:
            stream = _Stream(forwarding)
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
                self._close(stream, side)
                self._open(stream, side)

    async def remove(self, key: str) -> None:
        """Stop forwarding ``key`` and close its sockets."""
        stream = self._streams.pop(key, None)
        if stream is not None:
            for side in (0, 1):
                self._close(stream, side)

    def counters(self, key: str) -> ForwardingCounters | None:
        """A snapshot of the counters of ``key``."""
        stream = self._streams.get(key)
        return stream.state.counters() if stream is not None else None

    async def close(self) -> None:
        """Remove every forwarding and stop the reader."""
        for key in list(self._streams):
            await self.remove(key)
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.close()

    def _reader(self) -> DatagramPoller[_Port]:
        poller = self._poller
        if poller is None:
            loop = asyncio.get_running_loop()
            poller = DatagramPoller(
                loop,
                self._flush,
                size=_DATAGRAM,
                clock=self._clock,
                coalesce_while=COALESCE_WHILE,
            )
            poller.start()
            self._poller = poller
        return poller

    def _flush(self) -> None:
        """After every chunk and round of datagrams: tell who listens which latches moved."""
        moved = self._moved
        if moved and self._on_latch is not None:
            keys = list(moved)
            moved.clear()
            for key in keys:
                self._on_latch(key)

    def _open(self, stream: _Stream, side: int) -> None:
        poller = self._reader()
        local = stream.state.legs[side].leg.local
        sockets = stream.sockets[side]
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
            sockets[component] = sock
            poller.add(
                sock,
                _on_datagram,
                _Port(stream, side, component, self._moved),
                limit=PORT_BUDGET,
                on_error=_on_error,
            )

    def _close(self, stream: _Stream, side: int) -> None:
        # Closed synchronously: a removed forwarding's ports can be bound again straight away.
        # The poller is not told with epoll_ctl: these sockets are never duplicated (nothing
        # forks, and they are close-on-exec), so closing one takes it out of the epoll set;
        # that is one system call and one GIL hand-over less per port (see discard()).
        sockets = stream.sockets[side]
        poller = self._poller
        for component in (RTP, RTCP):
            sock = sockets[component]
            if sock is not None:
                sockets[component] = None
                if poller is not None:
                    poller.discard(sock)
                sock.close()
