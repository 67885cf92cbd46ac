"""The relay's settings (:class:`RelayConfig`) and the per-request knobs (:class:`RelayOptions`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from icerelay.errors import RelayError
from icerelay.relay.policy import IceMode, IcePriority

__all__ = ["RelayConfig", "RelayOptions"]


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Engine settings (the relay's addresses and timeouts).

    :param addresses: local address to bind per IP family (4, 6).
    :param advertised: address written into SDP per family when it differs from the local one
        (a relay behind a 1:1 NAT); defaults to :attr:`addresses`.
    """

    addresses: dict[int, str] = field(default_factory=lambda: {4: "127.0.0.1"})
    advertised: dict[int, str] = field(default_factory=dict)
    media_timeout: float = 60.0
    hold_timeout: float = 3600.0
    offer_timeout: float = 300.0
    max_duration: float | None = 86400.0
    delete_delay: float = 30.0
    ice_priority: IcePriority = IcePriority.LOW
    strict_source: bool = False
    #: Seconds the latched source must be silent before a source continuing its RTP stream
    #: takes over (see :class:`~.forwarding.Forwarding`); None: no wait.
    handover_after: float | None = 0.5
    #: Default for requests that say neither trust-address nor SIP-source-address (rtpengine's
    #: ``--sip-source``): send media to where the signalling came from.
    sip_source: bool = False
    #: Sessions (call legs: a forked call has one per branch) in progress at once; an offer
    #: that would open one more is refused (RelayError, counter ``too_many_sessions``). Ports
    #: bound the sessions that carry media, not those whose streams are all rejected (port 0),
    #: nor the branches of one call. None: no limit.
    max_sessions: int | None = None

    # Step-aside (:mod:`.stepaside`): seconds the relay pair must stay unused after ICE checks
    # crossed the relay before the relay frees the stream; and how long freed ports of such a
    # stream stay out of the pool (late checks and packets of that call reach no other call;
    # STUN retransmissions last up to 39.5 s, RFC 8489 §6.2.1).
    ice_settle: float = 3.0
    #: The window instead while only one of a two-component stream's relay ports heard
    #: anything (ICE may still be checking the other component, :mod:`.stepaside`).
    ice_checking_wait: float = 10.0
    port_quarantine: float = 60.0

    def advertised_address(self, family: int) -> str:
        """The address the SDP names for ``family``; RelayError if the relay has none."""
        if family not in self.addresses:
            raise RelayError(f"the relay has no IPv{family} address configured")
        return self.advertised.get(family, self.addresses[family])


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """Per-request knobs, whatever control protocol carried them."""

    replace_origin: bool = False
    replace_session_connection: bool = False
    ice: IceMode | None = None
    ice_priority: IcePriority | None = None
    #: IP family (4 or 6) of the relay address to offer to the receiving party.
    address_family: int | None = None
    #: Use this address for the sending party instead of the one in its SDP.
    media_address: str | None = None
    #: Where the SIP message came from; used instead of the SDP address with sip_source_address.
    received_from: str | None = None
    #: True: media goes to the SIP source address (received_from), not the SDP's; False: trust
    #: the SDP (rtpengine's default since 3.8); None: the relay's configured default.
    sip_source_address: bool | None = None
    strict_source: bool | None = None
    #: rtpengine's ``rtcp-mux`` requests: ``offer``, ``require``, ``demux``, ``reject``,
    #: ``accept`` (the relay bridges a multiplexing party and one that is not).
    rtcp_mux: frozenset[str] = frozenset()
