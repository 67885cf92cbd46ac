"""Streams of a session: port pairs per stream, where each party is, rtcp-mux and ICE decisions.

Stream ``i`` of a session is the ``i``-th media stream of its offers and answers. It holds a port
pair facing each party (allocated when the stream is first offered or re-enabled), what each
party last said about it (:class:`~.plans.StreamOffer`), where media for each party goes, and
what the relay last told each party about RTCP multiplexing. These functions make the
per-stream decisions; :mod:`.sessions` runs them in order and keeps the books.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from icerelay.errors import RelayError
from icerelay.relay.forwarding import Forwarding, ForwardingCounters, Leg
from icerelay.relay.options import RelayConfig, RelayOptions
from icerelay.relay.plans import Exchange, StreamOffer, is_unspecified
from icerelay.relay.ports import PortPair, PortPool
from icerelay.relay.records import StreamEndReason
from icerelay.sdp import IceCredentials
from icerelay.stun import Address

if TYPE_CHECKING:
    from random import Random

__all__ = [
    "A",
    "B",
    "Stream",
    "forwarding",
    "ice_restarted",
    "ice_went_around",
    "ice_went_direct",
    "is_own",
    "mux_out",
    "new_credentials",
    "open_stream",
    "peer_addresses",
]

# Sides of a session: the caller (From-tag of the initial offer) and the callee.
A, B = 0, 1

_ICE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass(slots=True)
class Stream:
    """One relayed stream of a session; lists are indexed by side (:data:`A`, :data:`B`)."""

    index: int
    key: str
    media: str
    ports: list[PortPair | None]
    family: list[int]
    offers: list[StreamOffer | None] = field(default_factory=lambda: [None, None])
    # Where to send media for each side, after received-from / media-address overrides.
    peer: list[tuple[Address | None, Address | None]] = field(
        default_factory=lambda: [(None, None), (None, None)]
    )
    ice_credentials: list[IceCredentials | None] = field(default_factory=lambda: [None, None])
    ended: StreamEndReason | None = None
    final: ForwardingCounters | None = None
    installed: bool = False
    # RTP ports facing (a, b), kept for the record after the pairs went back to the pool.
    relay_ports: tuple[int | None, int | None] = (None, None)
    # Whether what the relay last sent to each side had rtcp-mux (None: nothing sent yet, or an
    # offer from that side is waiting for its answer).
    mux_sent: list[bool | None] = field(default_factory=lambda: [None, None])
    #: When the relay stepped aside (ICE went around it, :mod:`.stepaside`), or None.
    stepped_aside: float | None = None

    def held(self) -> bool:
        """True if either party put the stream on hold."""
        return any(offer is not None and offer.hold for offer in self.offers)


def open_stream(
    config: RelayConfig,
    pool: PortPool,
    session_id: int,
    offer: StreamOffer,
    side: int,
    options: RelayOptions,
    previous: Stream | None,
) -> Stream:
    """A new stream with a port pair per party (RelayError: no address family, pool exhausted)."""
    family = _family_of(offer.address) or _family_of(options.received_from) or 4
    if family not in config.addresses:
        family = next(iter(config.addresses))
    receiver_family = options.address_family or family
    if receiver_family not in config.addresses:
        raise RelayError(f"the relay has no IPv{receiver_family} address configured")
    first = pool.allocate()
    try:
        second = pool.allocate()
    except RelayError:
        pool.release(first)
        raise
    pair = (first, second) if side == A else (second, first)
    families = [0, 0]
    families[side], families[1 - side] = family, receiver_family
    stream = Stream(
        index=offer.index,
        key=f"{session_id}.{offer.index}",
        media=offer.media,
        ports=list(pair),
        family=families,
        relay_ports=(pair[A].rtp, pair[B].rtp),
    )
    if previous is not None:
        # A stream re-enabled in a later offer: new ports, a new forwarding generation.
        stream.key = f"{previous.key}+"
        stream.offers = previous.offers
    return stream


def peer_addresses(
    config: RelayConfig, offer: StreamOffer, options: RelayOptions
) -> tuple[Address | None, Address | None]:
    """Where media for the party goes (RTP, RTCP), after the request's address overrides."""
    if offer.address is None or is_unspecified(offer.address) or offer.port == 0:
        return None, None
    host = offer.address
    rtcp_host = offer.rtcp_address or host
    override = options.media_address
    sip_source = options.sip_source_address
    if sip_source is None:
        sip_source = config.sip_source
    if override is None and sip_source and options.received_from:
        override = options.received_from
    if override is not None:
        host = rtcp_host = override
    if _family_of(host) is None:
        # An FQDN: the data plane does not resolve names; latching will find the peer.
        return None, None
    rtcp = Address(rtcp_host, offer.rtcp_port) if _family_of(rtcp_host) else None
    return Address(host, offer.port), rtcp


def is_own(config: RelayConfig, pool: PortPool, address: Address | None) -> bool:
    """True if ``address`` is one of the relay's own ports."""
    if address is None or not pool.first <= address.port <= pool.last:
        return False
    host = _canonical(address.host)
    return host in config.addresses.values() or host in config.advertised.values()


def ice_restarted(stream: Stream, side: int, offer: StreamOffer, exchange: Exchange) -> bool:
    """True if ``side`` offers new ICE credentials (an ICE restart, RFC 8445 section 9)."""
    previous = stream.offers[side]
    return (
        exchange is Exchange.OFFER
        and offer.ice
        and previous is not None
        and previous.ice_ufrag is not None
        and offer.ice_ufrag != previous.ice_ufrag
    )


