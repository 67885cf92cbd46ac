"""Channel bindings of one allocation (RFC 8656 §12).

A channel number (0x4000-0x4FFF) stands for one peer transport address, so data to and from it
travels as ChannelData with a 4-byte header instead of a Send or Data indication's 36 bytes. A
binding lasts 600 s unless refreshed. This table hands out numbers, counts packets to each peer
(a channel is bound once traffic has started), and says which bindings to refresh or forget.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from icerelay.stun import Address
from icerelay.stun.channeldata import CHANNEL_NUMBER_MAX, CHANNEL_NUMBER_MIN

#: RFC 8656 §12: a channel binding lives 600 s.
CHANNEL_LIFETIME = 600.0
CHANNEL_REFRESH = 540.0
#: The packet count of a peer whose ChannelBind failed: low enough never to reach a threshold
#: again, so that a refused binding is not asked for on every packet.
_NEVER = -(1 << 30)


@dataclass(slots=True)
class Channel:
    """One channel number and what we know of its binding."""

    peer: Address
    number: int
    bound: bool = False
    pending: bool = False
    bound_at: float = 0.0
    last_used: float = 0.0
    #: A refresh was refused: keep using the binding until it expires, don't ask again.
    refresh_failed: bool = False

    @property
    def deadline(self) -> float:
        """When the timer next needs to look at this binding."""
        if self.last_used > self.bound_at and not self.refresh_failed:
            return self.bound_at + CHANNEL_REFRESH
        return self.bound_at + CHANNEL_LIFETIME


class Channels:
    """The channels of one allocation, by peer and by number."""

    __slots__ = ("_by_number", "_by_peer", "_next", "_packets_to")

    def __init__(self) -> None:
        self._by_peer: dict[Address, Channel] = {}
        self._by_number: dict[int, Channel] = {}
        self._next = CHANNEL_NUMBER_MIN
        self._packets_to: dict[Address, int] = {}

    def for_peer(self, peer: Address) -> Channel | None:
        return self._by_peer.get(peer)

    def for_number(self, number: int) -> Channel | None:
        return self._by_number.get(number)

    def reserve(self, peer: Address, now: float) -> Channel | None:
        """A new number for *peer*, its binding pending; None when all 4096 are used (then
        Send indications, which always work, carry the data)."""
        if self._next > CHANNEL_NUMBER_MAX:
            return None
        # Numbers are never reused: RFC 8656 §12 forbids rebinding a number to another peer
        # until 5 minutes after its binding expired, and 4096 is plenty for one allocation.
        channel = Channel(peer, self._next, pending=True, last_used=now)
        self._next += 1
        self._by_peer[peer] = channel
        self._by_number[channel.number] = channel
        return channel

    def count_packet(self, peer: Address) -> int:
        """One more packet to *peer* in an indication; how many so far."""
        count = self._packets_to.get(peer, 0) + 1
        self._packets_to[peer] = count
        return count

    def earned(self, host: str, threshold: int) -> list[Address]:
        """Peers at IP *host* with *threshold* packets sent and no channel yet."""
        return [
            peer
            for peer, count in self._packets_to.items()
            if peer.host == host and count >= threshold and peer not in self._by_peer
        ]

    def confirm(self, channel: Channel, now: float) -> bool:
        """The server bound (or refreshed) *channel* at *now*; True when it is new."""
        first = not channel.bound
        channel.bound = True
        channel.pending = False
        channel.bound_at = now
        return first

    def failed(self, channel: Channel) -> bool:
        """The ChannelBind for *channel* failed; True when it was never bound (then it is given
        up: the number stays reserved, never reused, and the peer is not asked for again)."""
        channel.pending = False
        if channel.bound:
            channel.refresh_failed = True
            return False
        del self._by_peer[channel.peer]
        self._packets_to[channel.peer] = _NEVER
        return True

    def deadlines(self) -> Iterator[float]:
        for channel in self._by_peer.values():
            if channel.bound and not channel.pending:
                yield channel.deadline

    def due(self, now: float) -> list[Channel]:
        """Forget expired bindings; the ones in use that need a refresh now."""
        due: list[Channel] = []
        for peer, channel in list(self._by_peer.items()):
            if not channel.bound or channel.pending:
                continue
            if now >= channel.bound_at + CHANNEL_LIFETIME:
                del self._by_peer[peer]
                self._packets_to.pop(peer, None)
                continue
            if now >= channel.deadline and channel.last_used > channel.bound_at:
                due.append(channel)
        return due
