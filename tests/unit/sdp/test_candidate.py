"""The RFC 8839 candidate grammar: raddr/rport, tcptype, extensions, FQDN, IPv6, errors."""

from __future__ import annotations

import pytest

from icerelay.errors import SdpError
from icerelay.sdp import Candidate

CANONICAL = [
    "Ha000128qZ 1 UDP 2130706431 10.0.1.40 17234 typ host",
    "S8e86c939 2 UDP 1694498814 142.134.201.57 17234 typ srflx",
    "842163049 1 udp 1677729535 203.0.113.77 46243 typ srflx raddr 192.168.0.196 rport 46243 "
    "generation 0 ufrag EsAw network-id 1 network-cost 10",
    "435653019 1 tcp 1845501695 192.168.0.196 9 typ host tcptype active generation 0",
    "2 1 TCP 1694498815 2001:db8::99 9 typ srflx raddr 2001:db8:0:1::7 rport 9 tcptype passive",
    "1 1 UDP 2122194687 f8b4e2c1-7a1d-4b5e-9a1c-2b3c4d5e6f70.local 56143 typ host",
    "a+/Z 256 UDP 0 ::1 0 typ prflx",
    "x 1 UDP 4294967295 turn.example.net 65535 typ relay raddr 0.0.0.0 rport 0",
    "fdn 1 dccp 1 192.0.2.1 1 typ other-type extension-name extension-value",
    "r 1 UDP 5 192.0.2.1 1 typ relay raddr 192.0.2.2",
    "r 1 UDP 5 192.0.2.1 1 typ relay rport 7",
    "12345678901234567890123456789012 1 UDP 5 192.0.2.1 1 typ host tcptype so",
]


@pytest.mark.parametrize("value", CANONICAL)
def test_canonical_candidates_round_trip(value: str) -> None:
    candidate = Candidate.parse(value)
    assert candidate.to_sdp() == value
    assert Candidate.parse(candidate.to_sdp()) == candidate
    assert candidate.to_attribute() == "candidate:" + value


def test_all_fields() -> None:
    candidate = Candidate.parse(
        "842163049 1 udp 1677729535 203.0.113.77 46243 typ srflx raddr 192.168.0.196 "
        "rport 46243 generation 0 network-id 1")
    assert candidate == Candidate(
        foundation="842163049", component=1, transport="udp", priority=1677729535,
        address="203.0.113.77", port=46243, type="srflx", related_address="192.168.0.196",
        related_port=46243, tcptype=None, extensions=(("generation", "0"), ("network-id", "1")))


@pytest.mark.parametrize(
    "form",
    [
        "candidate:{}",
        "a=candidate:{}",
        "a=candidate:{}\r\n",
        "  candidate:{}  ",
        "{}\n",
    ],
)
def test_trickle_forms_are_accepted(form: str) -> None:
    value = "S8e86c939 1 UDP 1694498815 142.134.201.57 17234 typ srflx"
    assert Candidate.parse(form.format(value)) == Candidate.parse(value)


def test_lenient_layout() -> None:
    # Several blanks and tabs between fields; keywords after extensions; case kept for transport.
    candidate = Candidate.parse("1  1\tUdP 10 192.0.2.1 5 typ srflx generation 0 rport 6 "
                                "raddr 10.0.0.1")
    assert candidate.transport == "UdP" and candidate.is_udp and not candidate.is_tcp
    assert (candidate.related_address, candidate.related_port) == ("10.0.0.1", 6)
    assert candidate.extensions == (("generation", "0"),)
    # Written back in canonical order.
    assert candidate.to_sdp() == ("1 1 UdP 10 192.0.2.1 5 typ srflx raddr 10.0.0.1 rport 6 "
                                  "generation 0")


