"""Typed access to origin, connection, media, attributes, rtcp and ICE."""

from __future__ import annotations

import pytest

from icerelay.errors import SdpError
from icerelay.sdp import (
    Attribute,
    Candidate,
    Connection,
    Direction,
    IceCredentials,
    MediaLine,
    Origin,
    RemoteCandidate,
    Rtcp,
    RtpMap,
    SessionDescription,
    parse,
)

from .samples import ASTERISK, CHROME, IPV6, LINPHONE, SLOPPY, asterisk_from_seed, join


def test_asterisk_seed_gives_its_six_candidates() -> None:
    sdp = parse(asterisk_from_seed())
    (audio,) = sdp.media
    candidates = audio.candidates()
    assert [(c.foundation, c.component, c.type, c.priority) for c in candidates] == [
        ("Ha000128qZ", 1, "host", 2130706431),
        ("Ha00030f", 1, "host", 2130706431),
        ("S8e86c939", 1, "srflx", 1694498815),
        ("Ha000128", 2, "host", 2130706430),
        ("Ha00030f", 2, "host", 2130706430),
        ("S8e86c939", 2, "srflx", 1694498814),
    ]
    assert candidates[2] == Candidate("S8e86c939", 1, "UDP", 1694498815, "142.134.201.57", 17234,
                                      "srflx")
    assert all(c.is_udp and c.family == 4 for c in candidates)
    assert audio.ice_credentials(sdp) == IceCredentials("0d9cc44338ad8ced48b2d92c34556f4e",
                                                        "193c1361446d012a1e298d5278b5c4b6")
    assert sdp.ice_credentials is None  # they are at media level only


def test_asterisk_fields() -> None:
    sdp = parse(ASTERISK)
    assert sdp.origin == Origin("root", "1903343929", "1903343929", "IN", "IP4", "10.0.1.40")
    assert sdp.session_name == "Asterisk PBX SVN-trunk-r372051"
    assert sdp.connection == Connection("IN", "IP4", "10.0.1.40")
    audio = sdp.media[0]
    assert audio.media_line == MediaLine("audio", 17234, "RTP/AVP", ("0", "3", "8", "101"))
    assert (audio.media, audio.port, audio.proto) == ("audio", 17234, "RTP/AVP")
    assert audio.formats == ("0", "3", "8", "101")
    assert audio.connection is None
    assert audio.effective_connection(sdp) == Connection("IN", "IP4", "10.0.1.40")
    assert audio.direction(sdp) is Direction.SENDRECV
    assert audio.own_direction is Direction.SENDRECV
    assert [audio.codec_name(pt) for pt in audio.formats] == ["PCMU", "GSM", "PCMA",
                                                               "telephone-event"]
    assert audio.rtpmap(101) == RtpMap(101, "telephone-event", 8000)
    assert audio.fmtp(101) == "0-16"
    assert audio.fmtp("0") is None
    assert audio.get_attribute("silenceSupp") == Attribute("silenceSupp", "off - - - -")
    assert audio.get_attribute("sendrecv") == Attribute("sendrecv", None)
    assert audio.get_attribute("nothing") is None
    assert audio.has_attribute("ptime")
    assert len(audio.get_attributes("candidate")) == 6
    assert audio.attributes()[0] == Attribute("rtpmap", "0 PCMU/8000")
    assert audio.rtcp is None
    assert not audio.rtcp_mux
    assert audio.ice_options(sdp) == ()
    assert audio.remote_candidates == ()
    assert not audio.ice_mismatch
    assert not sdp.ice_lite
    assert not audio.end_of_candidates(sdp)


def test_static_payload_types_without_rtpmap() -> None:
    sdp = parse("v=0\r\nm=audio 1 RTP/AVP 0 8 9 18 96\r\n")
    audio = sdp.media[0]
    assert [audio.codec_name(pt) for pt in (0, 8, 9, 18)] == ["PCMU", "PCMA", "G722", "G729"]
    assert audio.rtpmap(9) == RtpMap(9, "G722", 8000)
    assert audio.codec_name(96) is None
    assert audio.codec_name("x") is None


