"""The audio SDP of the phone: build offers and answers, read the peer's (RFC 3264).

An offer has the shape of the one in Asterisk's ICE page: ``c=``/``m=`` with the default
candidate, the codecs with rtpmap lines, telephone-event 0-16, ptime, then ``a=ice-ufrag``,
``a=ice-pwd`` and one ``a=candidate`` per candidate and component, and the direction. Without
ICE the same minus the ICE lines, which is what a plain SIP phone (or SIPp) expects.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from icerelay.endpoint.errors import RtpError
from icerelay.endpoint.session import CODECS, Codec
from icerelay.errors import SdpError
from icerelay.numbers import parse_uint
from icerelay.sdp import Candidate as SdpCandidate
from icerelay.sdp import SessionDescription

if TYPE_CHECKING:
    from random import Random

    from icerelay.ice.agent import Agent
    from icerelay.ice.candidate import Candidate as IceCandidate

Address = tuple[str, int]


@dataclass(frozen=True)
class IceDescription:
    """Our ICE parameters for an SDP (RFC 8839 section 5)."""

    ufrag: str
    pwd: str
    candidates: tuple[str, ...]
    """``a=candidate`` values (without ``candidate:``... the full attribute value)."""
    remote_candidates: tuple[tuple[int, str, int], ...] = ()
    """(component, address, port) for ``a=remote-candidates`` in the controlling agent's
    updated offer (RFC 8839 section 5.2)."""
    lite: bool = False


@dataclass(frozen=True)
class LocalMedia:
    address: str
    port: int
    rtcp_port: int | None = None
    codecs: tuple[Codec, ...] = (CODECS["PCMU"], CODECS["PCMA"])
    telephone_event: int | None = 101
    ptime: int = 20
    rtcp_mux: bool = False
    rtcp_mux_only: bool = False
    """With :attr:`rtcp_mux`: ``a=rtcp-mux-only`` (RFC 8858), no RTCP fallback."""
    ice: IceDescription | None = None
    direction: str = "sendrecv"
    ice_mismatch: bool = False
    """Answer ``a=ice-mismatch`` (RFC 8839 section 5.4 / RFC 5245 section 5.1): the offer's
    default destination was not among its candidates, so something rewrote the SDP."""


@dataclass
class SdpOrigin:
    """The o= line state: the version increases with every new offer (RFC 3264 section 8)."""

    session_id: int
    version: int = 0

    @classmethod
    def new(cls, *, rng: Random) -> SdpOrigin:
        """A fresh origin: a random session id (RFC 4566 section 5.2 suggests an NTP time; any
        number unique enough will do) that fits in a signed 64-bit integer."""
        return cls(session_id=rng.randrange(2**62))

    def next(self) -> int:
        self.version += 1
        return self.version


def _family(address: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError:
        return "IP4"


def build_sdp(media: LocalMedia, origin: SdpOrigin, *, name: str = "icerelay") -> bytes:
    """An SDP offer or answer for one audio stream."""
    family = _family(media.address)
    formats = [str(c.payload_type) for c in media.codecs]
    if media.telephone_event is not None:
        formats.append(str(media.telephone_event))
    lines = [
        "v=0",
        f"o=- {origin.session_id} {origin.next()} IN {family} {media.address}",
        f"s={name}",
        f"c=IN {family} {media.address}",
        "t=0 0",
    ]
    if media.ice is not None and media.ice.lite:
        lines.append("a=ice-lite")
    lines.append(f"m=audio {media.port} RTP/AVP {' '.join(formats)}")
    for codec in media.codecs:
        lines.append(f"a=rtpmap:{codec.payload_type} {codec.name}/{codec.clock_rate}")
    if media.telephone_event is not None:
        lines.append(f"a=rtpmap:{media.telephone_event} telephone-event/8000")
        lines.append(f"a=fmtp:{media.telephone_event} 0-16")
    lines.append(f"a=ptime:{media.ptime}")
    if media.rtcp_mux:
        lines.append("a=rtcp-mux")
        if media.rtcp_mux_only:
            lines.append("a=rtcp-mux-only")
        elif media.ice is not None and media.rtcp_port is not None:
            # RFC 5761 §5.1.3: where RTCP goes if the answerer does not multiplex (its ICE
            # candidates are the component 2 ones).
            lines.append(f"a=rtcp:{media.rtcp_port}")
    elif media.rtcp_port is not None and media.rtcp_port != media.port + 1:
        lines.append(f"a=rtcp:{media.rtcp_port}")
    if media.ice is not None:
        lines.append(f"a=ice-ufrag:{media.ice.ufrag}")
        lines.append(f"a=ice-pwd:{media.ice.pwd}")
        lines.extend(f"a={c}" if c.startswith("candidate:") else f"a=candidate:{c}"
                     for c in media.ice.candidates)
        if media.ice.remote_candidates:
            remote = " ".join(f"{component} {address} {port}"
                              for component, address, port in media.ice.remote_candidates)
            lines.append(f"a=remote-candidates:{remote}")
    if media.ice_mismatch and media.ice is None:
        lines.append("a=ice-mismatch")
    lines.append(f"a={media.direction}")
    return ("\r\n".join(lines) + "\r\n").encode()


def ice_media(agent: Agent, media: LocalMedia, *, lite: bool = False) -> LocalMedia:
    """``media`` (codecs, direction, rtcp-mux) with the ICE agent's addresses and attributes.

    Before ICE has a pair, ``c=``/``m=`` carry the default candidates and every candidate is
    listed; once it has one, the selected local candidates are the default and the controlling
    agent adds ``a=remote-candidates`` (RFC 8445 section 8.1.2 / RFC 8839 section 4.2.2); once
    ICE completed only the selected pairs' candidates are listed (RFC 5245 section 9.1.2.2).
    """
    candidates = agent.local_candidates
    selected = {c: agent.selected_pair(c) for c in agent.components}
    remote_candidates: tuple[tuple[int, str, int], ...] = ()
    rtp_pair, rtcp_pair = selected.get(1), selected.get(2)
    if rtp_pair is not None:
        rtp = rtp_pair.local.address
        rtcp = rtcp_pair.local.address if rtcp_pair is not None else None
        if agent.controlling:
            remote_candidates = tuple(
                (component, *pair.remote.address)
                for component, pair in selected.items()
                if pair is not None
            )
    else:
        rtp = best_default(candidates, 1).address
        rtcp = best_default(candidates, 2).address if 2 in agent.components else None
    attributes = tuple(c.to_attribute() for c in candidates)
    if rtp_pair is not None and agent.state.value == "completed":
        attributes = tuple(
            pair.local.to_attribute() for pair in selected.values() if pair is not None
        )
    ice = IceDescription(agent.local_username, agent.local_password, attributes,
                         remote_candidates, lite=lite)
    return replace(media, address=rtp[0], port=rtp[1], rtcp_port=rtcp[1] if rtcp else None,
                   ice=ice)


def default_candidate(candidates: Sequence[IceCandidate], component: int) -> Address:
    """RFC 8445 section 5.1.4: the default is the candidate most likely to work without ICE:
    relayed, else server-reflexive, else host."""
    return best_default(candidates, component).address


def best_default(candidates: Sequence[IceCandidate], component: int) -> IceCandidate:
    """The default candidate itself (see :func:`default_candidate`)."""
    rank = {"relay": 0, "srflx": 1, "prflx": 2, "host": 3}
    mine = [c for c in candidates if c.component == component]
    if not mine:
        raise RtpError(f"no candidate for component {component}")
    return min(mine, key=lambda c: (rank.get(c.type.value, 4), -c.priority))


@dataclass(frozen=True)
class RemoteMedia:
    """What the peer's SDP says about its audio stream."""

    rtp: Address
    rtcp: Address
    codec: Codec
    telephone_event: int | None
    rtcp_mux: bool
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    candidates: tuple[SdpCandidate, ...] = ()
    ice_lite: bool = False
    remote_candidates: tuple[tuple[int, str, int], ...] = ()
    direction: str = "sendrecv"
    ptime: int | None = None
    ice_mismatch_signalled: bool = False
    """The SDP carries ``a=ice-mismatch``: the answerer saw our offer rewritten by a middlebox
    and does not do ICE for this stream (RFC 8839 §5.4)."""

    @property
    def has_ice(self) -> bool:
        """RFC 8839 section 5.4: ICE needs ufrag, pwd and at least one candidate."""
        return bool(self.ice_ufrag and self.ice_pwd and self.candidates)

    @property
    def ice_mismatch(self) -> bool:
        """ICE attributes are there but the default destination (``c=``/``m=``) is none of the
        RTP candidates: a middlebox (a SIP ALG) rewrote the SDP without understanding ICE, and
        RFC 8839 section 5.4 says to fall back to plain media with ``a=ice-mismatch``."""
        if not self.has_ice:
            return False
        return not any(
            c.component == 1 and c.address == self.rtp[0] and c.port == self.rtp[1]
            for c in self.candidates
        )


