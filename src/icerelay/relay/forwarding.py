"""What the session engine asks a data plane to do, and what a data plane reports back.

These values are the relay engine's vocabulary (its events carry them); the interface a data
plane implements is :class:`icerelay.dataplane.interface.DataPlane`.

A :class:`Forwarding` joins the two :class:`Leg` s of one media stream: packets a party sends to
its leg's relay port leave through the other leg's port towards the other party. These are plain
values, so the same engine drives the userspace forwarder, a kernel forwarder or a test double.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from icerelay.sdp import IceCredentials
from icerelay.stun import Address

__all__ = ["Forwarding", "ForwardingCounters", "Leg", "LegCounters"]


@dataclass(frozen=True, slots=True)
class Leg:
    """One party's side of a relayed stream.

    :attr:`local` is the relay's RTP socket this party sends to; its RTCP socket is the next
    port. :attr:`rtp_peer` and :attr:`rtcp_peer` are where media for this party goes until
    latching learns the party's real source (None: unknown or on hold, nothing is sent until a
    packet arrives). :attr:`rtcp_mux`: the party sends and expects RTCP on the RTP port.
    :attr:`ice_credentials`: the relay answers ICE connectivity checks on this leg itself
    (``ICE=force``, ICE-lite towards the party) instead of forwarding them.

    What the latching policy needs to tell the party from a stranger (see
    :mod:`icerelay.relay.latching`): :attr:`payload_types`, the RTP payload types on the
    ``m=`` line of this party's SDP (None: unknown, as with MediaProxy's protocol);
    :attr:`opaque`, the stream is not RTP (T.38 over UDPTL, ...), so its packets cannot be
    validated; :attr:`sdp_ice`, the ``a=ice-ufrag``/``a=ice-pwd`` of this party's own SDP,
    which with the other leg's verify the ICE checks crossing the relay (not the relay's own
    :attr:`ice_credentials`); :attr:`dtls`, this party's SDP keys SRTP with DTLS
    (``UDP/TLS/RTP/SAVP(F)``, RFC 5764 §8), so its DTLS handshake may latch a leg that has
    nothing better. The address signalling announced for the party is
    :attr:`rtp_peer`/:attr:`rtcp_peer`: a packet from it may take the latch over when it is a
    globally routable address.
    """

    local: Address
    rtp_peer: Address | None = None
    rtcp_peer: Address | None = None
    rtcp_mux: bool = False
    ice_credentials: IceCredentials | None = None
    payload_types: frozenset[int] | None = None
    opaque: bool = False
    sdp_ice: IceCredentials | None = None
    dtls: bool = False

    @property
    def local_rtcp(self) -> Address:
        """The relay's RTCP socket for this party (the RTP one when the party multiplexes)."""
        if self.rtcp_mux:
            return self.local
        return Address(self.local.host, self.local.port + 1)


@dataclass(frozen=True, slots=True)
class Forwarding:
    """Relay one stream between leg :attr:`a` (the caller's side) and leg :attr:`b`.

    :param key: stable identifier; installing a forwarding with a known key updates it in place
        (sockets and latched addresses are kept).
    :param strict_source: once a leg has latched, drop packets from any other source.
    :param handover_after: how long the latched source must have been silent before another
        source continuing its RTP stream (same SSRC, plausible sequence number) takes the leg
        over, as after a NAT rebinding; it keeps two sources that send the same stream at once
        from taking turns. Silence alone never hands a leg over. None or 0: no wait.
    """

    key: str
    a: Leg
    b: Leg
    strict_source: bool = False
    handover_after: float | None = 0.5


@dataclass(slots=True)
class LegCounters:
    """What arrived from one party (on its leg), and where it came from."""

    packets: int = 0
    bytes: int = 0
    rtcp_packets: int = 0
    #: Packets dropped: from a foreign source under strict-source, or with nowhere to go.
    dropped: int = 0
    #: Refusals by reason (:class:`~icerelay.relay.latching.DropReason` values and
    #: ``handover-refused``): packets dropped, and packets from another source that were not
    #: allowed to move the latch.
    refusals: dict[str, int] = field(default_factory=dict)
    #: STUN Binding requests seen (ICE connectivity checks) and those with USE-CANDIDATE.
    stun_requests: int = 0
    stun_nominations: int = 0
    #: ICE checks (Binding requests and responses) from this party whose MESSAGE-INTEGRITY
    #: verified with the credentials of the two SDPs, and when the last one and the last
    #: authenticated USE-CANDIDATE request arrived: what the relay itself saw of ICE, for the
    #: step-aside decision (a stranger's packets cannot move these).
    checks_authenticated: int = 0
    last_check: float | None = None
    last_nomination: float | None = None
    #: Time of the last RTP/RTCP packet relayed from this party (not STUN), or None.
    last_media: float | None = None
    #: Time (the data plane's clock, same as the engine's ``now``) of the last packet, or None.
    last_packet: float | None = None
    latched_rtp: Address | None = None
    latched_rtcp: Address | None = None


@dataclass(slots=True)
class ForwardingCounters:
    """Counters of both legs of one forwarding."""

    a: LegCounters = field(default_factory=LegCounters)
    b: LegCounters = field(default_factory=LegCounters)

    @property
    def last_packet(self) -> float | None:
        """The most recent packet in either direction, or None if nothing arrived yet."""
        a, b = self.a.last_packet, self.b.last_packet
        if a is None or b is None:
            return b if a is None else a
        return a if a >= b else b
