"""icerelay.stun.inet converts exactly as the C library's inet_pton/inet_ntop, which it replaced."""

from __future__ import annotations

import itertools
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icerelay.stun.inet import ipv4_number, pack_ip, unpack_ip


def _pton(text: str) -> bytes | None:
    try:
        if ":" in text:
            return socket.inet_pton(socket.AF_INET6, text.partition("%")[0])
        return socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return None


def _pack(text: str) -> bytes | None:
    try:
        return pack_ip(text)
    except ValueError:
        return None


def test_every_zero_run_is_written_as_inet_ntop_writes_it() -> None:
    for words in itertools.product((0, 1, 0xFFFF, 0x1234), repeat=8):
        raw = bytes.fromhex("".join(f"{word:04x}" for word in words))
        text = socket.inet_ntop(socket.AF_INET6, raw)
        assert unpack_ip(raw) == text
        assert pack_ip(text) == raw


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "::",
        ":::",
        "1::",
        "::1",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7::8",
        "::1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:1.2.3.4",
        "1:2:3:4:5:6:7:1.2.3.4",
        "::1.2.3.4",
        "::ffff:1.2.3.4",
        ":1.2.3.4",
        "1.2.3.4",
        "01.2.3.4",
        "0.0.0.0",
        "255.255.255.255",
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        " 1.2.3.4",
        "\u0661.2.3.4",
        "1::2::3",
        "12345::",
        "fe80::1%eth0",
        "::ffff:01.2.3.4",
        "1:2:3:4:5::1.2.3.4",
        "1:2:3:4:5:6::1.2.3.4",
        "::1.2.3.4:5",
        "1:2:3:4:5:6:7:8:9",
        "::0:1.2.3.4",
        "0x1::",
        "+1::",
        "1_0::",
    ],
)
def test_text_is_accepted_and_refused_as_by_inet_pton(text: str) -> None:
    assert _pack(text) == _pton(text)


@given(st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16))
def test_packed_addresses_round_trip_as_with_inet_ntop(raw: bytes) -> None:
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    text = unpack_ip(raw)
    assert text == socket.inet_ntop(family, raw)
    assert pack_ip(text) == raw


@given(st.text(alphabet="0123456789abcdefABCDEF:.%g ", max_size=24))
def test_any_text_gets_the_answer_inet_pton_gives(text: str) -> None:
    assert _pack(text) == _pton(text)


def _number(text: str) -> bytes | None:
    try:
        return ipv4_number(text).to_bytes(4, "big")
    except ValueError:
        return None


@given(st.text(alphabet="0123456789.+- \u0661", max_size=20))
def test_ipv4_numbers_are_what_pack_ip_packs(text: str) -> None:
    expected = _pack(text) if ":" not in text else None
    assert _number(text) == expected


@pytest.mark.parametrize(
    "text", ["1.2.3.4", "0.0.0.0", "255.255.255.255", "01.2.3.4", "256.1.1.1", "1.2.3", " 1.2.3.4"]
)
def test_ipv4_numbers_of_the_edge_cases(text: str) -> None:
    assert _number(text) == _pton(text)