def parse_remote(body: bytes, *, supported: tuple[Codec, ...] = (CODECS["PCMU"],
                                                                 CODECS["PCMA"])) -> RemoteMedia:
    """Read the first audio stream of the peer's SDP; pick the first codec of *its* order
    that we support (the answerer's choice in RFC 3264 section 6.1).

    Raises :class:`SdpError` when there is no usable audio stream or no common codec.
    """
    sdp = SessionDescription.parse(body)
    audio = next((m for m in sdp.media if m.media == "audio" and m.port != 0), None)
    if audio is None:
        raise SdpError("no active audio stream in the SDP")
    connection = audio.effective_connection(sdp)
    if connection is None:
        raise SdpError("no c= line for the audio stream")
    host = connection.address.split("/")[0]
    by_type = {c.payload_type: c for c in supported}
    by_name = {c.name: c for c in supported}
    codec: Codec | None = None
    telephone_event = None
    for fmt in audio.formats:
        parsed = parse_uint(fmt, max_digits=3, maximum=127)
        if parsed is None:
            continue
        name = audio.codec_name(fmt)
        pt = parsed
        if name is not None and name.lower() == "telephone-event":
            telephone_event = telephone_event if telephone_event is not None else pt
            continue
        if codec is None:
            if name is not None and name.upper() in by_name:
                chosen = by_name[name.upper()]
                codec = Codec(chosen.name, pt, chosen.clock_rate, chosen.encode, chosen.decode)
            elif name is None and pt in by_type:
                codec = by_type[pt]
    if codec is None:
        raise SdpError(f"no common codec in {audio.formats}")
    rtcp_mux = audio.rtcp_mux
    rtcp_attr = audio.rtcp
    rtcp_port = audio.port + 1
    rtcp_host = host
    if rtcp_attr is not None:
        rtcp_port = rtcp_attr.port
        rtcp_host = rtcp_attr.address or host
    credentials = audio.ice_credentials(sdp)
    ptime_attr = audio.get_attribute("ptime")
    ptime = None
    if ptime_attr is not None and ptime_attr.value:
        ptime = parse_uint(ptime_attr.value.strip(), max_digits=5)
    remote_candidates = tuple((r.component, r.address, r.port)
                              for r in audio.remote_candidates)
    return RemoteMedia(
        rtp=(host, audio.port),
        rtcp=(rtcp_host, audio.port if rtcp_mux else rtcp_port),
        codec=codec,
        telephone_event=telephone_event,
        rtcp_mux=rtcp_mux,
        ice_ufrag=credentials.ufrag if credentials else None,
        ice_pwd=credentials.pwd if credentials else None,
        candidates=tuple(audio.candidates()),
        ice_lite=sdp.ice_lite,
        remote_candidates=remote_candidates,
        direction=audio.direction(sdp).value,
        ptime=ptime,
        ice_mismatch_signalled=audio.get_attribute("ice-mismatch") is not None,
    )
