"""The data-plane interface: what every forwarder (userspace, kernel) offers the relay daemon.

The relay engine decides *what* to forward and says so with
:class:`~icerelay.relay.forwarding.Forwarding` values; the latching policy
(:mod:`icerelay.relay.latching`) decides per packet; a data plane only moves bytes and reports
the policy's counters.
"""

from __future__ import annotations

from typing import Protocol

from icerelay.errors import RelayError
from icerelay.relay.forwarding import Forwarding, ForwardingCounters

__all__ = ["DataPlane", "PortUnavailable"]


class PortUnavailable(RelayError):
    """A data plane could not open a relay port (another program holds it).

    :attr:`port` is the RTP port of the leg (the even port of its pair), so the owner of the
    port pool can take that pair out of circulation.
    """

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


class DataPlane(Protocol):
    """The interface every forwarder implements."""

    async def start(self) -> None:
        """Prepare the plane (a kernel plane creates its table); before any install."""

    async def install(self, forwarding: Forwarding) -> None:
        """Start forwarding, or update a forwarding with the same key in place (latched
        addresses and counters survive). Raises RelayError if a relay port cannot be bound."""

    async def remove(self, key: str) -> None:
        """Stop forwarding and close its ports; unknown keys are ignored."""

    def counters(self, key: str) -> ForwardingCounters | None:
        """A snapshot of the forwarding's counters, or None for an unknown key."""

    async def close(self) -> None:
        """Remove every forwarding."""
