"""Mutations touch only their own lines: everything else stays byte for byte (diffed)."""

from __future__ import annotations

import difflib

import pytest

from icerelay.errors import SdpError
from icerelay.sdp import (
    Candidate,
    Connection,
    Direction,
    IceCredentials,
    MediaDescription,
    MediaLine,
    Origin,
    RemoteCandidate,
    Rtcp,
    SessionDescription,
    parse,
)
from icerelay.sdp.lines import Line

from .samples import ASTERISK, CHROME, IPV6, LF, LINPHONE, SLOPPY, join


def changes(before: str, after: str) -> list[tuple[str, list[str], list[str]]]:
    """The changed hunks as (kind, removed lines, added lines), line endings included."""
    old = before.splitlines(keepends=True)
    new = after.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    return [(tag, old[i1:i2], new[j1:j2])
            for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


# A low-priority relay candidate as issue 5's relay inserts it: type preference 0, local
# preference 65535, component 1.
RELAY_CANDIDATE = Candidate("R1", 1, "UDP", (0 << 24) + (65535 << 8) + (256 - 1), "198.51.100.1",
                            40000, "relay", "10.0.1.40", 17234)


def test_set_media_connection_adds_line_after_m() -> None:
    sdp = parse(ASTERISK)
    sdp.media[0].set_connection("203.0.113.7")
    assert changes(ASTERISK, sdp.to_text()) == [
        ("insert", [], ["c=IN IP4 203.0.113.7\r\n"]),
    ]
    assert sdp.to_text().index("c=IN IP4 203.0.113.7") > sdp.to_text().index("m=audio")
    assert parse(sdp.to_text()).media[0].connection == Connection("IN", "IP4", "203.0.113.7")


def test_set_connection_replaces_in_place_keeping_line_ending() -> None:
    sdp = parse(LINPHONE)
    sdp.set_connection(Connection.for_address("2001:db8::1"))
    assert changes(LINPHONE, sdp.to_text()) == [
        ("replace", ["c=IN IP4 192.168.1.20\n"], ["c=IN IP6 2001:db8::1\n"]),
    ]


def test_set_connection_at_session_level_goes_before_t() -> None:
    text = join(["v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0", "m=audio 1 RTP/AVP 0",
                 "c=IN IP4 10.0.0.1"])
    sdp = parse(text)
    sdp.set_connection("192.0.2.1")
    sdp.media[0].set_connection(None)
    assert sdp.to_text() == join(["v=0", "o=- 1 1 IN IP4 h", "s=-", "c=IN IP4 192.0.2.1",
                                  "t=0 0", "m=audio 1 RTP/AVP 0"])


def test_set_port_rewrites_only_m_line() -> None:
    sdp = parse(CHROME)
    sdp.media[1].set_port(0)
    assert changes(CHROME, sdp.to_text()) == [
        ("replace", ["m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"],
         ["m=video 0 UDP/TLS/RTP/SAVPF 96 97\r\n"]),
    ]


def test_set_rtcp_in_place_add_and_remove() -> None:
    sdp = parse(LINPHONE)
    sdp.media[0].set_rtcp(Rtcp(40001, "IN", "IP4", "198.51.100.1"))
    assert changes(LINPHONE, sdp.to_text()) == [
        ("replace", ["a=rtcp:7079\n"], ["a=rtcp:40001 IN IP4 198.51.100.1\n"]),
    ]
    sdp = parse(ASTERISK)
    sdp.media[0].set_rtcp(Rtcp(17235))
    assert changes(ASTERISK, sdp.to_text()) == [("insert", [], ["a=rtcp:17235\r\n"])]
    assert sdp.to_text().endswith("a=sendrecv\r\na=rtcp:17235\r\n")
    sdp.media[0].set_rtcp(None)
    assert sdp.to_text() == ASTERISK


def test_remove_ice_removes_only_ice_lines() -> None:
    sdp = parse(CHROME)
    removed = sdp.remove_all_ice()
    assert removed == 6 + 3 + 3
    hunks = changes(CHROME, sdp.to_text())
    gone = [line for _, old, new in hunks for line in old if not new]
    assert all(hunk[2] == [] for hunk in hunks)
    assert all(line.startswith(("a=candidate:", "a=ice-", "a=end-of-candidates")) for line in gone)
    assert len(gone) == removed
    assert "a=ice" not in sdp.to_text() and "candidate" not in sdp.to_text()


def test_remove_ice_at_session_and_media_level() -> None:
    sdp = parse(IPV6)
    assert sdp.remove_all_ice() == 9
    assert "ice" not in sdp.to_text() and "candidate" not in sdp.to_text()
    assert "a=rtcp:49171 IN IP6 2001:db8:0:1::7\r\n" in sdp.to_text()


def test_add_candidates_after_existing_ones() -> None:
    sdp = parse(ASTERISK)
    relay2 = Candidate("R1", 2, "UDP", 16777214, "198.51.100.1", 40001, "relay",
                       "10.0.1.40", 17235)
    sdp.media[0].add_candidates([RELAY_CANDIDATE, relay2])
    text = sdp.to_text()
    assert changes(ASTERISK, text) == [
        ("insert", [], [f"a=candidate:{RELAY_CANDIDATE.to_sdp()}\r\n",
                        f"a=candidate:{relay2.to_sdp()}\r\n"]),
    ]
    assert text.index("S8e86c939 2 UDP") < text.index("a=candidate:R1 1")
    assert parse(text).media[0].candidates()[-2:] == [RELAY_CANDIDATE, relay2]


def test_add_candidates_goes_before_end_of_candidates_when_none_yet() -> None:
    sdp = parse(CHROME)
    audio = sdp.media[0]
    audio.remove_candidates()
    audio.add_candidates([RELAY_CANDIDATE])
    names = [line.attribute_name for line in audio.lines]
    assert names.index("candidate") + 1 == names.index("end-of-candidates")


def test_add_candidates_after_credentials_or_at_end() -> None:
    text = join(["v=0", "m=audio 1 RTP/AVP 0", "a=ice-ufrag:abcd", "a=ice-pwd:x",
                 "a=sendrecv"], final=False)
    sdp = parse(text)
    sdp.media[0].add_candidates([RELAY_CANDIDATE])
    assert sdp.to_text().split("\r\n")[4] == "a=candidate:" + RELAY_CANDIDATE.to_sdp()
    # The body had no final line ending and still has none; the former last line gets one.
    bare = parse("v=0\nm=audio 1 RTP/AVP 0")
    bare.media[0].add_candidates([RELAY_CANDIDATE])
    assert bare.to_text() == "v=0\nm=audio 1 RTP/AVP 0\na=candidate:" + RELAY_CANDIDATE.to_sdp()
    bare.media[0].remove_candidates()
    assert bare.to_text() == "v=0\nm=audio 1 RTP/AVP 0"


def test_removing_the_last_line_keeps_no_final_newline() -> None:
    text = join(["v=0", "m=audio 1 RTP/AVP 0", "a=rtcp-mux", "a=ice-lite"], LF, final=False)
    sdp = parse(text)
    sdp.set_ice_lite(False)
    assert sdp.to_text() == "v=0\nm=audio 1 RTP/AVP 0\na=rtcp-mux"
    sdp.media[0].set_rtcp_mux(False)
    sdp.media[0].set_direction(Direction.INACTIVE)
    assert sdp.to_text() == "v=0\nm=audio 1 RTP/AVP 0\na=inactive"


def test_new_lines_use_the_dominant_line_ending() -> None:
    sdp = parse(LINPHONE)
    sdp.media[1].set_rtcp_mux(True)
    assert sdp.to_text() == LINPHONE + "a=rtcp-mux\n"


def test_appended_lines_go_before_trailing_blank_lines() -> None:
    sdp = parse("v=0\r\nm=audio 1 RTP/AVP 0\r\n\r\n")
    sdp.media[0].set_direction(Direction.SENDONLY)
    assert sdp.to_text() == "v=0\r\nm=audio 1 RTP/AVP 0\r\na=sendonly\r\n\r\n"


def test_generic_attribute_operations_keep_positions() -> None:
    sdp = parse(ASTERISK)
    audio = sdp.media[0]
    audio.replace_attribute("ptime", "30")
    assert changes(ASTERISK, sdp.to_text()) == [("replace", ["a=ptime:20\r\n"],
                                                 ["a=ptime:30\r\n"])]
    audio.replace_attribute("rtpmap", "0 PCMU/8000")
    assert sdp.to_text().count("a=rtpmap") == 1
    assert audio.remove_attributes("nothing") == 0
    assert audio.remove_attributes("candidate") == 6
    audio.add_attribute("maxptime", "60")
    assert audio.lines[-1].text == "a=maxptime:60" and audio.lines[-2].text == "a=sendrecv"
    sdp.add_attribute("tool", "icerelay")
    assert sdp.lines[-1].text == "a=tool:icerelay"
    with pytest.raises(SdpError):
        audio.add_attribute("bad\r\na=injected")
    with pytest.raises(SdpError):
        audio.add_attribute("ok", "bad\nm=audio 1 RTP/AVP 0")


def test_direction_set_in_place() -> None:
    sdp = parse(ASTERISK)
    sdp.media[0].set_direction(Direction.SENDONLY)
    assert changes(ASTERISK, sdp.to_text()) == [("replace", ["a=sendrecv\r\n"],
                                                 ["a=sendonly\r\n"])]
    sdp.media[0].set_direction(None)
    assert sdp.media[0].own_direction is None


def test_set_origin_in_place_and_next_version() -> None:
    sdp = parse(ASTERISK)
    origin = sdp.origin
    assert origin is not None
    sdp.set_origin(Origin(origin.username, origin.session_id, origin.session_version, "IN", "IP4",
                          "198.51.100.1").next_version())
    assert changes(ASTERISK, sdp.to_text()) == [
        ("replace", ["o=root 1903343929 1903343929 IN IP4 10.0.1.40\r\n"],
         ["o=root 1903343929 1903343930 IN IP4 198.51.100.1\r\n"]),
    ]


def test_ice_setters() -> None:
    sdp = parse(ASTERISK)
    audio = sdp.media[0]
    audio.set_ice_credentials(IceCredentials("abcd", "0123456789abcdef012345"))
    assert changes(ASTERISK, sdp.to_text()) == [
        ("replace", ["a=ice-ufrag:0d9cc44338ad8ced48b2d92c34556f4e\r\n",
                     "a=ice-pwd:193c1361446d012a1e298d5278b5c4b6\r\n"],
         ["a=ice-ufrag:abcd\r\n", "a=ice-pwd:0123456789abcdef012345\r\n"]),
    ]
    with pytest.raises(SdpError, match="ice-pwd"):
        audio.set_ice_credentials(IceCredentials("abcd", "short"))
    audio.set_ice_options(["trickle", "ice2"])
    audio.set_ice_mismatch(True)
    audio.set_end_of_candidates(True)
    audio.set_remote_candidates([RemoteCandidate(1, "10.0.1.40", 17234)])
    sdp.set_ice_lite(True)
    reparsed = parse(sdp.to_text())
    media = reparsed.media[0]
    assert media.ice_options(reparsed) == ("trickle", "ice2")
    assert media.ice_mismatch and media.end_of_candidates(reparsed) and reparsed.ice_lite
    assert media.remote_candidates == (RemoteCandidate(1, "10.0.1.40", 17234),)
    audio.set_ice_options([])
    audio.set_ice_mismatch(False)
    audio.set_end_of_candidates(False)
    audio.set_remote_candidates([])
    audio.set_ice_credentials(None)
    sdp.set_ice_lite(False)
    assert "ice" not in sdp.to_text().replace("candidate", "")


def test_set_media_line_and_add_media() -> None:
    sdp = parse(SLOPPY)
    sdp.media[0].set_port(4002)
    # The changed m= line is re-rendered with single spaces; its own CRLF is kept.
    assert changes(SLOPPY, sdp.to_text()) == [("replace", ["m=audio  4000 RTP/AVP 0\t\r\n"],
                                               ["m=audio 4002 RTP/AVP 0\r\n"])]
    sdp.add_media(MediaDescription([Line.make("m", "video 0 RTP/AVP 31")]))
    # SLOPPY has no final line ending, so neither has the appended media description.
    assert sdp.to_text().endswith("a=sendonly\r\nm=video 0 RTP/AVP 31")
    assert parse(sdp.to_text()).media[1].port == 0


def test_building_an_sdp_from_scratch() -> None:
    sdp = SessionDescription([Line.make("v", "0")])
    sdp.set_origin(Origin("-", "1", "1", "IN", "IP4", "192.0.2.1"))
    sdp.set_connection("192.0.2.1")
    audio = MediaDescription([Line.make("m", "audio 5000 RTP/AVP 0")])
    sdp.add_media(audio)
    audio.add_candidates([RELAY_CANDIDATE])
    assert sdp.to_text() == ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\n"
                             "m=audio 5000 RTP/AVP 0\r\na=candidate:" + RELAY_CANDIDATE.to_sdp()
                             + "\r\n")
    assert parse(sdp.to_text()) == sdp


