"""The phone's audio SDP: offers in the Asterisk shape, reading offers and answers."""

from __future__ import annotations

import pytest

from icerelay.endpoint.offer import IceDescription, LocalMedia, SdpOrigin, build_sdp, parse_remote
from icerelay.endpoint.session import PCMA, PCMU
from icerelay.errors import SdpError

ASTERISK_OFFER = b"""v=0
o=root 1903343929 1903343929 IN IP4 10.0.1.40
s=Asterisk PBX SVN-trunk-r372051
c=IN IP4 10.0.1.40
t=0 0
m=audio 17234 RTP/AVP 0 3 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:3 GSM/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=silenceSupp:off - - - -
a=ptime:20
a=ice-ufrag:0d9cc44338ad8ced48b2d92c34556f4e
a=ice-pwd:193c1361446d012a1e298d5278b5c4b6
a=candidate:Ha000128qZ 1 UDP 2130706431 10.0.1.40 17234 typ host
a=candidate:Ha00030f 1 UDP 2130706431 10.0.3.15 17234 typ host
a=candidate:S8e86c939 1 UDP 1694498815 142.134.201.57 17234 typ srflx
a=candidate:Ha000128 2 UDP 2130706430 10.0.1.40 17235 typ host
a=candidate:Ha00030f 2 UDP 2130706430 10.0.3.15 17235 typ host
a=candidate:S8e86c939 2 UDP 1694498814 142.134.201.57 17234 typ srflx
a=sendrecv
"""


def test_read_the_asterisk_offer() -> None:
    remote = parse_remote(ASTERISK_OFFER)
    assert remote.rtp == ("10.0.1.40", 17234) and remote.rtcp == ("10.0.1.40", 17235)
    assert remote.codec.name == "PCMU" and remote.telephone_event == 101
    assert remote.has_ice and remote.ice_ufrag == "0d9cc44338ad8ced48b2d92c34556f4e"
    assert len(remote.candidates) == 6 and remote.ptime == 20 and not remote.rtcp_mux
    # Our preference does not override the offerer's order (RFC 3264 section 6.1).
    assert parse_remote(ASTERISK_OFFER, supported=(PCMA, PCMU)).codec.name == "PCMU"
    assert parse_remote(ASTERISK_OFFER, supported=(PCMA,)).codec.name == "PCMA"


def test_offer_has_the_asterisk_shape() -> None:
    origin = SdpOrigin(session_id=42)
    ice = IceDescription("0d9cc443", "193c1361446d012a1e298d52", (
        "candidate:Ha000128 1 UDP 2130706431 10.0.1.40 17234 typ host",
        "Ha000128 2 UDP 2130706430 10.0.1.40 17235 typ host",
    ))
    body = build_sdp(LocalMedia("10.0.1.40", 17234, 17235, ice=ice), origin).decode()
    lines = body.split("\r\n")
    assert lines[:6] == ["v=0", "o=- 42 1 IN IP4 10.0.1.40", "s=icerelay",
                         "c=IN IP4 10.0.1.40", "t=0 0", "m=audio 17234 RTP/AVP 0 8 101"]
    assert lines[6:11] == ["a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
                           "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20"]
    assert "a=ice-ufrag:0d9cc443" in lines and "a=ice-pwd:193c1361446d012a1e298d52" in lines
    assert "a=candidate:Ha000128 2 UDP 2130706430 10.0.1.40 17235 typ host" in lines
    assert lines[-2:] == ["a=sendrecv", ""]
    assert "a=rtcp:" not in body  # RTCP on port + 1 needs no a=rtcp
    # The version goes up with each new offer.
    assert "o=- 42 2 IN IP4" in build_sdp(LocalMedia("10.0.1.40", 17234), origin).decode()
    remote = parse_remote(body.encode())
    assert remote.has_ice and [c.component for c in remote.candidates] == [1, 2]


def test_updated_offer_with_remote_candidates_and_mux_ipv6() -> None:
    ice = IceDescription("abcd", "0123456789abcdefghijkl", ("x 1 UDP 1 ::1 4000 typ host",),
                         remote_candidates=((1, "::1", 5000),))
    body = build_sdp(LocalMedia("::1", 4000, rtcp_mux=True, ice=ice, telephone_event=None,
                                codecs=(PCMA,)), SdpOrigin(session_id=7))
    assert b"c=IN IP6 ::1" in body and b"a=rtcp-mux" in body
    assert b"a=remote-candidates:1 ::1 5000" in body
    remote = parse_remote(body)
    assert remote.rtcp_mux and remote.rtcp == ("::1", 4000) and remote.telephone_event is None
    assert remote.remote_candidates == ((1, "::1", 5000),)


def test_plain_peer_and_rtcp_attribute() -> None:
    sipp = (b"v=0\r\no=sipp 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 6000 RTP/AVP 8\r\na=rtcp:7001 IN IP4 127.0.0.2\r\na=sendonly\r\n")
    remote = parse_remote(sipp)
    assert not remote.has_ice and remote.codec.name == "PCMA"  # static type, no rtpmap
    assert remote.rtcp == ("127.0.0.2", 7001) and remote.direction == "sendonly"


@pytest.mark.parametrize("body", [
    b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 5 RTP/AVP 0\r\n",  # no c=
    b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"
    b"m=audio 5 RTP/AVP 3\r\n",  # GSM only
    b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"
    b"m=audio 0 RTP/AVP 0\r\n",  # rejected stream
    b"not sdp",
])
def test_unusable_sdp(body: bytes) -> None:
    with pytest.raises(SdpError):
        parse_remote(body)


def test_ice_mismatch_when_a_middlebox_rewrote_the_default() -> None:
    rewritten = ASTERISK_OFFER.replace(b"c=IN IP4 10.0.1.40", b"c=IN IP4 198.51.100.7")
    assert parse_remote(rewritten).ice_mismatch
    assert not parse_remote(ASTERISK_OFFER).ice_mismatch  # 10.0.1.40:17234 is a candidate
    body = build_sdp(LocalMedia("192.0.2.1", 4000, ice_mismatch=True), SdpOrigin(session_id=7))
    assert b"a=ice-mismatch" in body and b"a=ice-ufrag" not in body


def test_an_rtcp_mux_ice_offer_names_its_rtcp_fallback() -> None:
    """RFC 5761 §5.1.3: offering rtcp-mux with ICE still offers RTCP (component 2 and a=rtcp),
    unless mux-only (RFC 8858)."""
    ice = IceDescription("abcd", "0123456789abcdefghijkl",
                         ("x 1 UDP 2 192.0.2.1 4000 typ host", "x 2 UDP 1 192.0.2.1 4001 typ host"))
    body = build_sdp(LocalMedia("192.0.2.1", 4000, rtcp_port=4001, rtcp_mux=True, ice=ice),
                     SdpOrigin(session_id=7))
    assert b"a=rtcp-mux\r\na=rtcp:4001\r\n" in body and b"rtcp-mux-only" not in body
    only = build_sdp(LocalMedia("192.0.2.1", 4000, rtcp_mux=True, rtcp_mux_only=True, ice=ice),
                     SdpOrigin(session_id=7))
    assert b"a=rtcp-mux\r\na=rtcp-mux-only\r\n" in only and b"a=rtcp:" not in only


def test_an_answer_with_ice_mismatch_is_read() -> None:
    answer = ASTERISK_OFFER.replace(b"a=ptime:20\n", b"a=ptime:20\na=ice-mismatch\n")
    assert parse_remote(answer).ice_mismatch_signalled
    assert not parse_remote(ASTERISK_OFFER).ice_mismatch_signalled
