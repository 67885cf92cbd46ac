"""Data planes: what actually moves RTP and RTCP between the two legs of a relayed stream.

Every data plane offers the same small interface, :class:`DataPlane`: install (or update) a
:class:`~icerelay.relay.forwarding.Forwarding`, remove it, read its counters. The session engine
decides *what* to forward; a data plane only forwards, latches peer addresses and counts. This
keeps a kernel forwarder (nftables maps) a drop-in alternative to the userspace one.

- :mod:`.userspace` — asyncio sockets (uvloop when present), latching, RTCP mux demultiplexing,
  ICE-lite answers for ``ICE=force`` legs.
"""

from __future__ import annotations

from typing import Protocol

from icerelay.relay.forwarding import Forwarding, ForwardingCounters

__all__ = ["DataPlane"]


class DataPlane(Protocol):
    """The interface every forwarder implements."""

    async def install(self, forwarding: Forwarding) -> None:
        """Start forwarding, or update a forwarding with the same key in place (latched
        addresses and counters survive). Raises RelayError if a relay port cannot be bound."""

    async def remove(self, key: str) -> None:
        """Stop forwarding and close its ports; unknown keys are ignored."""

    def counters(self, key: str) -> ForwardingCounters | None:
        """A snapshot of the forwarding's counters, or None for an unknown key."""

    async def close(self) -> None:
        """Remove every forwarding."""
