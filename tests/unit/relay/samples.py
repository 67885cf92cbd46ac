"""SDP bodies shaped like what SIP phones and gateways really send, for the relay tests."""

from __future__ import annotations

CRLF = "\r\n"


def body(lines: list[str], eol: str = CRLF) -> bytes:
    """Join ``lines`` with ``eol`` (and a final one) into an SDP body."""
    return (eol.join(lines) + eol).encode()


# Asterisk with ICE (asterisk-ice.txt's INVITE body): session-level c=, media-level ICE, RTCP
# candidates, no a=rtcp.
ASTERISK = body(
    [
        "v=0",
        "o=root 1903343929 1903343929 IN IP4 10.0.1.40",
        "s=Asterisk PBX SVN-trunk-r372051",
        "c=IN IP4 10.0.1.40",
        "t=0 0",
        "m=audio 17234 RTP/AVP 0 3 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:3 GSM/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=silenceSupp:off - - - -",
        "a=ptime:20",
        "a=ice-ufrag:0d9cc44338ad8ced48b2d92c34556f4e",
        "a=ice-pwd:193c1361446d012a1e298d5278b5c4b6",
        "a=candidate:Ha000128qZ 1 UDP 2130706431 10.0.1.40 17234 typ host",
        "a=candidate:S8e86c939 1 UDP 1694498815 142.134.201.57 17234 typ srflx",
        "a=candidate:Ha000128 2 UDP 2130706430 10.0.1.40 17235 typ host",
        "a=candidate:S8e86c939 2 UDP 1694498814 142.134.201.57 17235 typ srflx",
        "a=sendrecv",
    ]
)

# Linphone through Kamailio: LF endings, session-level ICE credentials, a=rtcp, RTCP candidates,
# a disabled video stream, trailing blanks that must survive.
LINPHONE = body(
    [
        "v=0",
        "o=alice 3017 1458 IN IP4 192.168.1.20",
        "s=Talk",
        "c=IN IP4 192.168.1.20",
        "t=0 0",
        "a=ice-pwd:31ec21eb38b2ec6d36e8dc7b",
        "a=ice-ufrag:09f6ea7d",
        "m=audio 7078 RTP/AVP 96 0 8 101",
        "a=rtpmap:96 opus/48000/2",
        "a=fmtp:96 useinbandfec=1  ",
        "a=rtpmap:101 telephone-event/8000",
        "a=rtcp:7079",
        "a=candidate:1 1 UDP 2130706303 192.168.1.20 7078 typ host",
        "a=candidate:1 2 UDP 2130706302 192.168.1.20 7079 typ host",
        "a=candidate:2 1 UDP 1694498687 203.0.113.5 51000 typ srflx raddr 192.168.1.20 rport 7078",
        "a=candidate:2 2 UDP 1694498686 203.0.113.5 51001 typ srflx raddr 192.168.1.20 rport 7079",
        "a=rtcp-fb:* trr-int 1000\t",
        "m=video 0 RTP/AVP 96",
        "a=rtpmap:96 VP8/90000",
    ],
    "\n",
)

# A plain desk phone without ICE, media-level c=, a=rtcp with an address (RFC 3605).
PLAIN = body(
    [
        "v=0",
        "o=user1 53655765 2353687637 IN IP4 192.0.2.10",
        "s=-",
        "c=IN IP4 192.0.2.10",
        "t=0 0",
        "m=audio 6000 RTP/AVP 8 101",
        "c=IN IP4 192.0.2.11",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=rtcp:6001 IN IP4 192.0.2.11",
        "a=sendrecv",
    ]
)

# SIPp's default-ish UAS answer: minimal, no ICE.
SIPP_ANSWER = body(
    [
        "v=0",
        "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=audio 6010 RTP/AVP 8",
        "a=rtpmap:8 PCMA/8000",
    ]
)

# IPv6 with rtcp-mux.
IPV6 = body(
    [
        "v=0",
        "o=bob 2890844526 2890844527 IN IP6 2001:db8::10",
        "s=-",
        "c=IN IP6 2001:db8::10",
        "t=0 0",
        "m=audio 49170 RTP/AVP 0",
        "a=rtcp-mux",
        "a=rtcp:49170",
    ]
)

# Hold, RFC 3264 style (sendonly) and RFC 2543 style (c=0.0.0.0).
HOLD_SENDONLY = PLAIN.replace(b"a=sendrecv", b"a=sendonly")
HOLD_ZERO = body(
    [
        "v=0",
        "o=user1 53655765 2353687638 IN IP4 192.0.2.10",
        "s=-",
        "c=IN IP4 0.0.0.0",
        "t=0 0",
        "m=audio 6000 RTP/AVP 8",
        "a=rtpmap:8 PCMA/8000",
    ]
)

# Audio and video, the video rejected in the answer.
AUDIO_VIDEO = body(
    [
        "v=0",
        "o=- 7 7 IN IP4 198.51.100.2",
        "s=-",
        "c=IN IP4 198.51.100.2",
        "t=0 0",
        "m=audio 10000 RTP/AVP 0",
        "m=video 10002 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
    ]
)
AUDIO_VIDEO_REJECTED = body(
    [
        "v=0",
        "o=- 9 9 IN IP4 198.51.100.3",
        "s=-",
        "c=IN IP4 198.51.100.3",
        "t=0 0",
        "m=audio 20000 RTP/AVP 0",
        "m=video 0 RTP/AVP 96",
    ]
)
