"""Malformed SDP raises SdpError naming the line and the reason; sloppy but clear SDP parses."""

from __future__ import annotations

import pytest

from icerelay.errors import IcerelayError, SdpError
from icerelay.sdp import SessionDescription, parse

from .samples import ASTERISK, ASTERISK_LINES, join


def with_line(index: int, replacement: str) -> str:
    lines = list(ASTERISK_LINES)
    lines[index] = replacement
    return join(lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty SDP"),
        (b"", "empty SDP"),
        ("o=- 1 1 IN IP4 h\r\n", "line 1: an SDP must start with v="),
        ("v=1\r\n", "line 1: unsupported SDP version"),
        ("\r\nv=0\r\n", "line 1: an SDP must start with v="),
        ("v=0\r\nhello\r\n", "line 2: expected '<letter>=<value>'"),
        ("v=0\r\n a=x\r\n", "line 2: expected '<letter>=<value>'"),
        ("v=0\r\nab=x\r\n", "line 2: expected '<letter>=<value>'"),
        ("v=0\r\n1=x\r\n", "line 2: line type must be an ASCII letter"),
        ("v=0\r\né=x\r\n", "line 2: line type must be an ASCII letter"),
        ("v=0\r\na=x\ry\r\n", "line 2: carriage return not followed by line feed"),
        ("v=0\r\na=x\r", "line 2: carriage return"),
        ("v=0\r\nv=0\r\n", "line 2: unexpected v= line"),
        ("v=0\r\na=\r\n", "line 2: attribute without a name"),
        ("v=0\r\na=:x\r\n", "line 2: attribute without a name"),
        (with_line(1, "o=root 1 IN IP4 10.0.1.40"), "line 2: o=: o= needs 6 fields"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\no=- 1 1 IN IP4 h\r\n", "line 3: second o= line"),
        (with_line(3, "c=IN IP4"), "line 4: c=: c= needs 3 fields"),
        (with_line(3, "c=IN IP4 10.0.0.1/x"), "line 4: c=: c= TTL must be a decimal number"),
        (with_line(3, "c=IN IP6 ::1/2/3"), "more than one '/' suffix"),
        (with_line(5, "m=audio RTP/AVP 0"), "line 6: m=: m= port must be a decimal number"),
        (with_line(5, "m=audio 70000 RTP/AVP 0"), "line 6: m=: m= port 70000 is out of range"),
        (with_line(5, "m=audio 1/0 RTP/AVP 0"), "line 6: m=: m= number of ports 0"),
        (with_line(5, "m=audio 1"), "line 6: m=: m= needs at least 3 fields"),
        (with_line(6, "o=- 1 1 IN IP4 h"), "line 7: o= line inside a media description"),
        (with_line(6, "c=IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.5"), "line 8: second c= line"),
        (with_line(16, "a=candidate:Ha00030f 0 UDP 2130706431 10.0.3.15 17234 typ host"),
         "line 17: a=candidate: candidate component-id 0 is out of range 1..256"),
        (with_line(16, "a=candidate"), "line 17: a=candidate: candidate needs a value"),
        (with_line(13, "a=ice-ufrag:a:b"), "line 14: a=ice-ufrag: ice-ufrag must not contain"),
        (with_line(13, "a=ice-ufrag:"), "line 14: a=ice-ufrag: ice-ufrag needs exactly one"),
        (with_line(14, "a=ice-pwd:one two"), "line 15: a=ice-pwd: ice-pwd needs exactly one"),
        (with_line(12, "a=ice-pwd:x"), "line 15: second a=ice-pwd at media level"),
        (with_line(12, "a=ice-options:"), "line 13: a=ice-options: ice-options needs at least"),
        (with_line(12, "a=ice-pacing:fast"), "line 13: a=ice-pacing: ice-pacing must be"),
        (with_line(12, "a=remote-candidates:1 10.0.0.1"), "line 13: a=remote-candidates:"),
        (with_line(12, "a=remote-candidates:0 10.0.0.1 5"), "component-id 0"),
        (with_line(12, "a=rtcp:x"), "line 13: a=rtcp: a=rtcp port must be a decimal number"),
        (with_line(12, "a=rtcp:1 IN IP4"), "line 13: a=rtcp: a=rtcp needs a port"),
        (with_line(12, "a=rtcp:1\r\na=rtcp:2"), "line 14: second a=rtcp at media level"),
        (with_line(12, "a=sendonly"), "line 22: second direction attribute a=sendrecv"),
        (b"v=0\r\ns=\xff\r\n", "not valid UTF-8"),
        (b"v=0\r\ns=\xc3\r\n", "not valid UTF-8"),
    ],
)
def test_malformed_sdp(text: str | bytes, message: str) -> None:
    with pytest.raises(SdpError) as caught:
        SessionDescription.parse(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, IcerelayError)


def test_non_ascii_text_is_fine() -> None:
    text = "v=0\r\ns=Grüße 電話\r\ni=\u00e9\r\n"
    sdp = parse(text.encode())
    assert sdp.session_name == "Grüße 電話"
    assert sdp.to_bytes() == text.encode()


def test_unknown_attributes_with_odd_values_are_kept_unvalidated() -> None:
    text = ASTERISK.replace("a=ptime:20", "a=ptime:twenty\r\na=rtpmap:nonsense\r\na=fmtp")
    sdp = parse(text)
    assert sdp.to_text() == text
    # A malformed rtpmap only matters once someone asks for that payload type.
    with pytest.raises(SdpError, match=r"line 14: a=rtpmap: a=rtpmap needs"):
        sdp.media[0].rtpmaps()
    assert sdp.media[0].codec_name(0) == "PCMU"


def test_errors_from_lines_changed_by_hand_name_the_line() -> None:
    sdp = parse(ASTERISK)
    sdp.media[0].lines[0] = sdp.media[0].lines[0].with_value("audio x RTP/AVP 0")
    with pytest.raises(SdpError, match="line 6: m=: m= port must be a decimal number"):
        _ = sdp.media[0].port
