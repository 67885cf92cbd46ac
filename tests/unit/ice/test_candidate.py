"""Candidate priorities, foundations, redundancy and SDP conversion (RFC 8445 section 5.1)."""

from __future__ import annotations

import pytest

from icerelay.errors import IceError
from icerelay.ice.candidate import (
    Candidate,
    CandidateType,
    candidate_priority,
    compute_foundation,
    is_redundant,
    make_local_candidate,
    prune_redundant,
)

# The SDP sample in asterisk-ice.txt (Asterisk 11 offer).
ASTERISK_LINES = [
    "Ha000128qZ 1 UDP 2130706431 10.0.1.40 17234 typ host",
    "Ha00030f 1 UDP 2130706431 10.0.3.15 17234 typ host",
    "S8e86c939 1 UDP 1694498815 142.134.201.57 17234 typ srflx",
    "Ha000128 2 UDP 2130706430 10.0.1.40 17235 typ host",
    "Ha00030f 2 UDP 2130706430 10.0.3.15 17235 typ host",
    "S8e86c939 2 UDP 1694498814 142.134.201.57 17234 typ srflx",
]


@pytest.mark.parametrize(
    ("candidate_type", "component", "expected"),
    [
        (CandidateType.HOST, 1, 2130706431),
        (CandidateType.HOST, 2, 2130706430),
        (CandidateType.SERVER_REFLEXIVE, 1, 1694498815),
        (CandidateType.SERVER_REFLEXIVE, 2, 1694498814),
    ],
)
def test_priorities_match_the_asterisk_sample(
    candidate_type: CandidateType, component: int, expected: int
) -> None:
    assert candidate_priority(candidate_type, component, 65535) == expected


def test_priority_formula_and_type_preferences() -> None:
    assert candidate_priority(CandidateType.PEER_REFLEXIVE, 1, 0) == (110 << 24) + 255
    assert candidate_priority(CandidateType.RELAYED, 1, 65535) == (65535 << 8) + 255
    assert candidate_priority(CandidateType.HOST, 256, 1) == (126 << 24) + 256
    # host > prflx > srflx > relay, whatever the local preference
    ordered = [
        candidate_priority(t, 1, lp)
        for t, lp in [
            (CandidateType.HOST, 0),
            (CandidateType.PEER_REFLEXIVE, 65535),
            (CandidateType.PEER_REFLEXIVE, 0),
            (CandidateType.SERVER_REFLEXIVE, 65535),
            (CandidateType.SERVER_REFLEXIVE, 0),
            (CandidateType.RELAYED, 65535),
        ]
    ]
    assert ordered == sorted(ordered, reverse=True)
    assert candidate_priority(CandidateType.RELAYED, 1, 65535, type_preference=126) == 2130706431


@pytest.mark.parametrize(
    "args",
    [
        (CandidateType.HOST, 0),
        (CandidateType.HOST, 257),
        (CandidateType.HOST, 1, 65536),
        (CandidateType.HOST, 1, -1),
    ],
)
def test_priority_rejects_out_of_range(args: tuple[CandidateType, int]) -> None:
    with pytest.raises(IceError):
        candidate_priority(*args)


def test_foundations_group_type_base_server_and_transport() -> None:
    host = compute_foundation(CandidateType.HOST, "10.0.1.40")
    assert host == compute_foundation(CandidateType.HOST, "10.0.1.40")
    assert host != compute_foundation(CandidateType.HOST, "10.0.3.15")
    srflx = compute_foundation(CandidateType.SERVER_REFLEXIVE, "10.0.1.40", "198.51.100.1")
    assert srflx != host
    assert srflx != compute_foundation(CandidateType.SERVER_REFLEXIVE, "10.0.1.40", "198.51.100.2")
    assert srflx != compute_foundation(
        CandidateType.SERVER_REFLEXIVE, "10.0.1.40", "198.51.100.1", "tcp"
    )
    # ice-chars, 1-32 of them (RFC 8839)
    assert host.isalnum() and 1 <= len(host) <= 32


def test_components_of_one_interface_share_the_foundation() -> None:
    rtp = make_local_candidate(CandidateType.HOST, ("10.0.1.40", 17234), ("10.0.1.40", 17234), 1)
    rtcp = make_local_candidate(CandidateType.HOST, ("10.0.1.40", 17235), ("10.0.1.40", 17235), 2)
    assert rtp.foundation == rtcp.foundation
    assert (rtp.priority, rtcp.priority) == (2130706431, 2130706430)


def test_local_candidates_carry_base_and_related_address() -> None:
    srflx = make_local_candidate(
        CandidateType.SERVER_REFLEXIVE,
        ("142.134.201.57", 17234),
        ("10.0.1.40", 17234),
        1,
        server="198.51.100.1",
    )
    assert srflx.base == ("10.0.1.40", 17234)
    assert (srflx.related_address, srflx.related_port) == ("10.0.1.40", 17234)
    assert srflx.priority == 1694498815
    relay = make_local_candidate(
        CandidateType.RELAYED,
        ("198.51.100.9", 50000),
        ("198.51.100.9", 50000),
        1,
        server="198.51.100.9",
        related=("142.134.201.57", 17234),
    )
    assert relay.base == relay.address
    assert relay.related_address == "142.134.201.57"


def test_redundant_candidates_are_pruned() -> None:
    base = ("192.0.2.1", 5000)
    host = make_local_candidate(CandidateType.HOST, base, base, 1)
    # No NAT: the STUN server reports the host address itself.
    same = make_local_candidate(CandidateType.SERVER_REFLEXIVE, base, base, 1, server="s1")
    other = make_local_candidate(
        CandidateType.SERVER_REFLEXIVE, ("203.0.113.1", 6000), base, 1, server="s1"
    )
    again = make_local_candidate(
        CandidateType.SERVER_REFLEXIVE, ("203.0.113.1", 6000), base, 1, server="s2"
    )
    assert is_redundant(same, [host])
    assert not is_redundant(other, [host])
    assert prune_redundant([same, host, other, again]) == [host, other]


def test_asterisk_candidates_parse_and_round_trip() -> None:
    candidates = [Candidate.from_sdp(line) for line in ASTERISK_LINES]
    assert [c.type for c in candidates] == [CandidateType.HOST] * 2 + [
        CandidateType.SERVER_REFLEXIVE
    ] + [CandidateType.HOST] * 2 + [CandidateType.SERVER_REFLEXIVE]
    assert candidates[2].address == ("142.134.201.57", 17234)
    assert [c.to_sdp().to_sdp() for c in candidates] == ASTERISK_LINES
    assert candidates[0].to_attribute() == "candidate:" + ASTERISK_LINES[0]


@pytest.mark.parametrize(
    "line",
    [
        "1 1 TCP 2130706431 10.0.1.40 9 typ host tcptype active",
        "1 1 UDP 2130706431 abc.local 17234 typ host",
        "1 1 UDP 2130706431 10.0.1.40 17234 typ weird",
        "not a candidate",
    ],
)
def test_unusable_remote_candidates_are_rejected(line: str) -> None:
    with pytest.raises(IceError):
        Candidate.from_sdp(line)