def test_chrome_offer() -> None:
    sdp = parse(CHROME)
    assert sdp.origin is not None and sdp.origin.username == "-"
    assert sdp.get_attribute("group") == Attribute("group", "BUNDLE 0 1")
    assert sdp.get_attribute("msid-semantic") == Attribute("msid-semantic", " WMS stream0")
    audio, video = sdp.media
    assert audio.rtcp == Rtcp(9, "IN", "IP4", "0.0.0.0")
    assert audio.rtcp_mux and video.rtcp_mux
    assert audio.connection == Connection("IN", "IP4", "0.0.0.0")
    assert audio.ice_options(sdp) == ("trickle", "renomination")
    assert audio.ice_credentials(sdp) == IceCredentials("EsAw", "bP+XJMM09aR8AiX1jdukzR6Y")
    assert audio.end_of_candidates(sdp) and not video.end_of_candidates(sdp)
    assert audio.rtpmap(111) == RtpMap(111, "opus", 48000, "2")
    assert audio.fmtp(111) == "minptime=10;useinbandfec=1"
    assert audio.codec_name(0) == "PCMU"
    assert video.direction(sdp) is Direction.RECVONLY
    assert video.candidates() == []
    host, mdns, tcp, srflx, relay = audio.candidates()
    assert host.transport == "udp" and host.is_udp
    assert host.extensions == (("generation", "0"), ("network-id", "1"), ("network-cost", "10"))
    assert host.extension("network-id") == "1"
    assert host.extension("missing") is None
    assert mdns.address.endswith(".local") and mdns.family is None
    assert tcp.is_tcp and tcp.tcptype == "active" and tcp.port == 9
    assert (srflx.related_address, srflx.related_port) == ("192.168.0.196", 46243)
    assert srflx.extension("ufrag") == "EsAw"
    assert relay.type == "relay" and relay.priority == 33562367
    for candidate, line in zip(audio.candidates(), audio.get_attributes("candidate"), strict=True):
        assert candidate.to_sdp() == line.value


def test_linphone_session_level_ice_and_rtcp() -> None:
    sdp = parse(LINPHONE)
    assert sdp.ice_credentials == IceCredentials("09f6ea7d", "31ec21eb38b2ec6d36e8dc7b")
    audio, video = sdp.media
    assert audio.ice_credentials() is None  # nothing at media level...
    assert audio.ice_credentials(sdp) == sdp.ice_credentials  # ...so the session's apply
    assert audio.rtcp == Rtcp(7079)
    assert audio.fmtp(97) == "vbr=on"  # trailing blanks are not part of the value
    assert audio.get_attributes("rtcp-fb")[0].value == "* trr-int 1000"
    assert [c.component for c in audio.candidates()] == [1, 2, 1, 2]
    assert video.port == 0 and video.candidates() == []
    assert audio.codec_name(18) == "G729"


def test_media_level_ice_overrides_session_level() -> None:
    text = LINPHONE.replace("a=rtcp:7079\n", "a=rtcp:7079\na=ice-pwd:mediamediamediamediamedia\n"
                            "a=ice-options:ice2\n")
    sdp = parse(text)
    assert sdp.media[0].ice_credentials(sdp) == IceCredentials("09f6ea7d",
                                                               "mediamediamediamediamedia")
    assert sdp.media[1].ice_credentials(sdp) == IceCredentials("09f6ea7d",
                                                               "31ec21eb38b2ec6d36e8dc7b")
    assert sdp.media[0].ice_options(sdp) == ("ice2",)
    assert sdp.media[1].ice_options(sdp) == ()


def test_ipv6_offer() -> None:
    sdp = parse(IPV6)
    assert sdp.connection == Connection("IN", "IP6", "2001:db8::10")
    assert sdp.origin is not None and sdp.origin.addrtype == "IP6"
    assert sdp.ice_lite
    audio = sdp.media[0]
    assert audio.connection == Connection("IN", "IP6", "2001:db8:0:1::7")
    assert audio.rtcp == Rtcp(49171, "IN", "IP6", "2001:db8:0:1::7")
    assert audio.ice_pacing(sdp) == 50
    assert audio.ice_mismatch
    assert audio.direction(sdp) is Direction.INACTIVE
    assert audio.remote_candidates == (RemoteCandidate(1, "2001:db8::55", 5000),
                                       RemoteCandidate(2, "2001:db8::55", 5001))
    host, _, tcp = audio.candidates()
    assert host.family == 6
    assert (tcp.transport, tcp.tcptype, tcp.related_address) == ("TCP", "passive",
                                                                "2001:db8:0:1::7")