def ice_went_direct(config: RelayConfig, stream: Stream, side: int, offer: StreamOffer) -> bool:
    """True if ``side``'s re-offer shows ICE selected a pair that avoids the relay.

    RFC 8839 §4.2.5: after ICE completes, the controlling agent re-offers with its selected
    local candidate in ``c=``/``m=`` and the selected remote candidates in
    ``a=remote-candidates``. The remote candidates name what this side received from the
    relay; if none is the relay's address and ports, ICE chose a path around the relay.
    """
    previous_self, other = stream.offers[side], stream.offers[1 - side]
    if previous_self is None or other is None:
        return False
    if not (previous_self.ice and other.ice and offer.remote_candidates):
        return False
    ports = stream.ports[side]
    if ports is None:
        return False
    relay_address = config.advertised_address(stream.family[side])
    relay = {(relay_address, ports.rtp), (relay_address, ports.rtcp)}
    return not any(
        (_canonical(address), port) in relay for _, address, port in offer.remote_candidates
    )


def ice_went_around(stream: Stream, counters: ForwardingCounters | None) -> bool:
    """Both parties do ICE, their checks went through the relay, and the relay pair was never
    the one in use: no media crossed it, or media did (sent to the default address before ICE
    completed) but no nomination ever did."""
    offered, answered = stream.offers
    if offered is None or answered is None or not (offered.ice and answered.ice):
        return False
    if counters is None:
        return False
    # Only checks whose MESSAGE-INTEGRITY verified with the two SDPs' credentials count: a
    # stranger's forged checks must not make a silent call end as "ICE went direct".
    checks = counters.a.checks_authenticated + counters.b.checks_authenticated
    nominated = counters.a.last_nomination is not None or counters.b.last_nomination is not None
    media = counters.a.packets + counters.b.packets
    return checks > 0 and (media == 0 or not nominated)


def forwarding(config: RelayConfig, stream: Stream, *, strict_source: bool) -> Forwarding:
    """What the data plane must do for ``stream``: its two legs as the parties now stand."""
    legs = []
    for side in (A, B):
        ports = stream.ports[side]
        assert ports is not None
        offer = stream.offers[side]
        # A party multiplexes when its own SDP says so and the SDP it got from the relay
        # agreed (until its offer is answered, it must be ready for both, RFC 5761).
        sent = stream.mux_sent[side]
        mux = offer is not None and offer.rtcp_mux and sent is not False
        rtp_peer, rtcp_peer = stream.peer[side]
        if mux:
            rtcp_peer = rtp_peer
        legs.append(
            Leg(
                local=Address(config.addresses[stream.family[side]], ports.rtp),
                rtp_peer=rtp_peer,
                rtcp_peer=rtcp_peer,
                rtcp_mux=mux,
                ice_credentials=stream.ice_credentials[side],
                # What latching needs to tell this party from a stranger.
                payload_types=_payload_types(offer),
                opaque=offer is not None and "RTP" not in offer.proto.upper(),
                sdp_ice=offer.ice_credentials if offer is not None else None,
                dtls=offer is not None and "TLS" in offer.proto.upper(),
            )
        )
    return Forwarding(
        key=stream.key,
        a=legs[A],
        b=legs[B],
        strict_source=strict_source,
        handover_after=config.handover_after,
    )


def _payload_types(offer: StreamOffer | None) -> frozenset[int] | None:
    """The RTP payload types of the party's ``m=`` line; None when unknown (no SDP yet, a
    control protocol that does not pass them, or formats that are not payload types)."""
    if offer is None or not offer.payload_types:
        return None
    return _types_of(offer.payload_types)


# Cached: every install reads both parties' formats, and phones send the same few lists.
@functools.lru_cache(maxsize=1024)
def _types_of(formats: tuple[str, ...]) -> frozenset[int] | None:
    types = set()
    for value in formats:
        if not (value.isascii() and value.isdigit() and len(value) <= 3 and int(value) < 128):
            return None
        types.add(int(value))
    return frozenset(types)


def mux_out(
    requests: frozenset[str], exchange: Exchange, offerer: StreamOffer | None
) -> bool | None:
    """What ``a=rtcp-mux`` the relay writes towards the receiving party, per rtpengine's flags.

    In an offer: ``demux``/``reject`` take it away, ``offer``/``require`` add it. In an answer
    (``offerer`` is the party that receives it): ``accept``/``require`` grant what the offerer
    offered even when the answerer declined, ``reject`` declines it; an offerer that did not
    offer it never gets it. None: pass through.
    """
    is_offer = exchange is Exchange.OFFER
    if not is_offer and offerer is not None and not offerer.rtcp_mux:
        # The relay may have offered mux on its own ("offer"); the offerer never did, so its
        # answer must not carry it (RFC 5761 section 5.1.1).
        return False
    if not requests:
        return None
    if is_offer:
        if requests & {"demux", "reject"}:
            return False
        if requests & {"offer", "require"}:
            return True
        return None
    if "reject" in requests:
        return False
    if requests & {"accept", "require"} and offerer is not None and offerer.rtcp_mux:
        return True
    return None


def new_credentials(rng: Random) -> IceCredentials:
    """Fresh ICE credentials for the relay's ICE-lite side (RFC 8445 §5.3: random, 24+ bits
    of ufrag entropy, 128+ bits of password entropy; ``rng`` must be a CSPRNG in production)."""
    ufrag = "".join(rng.choice(_ICE_CHARS) for _ in range(8))
    pwd = "".join(rng.choice(_ICE_CHARS) for _ in range(24))
    return IceCredentials(ufrag, pwd)


# The address helpers below are cached: they are asked several times per request for the same
# few addresses, and ipaddress parsing is among the control path's top costs.
@functools.lru_cache(maxsize=4096)
def _family_of(address: str | None) -> int | None:
    if address is None:
        return None
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _canonical(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address
