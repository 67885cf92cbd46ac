"""G.711 against the values of the Recommendation and round-trip error bounds."""

from __future__ import annotations

from array import array

import pytest

from icerelay.endpoint import g711


def test_known_codes() -> None:
    assert g711.linear_to_ulaw(0) == 0xFF
    assert g711.linear_to_alaw(0) == 0xD5
    assert g711.ulaw_to_linear(0xFF) == 0
    assert g711.ulaw_to_linear(0x80) == 32124  # loudest positive mu-law code
    assert g711.ulaw_to_linear(0x00) == -32124
    assert g711.alaw_to_linear(0xAA) == 32256  # loudest positive A-law code
    assert g711.alaw_to_linear(0x2A) == -32256
    assert g711.alaw_to_linear(0xD5) == 8 and g711.alaw_to_linear(0x55) == -8
    assert g711.linear_to_ulaw(32767) == 0x80 and g711.linear_to_ulaw(-32768) == 0x00
    assert g711.linear_to_alaw(32767) == 0xAA and g711.linear_to_alaw(-32768) == 0x2A


def test_every_code_survives_decode_encode() -> None:
    # 0x7F is mu-law's "negative zero": it decodes to 0, which encodes as 0xFF.
    assert [c for c in range(256) if g711.linear_to_ulaw(g711.ulaw_to_linear(c)) != c] == [0x7F]
    assert [c for c in range(256) if g711.linear_to_alaw(g711.alaw_to_linear(c)) != c] == []


@pytest.mark.parametrize(("encode", "decode"), [
    (g711.linear_to_ulaw, g711.ulaw_to_linear), (g711.linear_to_alaw, g711.alaw_to_linear),
])
def test_round_trip_error_is_within_half_a_step(encode, decode) -> None:  # type: ignore[no-untyped-def]
    # Logarithmic quantisation: the error grows with the magnitude, about 1/32 of it at most
    # (16 steps per segment, segment width doubling), plus the finest step near zero.
    for x in range(-32000, 32000, 3):
        assert abs(decode(encode(x)) - x) <= 8 + abs(x) / 32, x


def test_monotonic() -> None:
    previous = -40000
    for x in range(-32768, 32768, 17):
        value = g711.ulaw_to_linear(g711.linear_to_ulaw(x))
        assert value >= previous
        previous = value


def test_payload_helpers() -> None:
    samples = array("h", [0, 1000, -1000, 32767, -32768])
    assert g711.encode_ulaw(samples) == bytes(g711.linear_to_ulaw(s) for s in samples)
    assert next(iter(g711.decode_ulaw(g711.encode_ulaw(samples)))) == 0
    assert g711.decode_alaw(g711.encode_alaw(samples))[1] == g711.alaw_to_linear(
        g711.linear_to_alaw(1000))
    assert len(g711.encode_alaw(array("h", bytes(320)))) == 160
