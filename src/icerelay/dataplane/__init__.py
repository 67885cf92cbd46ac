"""Data planes: what actually moves RTP and RTCP between the two legs of a relayed stream.

Every data plane offers the same small interface, :class:`DataPlane`: install (or update) a
:class:`~icerelay.relay.forwarding.Forwarding`, remove it, read its counters
(:mod:`.interface`). The session engine
decides *what* to forward; the latching policy (:mod:`icerelay.relay.latching`) decides, per
packet, where it goes or why not; a data plane only moves bytes as told. This keeps a kernel
forwarder (nftables maps) a drop-in alternative to the userspace one.

- :mod:`.userspace` — UDP sockets read through one epoll set in the event loop (uvloop when
  present) that ask the policy about every packet (latching, RTCP mux demultiplexing,
  ICE-lite answers for ``ICE=force`` legs).
"""

from icerelay.dataplane.interface import DataPlane, PortUnavailable

__all__ = ["DataPlane", "PortUnavailable"]