def test_family() -> None:
    assert Candidate.parse("1 1 UDP 1 192.0.2.1 1 typ host").family == 4
    assert Candidate.parse("1 1 UDP 1 2001:db8::1 1 typ host").family == 6
    assert Candidate.parse("1 1 UDP 1 host.local 1 typ host").family is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "at least 8 fields"),
        ("1 1 UDP 1 192.0.2.1 1 typ", "at least 8 fields"),
        ("1 1 UDP 1 192.0.2.1 1 type host", "expected 'typ'"),
        ("bad-foundation 1 UDP 1 192.0.2.1 1 typ host", "foundation"),
        ("123456789012345678901234567890123 1 UDP 1 192.0.2.1 1 typ host", "foundation"),
        ("1 0 UDP 1 192.0.2.1 1 typ host", "component-id 0 is out of range 1..256"),
        ("1 257 UDP 1 192.0.2.1 1 typ host", "component-id 257"),
        ("1 x UDP 1 192.0.2.1 1 typ host", "component-id must be a decimal number"),
        ("1 1 UDP 4294967296 192.0.2.1 1 typ host", "priority 4294967296 is out of range"),
        ("1 1 UDP -1 192.0.2.1 1 typ host", "priority must be a decimal number"),
        ("1 1 UDP +5 192.0.2.1 1 typ host", "priority must be a decimal number"),
        ("1 1 UDP 1_0 192.0.2.1 1 typ host", "priority must be a decimal number"),
        ("1 1 UDP \u0661 192.0.2.1 1 typ host", "priority must be a decimal number"),
        ("1 1 UDP 1 192.0.2.1 65536 typ host", "port 65536 is out of range"),
        ("1 1 UDP 1 192.0.2.300 1 typ host", "not a valid IPv4 address"),
        ("1 1 UDP 1 2001:db8::g 1 typ host", "not a valid IPv6 address"),
        ("1 1 UDP 1 bad_host! 1 typ host", "neither an IP address nor a host name"),
        ("1 1 U(P 1 192.0.2.1 1 typ host", "transport must be a token"),
        ("1 1 UDP 1 192.0.2.1 1 typ host raddr", "has no value"),
        ("1 1 UDP 1 192.0.2.1 1 typ srflx raddr nope! rport 1", "raddr"),
        ("1 1 UDP 1 192.0.2.1 1 typ srflx raddr 10.0.0.1 rport 70000", "rport 70000"),
        ("1 1 TCP 1 192.0.2.1 1 typ host tcptype both", "tcptype must be active, passive or so"),
        ("1 1 UDP 1 192.0.2.1 1 typ srflx rport 1 rport 2", "rport appears twice"),
        ("1 1 UDP 1 192.0.2.1 1 typ host gen\x0b 0", "extension attribute name"),
        ("1 1 UDP 1 192.0.2.1 1 typ host gen 0\x00", "extension gen value"),
        ("1 1 UDP 1 192.0.2.1 1 typ host " + "9" * 100000, "has no value"),
    ],
)
def test_errors_name_the_field(value: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason.replace("(", r"\(").replace("+", r"\+")):
        Candidate.parse(value)


def test_huge_numbers_are_rejected_cheaply() -> None:
    with pytest.raises(SdpError, match="priority"):
        Candidate.parse("1 1 UDP " + "9" * 100000 + " 192.0.2.1 1 typ host")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"component": 0}, "component-id"),
        ({"priority": 2**32}, "priority"),
        ({"port": -1}, "port"),
        ({"related_port": 70000}, "rport"),
        ({"tcptype": "sideways"}, "tcptype"),
        ({"foundation": "with space"}, "foundation"),
        ({"address": "not an address"}, "connection-address"),
        ({"extensions": (("raddr", "1.2.3.4"),)}, "own field"),
        ({"extensions": (("name", "two words"),)}, "value"),
        ({"extensions": (("", "x"),)}, "name"),
    ],
)
def test_to_sdp_refuses_what_it_cannot_write(changes: dict[str, object], reason: str) -> None:
    fields: dict[str, object] = {
        "foundation": "1", "component": 1, "transport": "UDP", "priority": 1,
        "address": "192.0.2.1", "port": 1, "type": "host",
    }
    fields.update(changes)
    candidate = Candidate(**fields)  # type: ignore[arg-type]
    with pytest.raises(SdpError, match=reason):
        candidate.to_sdp()
