"""What the TURN server engine hands its shell: datagrams to send, events, and the binder
interface through which it gets relayed sockets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from icerelay.turn.server.allocation import FiveTuple, HostPort

#: ``(data, source, destination, transport)``: send *data* from local address *source* to
#: *destination*; transport "udp", "tcp" or "tls". A plain tuple: this is the hot path.
Transmit = tuple[bytes, HostPort, HostPort, str]


class RelayBinder(Protocol):
    """What the shell provides so the engine can have relayed sockets."""

    def bind(self, address: HostPort, dont_fragment: bool) -> bool:
        """Open a UDP socket bound to *address*; False if the OS refuses (port taken)."""

    def release(self, address: HostPort) -> None:
        """Close the socket of *address* (the allocation or reservation ended)."""


@dataclass(frozen=True, slots=True)
class AllocationCreated:
    """An allocation was made (``relayed``: one address, or two for a dual allocation)."""

    five_tuple: FiveTuple
    username: str
    relayed: tuple[HostPort, ...]
    lifetime: int


@dataclass(frozen=True, slots=True)
class AllocationDeleted:
    """An allocation ended: ``reason`` is "refresh" (lifetime 0), "expired", "connection".

    The traffic figures make it an accounting record (what a CDR needs)."""

    five_tuple: FiveTuple
    username: str
    relayed: tuple[HostPort, ...]
    reason: str
    packets_to_peers: int
    packets_to_client: int
    bytes_to_peers: int = 0
    bytes_to_client: int = 0
    #: Seconds the allocation lived.
    duration: float = 0.0


@dataclass(frozen=True, slots=True)
class ChannelBound:
    """A successful ChannelBind (a new binding or a refresh, which also refreshes the
    permission): a shell with a kernel fast path may (re)install it there
    (:mod:`icerelay.dataplane.turn_offload`); others ignore it. It ends with its channel, its
    permission or its allocation, which the shell watches itself."""

    five_tuple: FiveTuple
    number: int
    peer: HostPort
    relay: HostPort


@dataclass(frozen=True, slots=True)
class Drained:
    """Drain mode is on and the last allocation has ended: the server may exit."""


Event = AllocationCreated | AllocationDeleted | ChannelBound | Drained
