"""Real-world-shaped SDP bodies for the SDP tests, built line by line so the line endings are
explicit (no editor or git setting can change them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CRLF = "\r\n"
LF = "\n"

SEED = Path("/work/shared/seeds/asterisk-ice.txt")


def join(lines: list[str], eol: str = CRLF, final: bool = True) -> str:
    """Join lines with ``eol``; ``final=False`` leaves the last line without an ending."""
    return eol.join(lines) + (eol if final else "")


# The INVITE body shown in asterisk-ice.txt (line-number prefixes and display spaces removed).
ASTERISK_LINES = [
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
    "a=candidate:Ha00030f 1 UDP 2130706431 10.0.3.15 17234 typ host",
    "a=candidate:S8e86c939 1 UDP 1694498815 142.134.201.57 17234 typ srflx",
    "a=candidate:Ha000128 2 UDP 2130706430 10.0.1.40 17235 typ host",
    "a=candidate:Ha00030f 2 UDP 2130706430 10.0.3.15 17235 typ host",
    "a=candidate:S8e86c939 2 UDP 1694498814 142.134.201.57 17234 typ srflx",
    "a=sendrecv",
]
ASTERISK = join(ASTERISK_LINES)

# A Chrome-style WebRTC offer: bundle, trickle and renomination ice-options, mDNS host candidates,
# TCP candidates with tcptype, extension attributes, end-of-candidates, two media sections.
CHROME_LINES = [
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS stream0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0 "
    "network-id 1 network-cost 10",
    "a=candidate:2930174203 1 udp 2122194687 f8b4e2c1-7a1d-4b5e-9a1c-2b3c4d5e6f70.local "
    "56143 typ host generation 0 network-id 2",
    "a=candidate:435653019 1 tcp 1845501695 192.168.0.196 9 typ host tcptype active generation 0 "
    "network-id 1 network-cost 10",
    "a=candidate:842163049 1 udp 1677729535 203.0.113.77 46243 typ srflx raddr 192.168.0.196 "
    "rport 46243 generation 0 ufrag EsAw network-id 1 network-cost 10",
    "a=candidate:1853887674 1 udp 33562367 198.51.100.9 61386 typ relay raddr 203.0.113.77 "
    "rport 46243 generation 0 ufrag EsAw network-id 1",
    "a=end-of-candidates",
    "a=ice-ufrag:EsAw",
    "a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y",
    "a=ice-options:trickle renomination",
    "a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:"
    "34:8E:5E:EA:6F:AF:52:CE:E6:0F",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=sendrecv",
    "a=msid:stream0 track0",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:3735928559 cname:4TOk42mSjXCkVIa6",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:EsAw",
    "a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y",
    "a=ice-options:trickle renomination",
    "a=mid:1",
    "a=recvonly",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
]
CHROME = join(CHROME_LINES)

# A Linphone-style SIP offer as a Kamailio proxy forwards it: LF line endings, ICE credentials at
# session level, a=rtcp with an explicit port, RTCP candidates, trailing blanks on two lines.
LINPHONE_LINES = [
    "v=0",
    "o=alice 3017 1458 IN IP4 192.168.1.20",
    "s=Talk",
    "c=IN IP4 192.168.1.20",
    "t=0 0",
    "a=ice-pwd:31ec21eb38b2ec6d36e8dc7b",
    "a=ice-ufrag:09f6ea7d",
    "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
    "m=audio 7078 RTP/AVP 96 97 0 8 18 101",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:97 speex/16000",
    "a=fmtp:97 vbr=on  ",
    "a=fmtp:18 annexb=yes",
    "a=rtpmap:101 telephone-event/8000",
    "a=rtcp:7079",
    "a=candidate:1 1 UDP 2130706303 192.168.1.20 7078 typ host",
    "a=candidate:1 2 UDP 2130706302 192.168.1.20 7079 typ host",
    "a=candidate:2 1 UDP 1694498687 203.0.113.5 51000 typ srflx raddr 192.168.1.20 rport 7078",
    "a=candidate:2 2 UDP 1694498686 203.0.113.5 51001 typ srflx raddr 192.168.1.20 rport 7079",
    "a=rtcp-fb:* trr-int 1000\t",
    "a=rtcp-fb:* ccm tmmbr",
    "m=video 0 RTP/AVP 96",
    "a=rtpmap:96 VP8/90000",
]
LINPHONE = join(LINPHONE_LINES, LF)

# An IPv6 offer: IN IP6 connection, a=rtcp with an IPv6 address, IPv6 candidates and
# remote-candidates as the controlling agent sends them in its updated offer.
IPV6_LINES = [
    "v=0",
    "o=bob 2890844526 2890844527 IN IP6 2001:db8::10",
    "s=-",
    "c=IN IP6 2001:db8::10",
    "t=0 0",
    "a=ice-lite",
    "m=audio 49170 RTP/AVP 8 0",
    "c=IN IP6 2001:db8:0:1::7",
    "a=rtcp:49171 IN IP6 2001:db8:0:1::7",
    "a=ice-ufrag:8hhY",
    "a=ice-pwd:asd88fgpdd777uzjYhagZg",
    "a=ice-pacing:50",
    "a=candidate:1 1 UDP 2130706431 2001:db8:0:1::7 49170 typ host",
    "a=candidate:1 2 UDP 2130706430 2001:db8:0:1::7 49171 typ host",
    "a=candidate:2 1 TCP 1694498815 2001:db8::99 9 typ srflx raddr 2001:db8:0:1::7 rport 9 "
    "tcptype passive",
    "a=remote-candidates:1 2001:db8::55 5000 2 2001:db8::55 5001",
    "a=ice-mismatch",
    "a=inactive",
]
IPV6 = join(IPV6_LINES)

# Things sloppy stacks do that must still round-trip: mixed endings, trailing blanks, an unknown
# line type, a blank line at the end, extra spaces between fields, no final newline.
SLOPPY = (
    "v=0\r\n"
    "o=-  1 1 IN IP4 10.0.0.1 \r\n"
    "s= \n"
    "c=IN IP4  10.0.0.1\r\n"
    "t=0 0\n"
    "y=0123456789\r\n"
    "m=audio  4000 RTP/AVP 0\t\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=X-nat:0\r\n"
    "\r\n"
    "a=sendonly"
)

SAMPLES = {
    "asterisk": ASTERISK,
    "chrome": CHROME,
    "linphone": LINPHONE,
    "ipv6": IPV6,
    "sloppy": SLOPPY,
}


def asterisk_from_seed() -> str:
    """The SDP of asterisk-ice.txt, read from the seed file (CRLF endings, as on the wire).

    The seed lives outside the repository; tests that use it skip where it is absent (the same
    SDP is in :data:`ASTERISK_LINES`, so nothing goes untested).
    """
    if not SEED.exists():
        pytest.skip(f"seed document {SEED} is not on this machine (ASTERISK covers the same SDP)")
    numbered = re.compile(r"^(\d+): (.*)$")
    lines = []
    for line in SEED.read_text(encoding="utf-8").splitlines():
        match = numbered.match(line)
        if match:
            lines.append(match.group(2).rstrip(" "))
    return join(lines)