def test_sloppy_sdp_is_read_sensibly() -> None:
    sdp = parse(SLOPPY)
    assert sdp.origin == Origin("-", "1", "1", "IN", "IP4", "10.0.0.1")
    assert sdp.connection == Connection("IN", "IP4", "10.0.0.1")
    assert sdp.session_name == ""
    audio = sdp.media[0]
    assert audio.port == 4000 and audio.formats == ("0",)
    assert audio.direction(sdp) is Direction.SENDONLY
    assert audio.get_attribute("X-nat") == Attribute("X-nat", "0")


def test_session_level_direction_is_inherited() -> None:
    sdp = parse("v=0\r\na=recvonly\r\nm=audio 1 RTP/AVP 0\r\nm=audio 2 RTP/AVP 0\r\na=inactive\r\n")
    assert sdp.media[0].direction(sdp) is Direction.RECVONLY
    assert sdp.media[0].direction() is Direction.SENDRECV
    assert sdp.media[1].direction(sdp) is Direction.INACTIVE


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("IN IP4 224.2.36.42/127", Connection("IN", "IP4", "224.2.36.42", 127)),
        ("IN IP4 224.2.1.1/127/3", Connection("IN", "IP4", "224.2.1.1", 127, 3)),
        ("IN IP6 ff15::101/3", Connection("IN", "IP6", "ff15::101", None, 3)),
        ("IN IP4 host.example.com", Connection("IN", "IP4", "host.example.com")),
        ("ATM NSAP 47.0005/x", Connection("ATM", "NSAP", "47.0005/x")),
    ],
)
def test_connection_forms(value: str, expected: Connection) -> None:
    assert Connection.parse(value) == expected
    assert expected.to_sdp() == value


def test_media_line_with_port_count() -> None:
    line = MediaLine.parse("video 49170/2 RTP/AVP 31")
    assert line == MediaLine("video", 49170, "RTP/AVP", ("31",), 2)
    assert line.to_sdp() == "video 49170/2 RTP/AVP 31"


def test_rtpmap_and_rtcp_values_round_trip() -> None:
    for text in ("96 opus/48000/2", "0 PCMU/8000"):
        assert RtpMap.parse(text).to_sdp() == text
    for text in ("53020", "53020 IN IP4 126.16.64.4", "9 IN IP6 ::"):
        assert Rtcp.parse(text).to_sdp() == text


def test_line_numbers_are_kept() -> None:
    sdp = SessionDescription.parse(ASTERISK)
    assert [line.number for line in sdp.all_lines()] == list(range(1, 23))
    assert sdp.media[0].lines[0].where == "line 6"


def test_trickle_sdpfrag() -> None:
    # RFC 8840 §9.1 example shape: no v= line, credentials, then one m= per stream.
    body = join(["a=ice-ufrag:EsAw", "a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y", "a=ice-options:trickle",
                 "m=audio 9 RTP/AVP 0", "a=mid:1",
                 "a=candidate:1 1 UDP 2130706431 192.0.2.1 5000 typ host",
                 "a=end-of-candidates"])
    fragment = parse(body, fragment=True)
    assert fragment.to_text() == body
    (audio,) = fragment.media
    assert audio.ice_credentials(fragment) == IceCredentials("EsAw", "bP+XJMM09aR8AiX1jdukzR6Y")
    assert audio.candidates()[0].address == "192.0.2.1"
    assert audio.end_of_candidates(fragment)
    with pytest.raises(SdpError, match="must start with v="):
        parse(body)
    with pytest.raises(SdpError, match="unexpected v= line"):
        parse("a=x\r\nv=0\r\n", fragment=True)
