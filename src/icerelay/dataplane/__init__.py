"""Data planes: what actually moves RTP and RTCP between the two legs of a relayed stream.

Every data plane offers the same small interface, :class:`DataPlane`: install (or update) a
:class:`~icerelay.relay.forwarding.Forwarding`, remove it, read its counters
(:mod:`.interface`). The session engine
decides *what* to forward; a data plane only forwards, latches peer addresses and counts. This
keeps a kernel forwarder (nftables maps) a drop-in alternative to the userspace one.

- :mod:`.userspace` — asyncio sockets (uvloop when present), latching, RTCP mux demultiplexing,
  ICE-lite answers for ``ICE=force`` legs.
"""

from icerelay.dataplane.interface import DataPlane, PortUnavailable

__all__ = ["DataPlane", "PortUnavailable"]
