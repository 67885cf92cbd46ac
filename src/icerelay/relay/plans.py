"""The structured core's vocabulary: what a party offers per stream, and what the relay plans.

A control protocol describes each media stream a party sent as a :class:`StreamOffer` (ng reads
it out of the SDP with :func:`icerelay.relay.rewrite.describe`; MediaProxy's module says it in its
``media`` header). :meth:`icerelay.relay.sessions.SessionEngine.update` answers with a
:class:`SessionPlan`: per stream, the relay address and ports the other party must send to and
the candidates the relay adds. ng writes the plan into the SDP (:func:`~.rewrite.rewrite`);
MediaProxy's module gets the address and ports and writes its SDP itself.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from icerelay.relay.policy import IceMode, IcePriority
from icerelay.sdp import Candidate, Direction, IceCredentials

__all__ = ["Exchange", "SessionPlan", "StreamOffer", "StreamPlan"]


class Exchange(StrEnum):
    """Which half of an offer/answer exchange (RFC 3264) a party's streams are."""

    OFFER = "offer"
    ANSWER = "answer"


@dataclass(frozen=True, slots=True)
class StreamOffer:
    """What a party says about one media stream (one ``m=`` section of its SDP).

    :attr:`rtcp_address`/:attr:`rtcp_port` come from ``a=rtcp`` when present, else RTP port + 1 on
    the RTP address (RFC 3550 §11); with ``a=rtcp-mux`` they equal the RTP address.
    :attr:`hold` is True for ``sendonly``/``inactive`` and for the RFC 2543 ``c=0.0.0.0`` hold.
    :attr:`ice` says the party does ICE (credentials and candidates, or a control protocol that
    says just that); :attr:`component_2` that it has RTCP candidates.
    """

    index: int
    media: str
    proto: str
    address: str | None
    port: int
    rtcp_address: str | None
    rtcp_port: int
    rtcp_mux: bool
    direction: Direction
    ice: bool
    component_2: bool
    codec: str | None
    remote_candidates: tuple[tuple[int, str, int], ...]
    #: The ICE credentials in effect for this stream; a new ufrag means an ICE restart.
    ice_credentials: IceCredentials | None = None
    candidates: tuple[Candidate, ...] = ()
    #: The ``m=`` line's formats (RTP payload types), preferred first.
    payload_types: tuple[str, ...] = ()

    @property
    def ice_ufrag(self) -> str | None:
        """The ICE username fragment in effect for this stream, if any."""
        return self.ice_credentials.ufrag if self.ice_credentials is not None else None

    @property
    def rejected(self) -> bool:
        """Port 0: the stream is rejected (in an answer) or disabled (in an offer)."""
        return self.port == 0

    @property
    def hold(self) -> bool:
        """True if the party does not want to receive media (hold in either style)."""
        if self.direction in (Direction.SENDONLY, Direction.INACTIVE):
            return True
        return self.address is not None and is_unspecified(self.address)


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Where the far party must send one stream: the relay's advertised address and ports."""

    address: str
    rtp_port: int
    rtcp_port: int
    #: Credentials of the relay's own ICE-lite agent, used by ``ICE=force`` only.
    ice_credentials: IceCredentials | None = None
    #: ``a=rtcp-mux`` in the output: True adds it, False removes it, None leaves it as it was
    #: (the relay multiplexes or demultiplexes RTCP between the legs as needed).
    rtcp_mux: bool | None = None
    #: The candidates the relay adds for itself; None: derive them from the SDP being rewritten
    #: (for callers of :func:`~.rewrite.rewrite` without an engine).
    candidates: tuple[Candidate, ...] | None = None


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """The engine's answer to one offer or answer.

    :attr:`streams` holds one entry per :class:`StreamOffer`, in order; None leaves that stream
    as the party wrote it (rejected, or ICE found a path around the relay). :attr:`ice` and
    :attr:`priority` are the ICE handling and relay-candidate priority in effect.
    """

    streams: tuple[StreamPlan | None, ...]
    ice: IceMode = IceMode.DEFAULT
    priority: IcePriority = IcePriority.LOW


# Cached: asked several times per request (hold checks, rewrites, deadlines) for the same few
# addresses, and ipaddress parsing is among the control path's top costs.
@functools.lru_cache(maxsize=4096)
def is_unspecified(address: str) -> bool:
    """True for ``0.0.0.0`` and ``::`` (False for anything that is not an IP address)."""
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False