def test_set_connection_address_and_port_for_one_stream() -> None:
    sdp = parse(CHROME)
    sdp.media[0].set_connection_address("2001:db8::7", 40000)
    assert changes(CHROME, sdp.to_text()) == [
        ("replace", ["m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n",
                     "c=IN IP4 0.0.0.0\r\n"],
         ["m=audio 40000 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n",
          "c=IN IP6 2001:db8::7\r\n"]),
    ]


def test_building_the_asterisk_offer_shape() -> None:
    sdp = SessionDescription.new(Origin("root", "1903343929", "1903343929", "IN", "IP4",
                                        "10.0.1.40"), "Asterisk PBX SVN-trunk-r372051",
                                 Connection.for_address("10.0.1.40"))
    audio = MediaDescription.new(MediaLine("audio", 17234, "RTP/AVP", ("0", "3", "8", "101")))
    sdp.add_media(audio)
    for value in ("rtpmap:0 PCMU/8000", "rtpmap:3 GSM/8000", "rtpmap:8 PCMA/8000",
                  "rtpmap:101 telephone-event/8000", "fmtp:101 0-16", "silenceSupp:off - - - -",
                  "ptime:20"):
        name, _, rest = value.partition(":")
        audio.add_attribute(name, rest)
    audio.set_ice_credentials(IceCredentials("0d9cc44338ad8ced48b2d92c34556f4e",
                                             "193c1361446d012a1e298d5278b5c4b6"))
    audio.add_candidates(parse(ASTERISK).media[0].candidates())
    audio.set_direction(Direction.SENDRECV)
    assert sdp.to_text() == ASTERISK
