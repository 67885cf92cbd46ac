"""Byte-exact round trips: an SDP we do not change comes back exactly as it came."""

from __future__ import annotations

import pytest

from icerelay.sdp import SessionDescription

from .samples import (
    ASTERISK_LINES,
    CHROME_LINES,
    CRLF,
    IPV6_LINES,
    LF,
    LINPHONE_LINES,
    SAMPLES,
    asterisk_from_seed,
    join,
)

ALL_LINES = {
    "asterisk": ASTERISK_LINES,
    "chrome": CHROME_LINES,
    "linphone": LINPHONE_LINES,
    "ipv6": IPV6_LINES,
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_round_trip_as_text(name: str) -> None:
    text = SAMPLES[name]
    sdp = SessionDescription.parse(text)
    assert sdp.to_text() == text
    assert sdp.serialize() == text


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_round_trip_as_bytes(name: str) -> None:
    data = SAMPLES[name].encode()
    sdp = SessionDescription.parse(data)
    assert sdp.to_bytes() == data
    assert sdp.serialize() == data
    assert bytes(sdp) == data


@pytest.mark.parametrize("name", sorted(ALL_LINES))
@pytest.mark.parametrize("eol", [CRLF, LF], ids=["crlf", "lf"])
@pytest.mark.parametrize("final", [True, False], ids=["final-eol", "no-final-eol"])
def test_every_ending_style_round_trips(name: str, eol: str, final: bool) -> None:
    text = join(ALL_LINES[name], eol, final)
    assert SessionDescription.parse(text).to_text() == text


@pytest.mark.parametrize("name", sorted(ALL_LINES))
def test_mixed_endings_and_trailing_blanks_round_trip(name: str) -> None:
    lines = ALL_LINES[name]
    # Alternate CRLF/LF per line and give every third line trailing blanks.
    text = "".join(
        line + (" \t " if index % 3 == 0 else "") + (CRLF if index % 2 else LF)
        for index, line in enumerate(lines)
    )
    sdp = SessionDescription.parse(text)
    assert sdp.to_text() == text


def test_seed_file_round_trips() -> None:
    text = asterisk_from_seed()
    assert text == SAMPLES["asterisk"]
    assert SessionDescription.parse(text).to_text() == text


def test_seed_with_display_spaces_round_trips() -> None:
    # As printed in the seed, every line carries a trailing space: kept, yet not part of values.
    text = join([line + " " for line in ASTERISK_LINES])
    sdp = SessionDescription.parse(text)
    assert sdp.to_text() == text
    assert sdp.media[0].ice_credentials(sdp) is not None
    assert sdp.media[0].candidates()[0].foundation == "Ha000128qZ"


def test_blank_lines_and_unknown_types_are_kept() -> None:
    text = "v=0\r\n\r\no=- 1 1 IN IP4 h\r\nq=what\r\nZ=upper\r\n  \r\n\n"
    sdp = SessionDescription.parse(text)
    assert sdp.to_text() == text
    assert [line.type for line in sdp.lines] == ["v", "", "o", "q", "Z", "", ""]


def test_equality_is_by_serialized_text() -> None:
    a = SessionDescription.parse(SAMPLES["asterisk"])
    b = SessionDescription.parse(SAMPLES["asterisk"].encode())
    assert a == b
    b.media[0].set_port(1)
    assert a != b
    assert a != "not an sdp"


def test_copy_is_independent() -> None:
    original = SessionDescription.parse(SAMPLES["chrome"])
    copy = original.copy()
    copy.media[1].set_port(5)
    copy.add_attribute("tool", "x")
    assert original.to_text() == SAMPLES["chrome"]
    assert copy.to_text() != SAMPLES["chrome"]
