"""Media hijack (the RTP Bleed class) against the latching policy, packet by packet.

Each test is an attack an off-path stranger can make on a relay port (it knows the relay's
address and port, from a SIP trace or by scanning, but sees no media), replayed against
:func:`icerelay.relay.latching.decide` with explicit times. The same attacks through the real
daemon are in ``test_hijack_daemon.py``.
"""

from __future__ import annotations

import os
import random
import struct

import pytest

from icerelay.relay.forwarding import Forwarding, Leg
from icerelay.relay.latching import (
    MAX_DROPOUT,
    RTCP,
    RTP,
    Drop,
    DropReason,
    Forward,
    ForwardingState,
    Sockaddr,
    decide,
)
from icerelay.sdp import IceCredentials
from icerelay.stun import Address, AttributeType, MessageClass, Method
from icerelay.stun.credentials import short_term_key
from icerelay.stun.message import Message

RELAY_A = Address("203.0.113.1", 30000)
RELAY_B = Address("203.0.113.1", 30002)
ALICE_SDP = Address("192.168.1.10", 4000)  # private: behind a NAT
BOB_SDP = Address("198.51.100.7", 5000)
ALICE: Sockaddr = ("198.51.100.20", 61000)
ALICE_REBOUND: Sockaddr = ("198.51.100.20", 61444)  # the NAT gave her a new port
BOB: Sockaddr = ("198.51.100.7", 5000)
MALLORY: Sockaddr = ("192.0.2.66", 6666)
NAT_PUBLIC = "93.184.216.40"  # a globally routable NAT address (rule d)
ALICE_NATTED: Sockaddr = (NAT_PUBLIC, 61000)
ALICE_NATTED_AGAIN: Sockaddr = (NAT_PUBLIC, 61444)
ALICE_SSRC = 0x5EC2E7A1
ALICE_ICE = IceCredentials("alice1", "alicepassword0123456789x")
BOB_ICE = IceCredentials("bob1", "bobpassword0123456789xyz")


def rtp(seq: int, ssrc: int = ALICE_SSRC, pt: int = 8) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 160, ssrc) + b"x" * 160


def rtcp(ssrc: int = ALICE_SSRC) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def call(
    strict: bool = False,
    handover_after: float | None = 0.5,
    alice_types: frozenset[int] | None = frozenset({0, 8, 101}),
    bob_types: frozenset[int] | None = frozenset({8, 101}),
    ice: bool = False,
    opaque: bool = False,
) -> ForwardingState:
    return ForwardingState(
        Forwarding(
            "k",
            Leg(
                RELAY_A,
                ALICE_SDP,
                payload_types=alice_types,
                sdp_ice=ALICE_ICE if ice else None,
                opaque=opaque,
            ),
            Leg(
                RELAY_B,
                BOB_SDP,
                payload_types=bob_types,
                sdp_ice=BOB_ICE if ice else None,
                opaque=opaque,
            ),
            strict_source=strict,
            handover_after=handover_after,
        )
    )


def talking(
    state: ForwardingState, until: int = 50, start: float = 0.0, source: Sockaddr = ALICE
) -> float:
    """Alice (from ``source``) and Bob exchange ``until`` packets each, 20 ms apart; returns
    the time after."""
    now = start
    for seq in range(1, until + 1):
        decide(state.a, RTP, rtp(seq), source, now)
        decide(state.b, RTP, rtp(seq, ssrc=0xB0B), BOB, now)
        now += 0.02
    return now


def bob_reaches(state: ForwardingState, now: float) -> Sockaddr | None:
    """Where Bob's next packet goes (the attacker wins if it is MALLORY)."""
    verdict = decide(state.b, RTP, rtp(9999, ssrc=0xB0B), BOB, now)
    return verdict.destination if isinstance(verdict, Forward) else None


def nominating_check(pwd: str, tid: bytes | None = None) -> bytes:
    request = Message(Method.BINDING, MessageClass.REQUEST, tid or os.urandom(12))
    request.add(AttributeType.USERNAME, f"{BOB_ICE.ufrag}:{ALICE_ICE.ufrag}")
    request.add(AttributeType.PRIORITY, 1853817087)
    request.add(AttributeType.USE_CANDIDATE)
    return request.encode(integrity_key=short_term_key(pwd), fingerprint=True)


# Garbage first


GARBAGE = [
    bytes(random.Random(7).getrandbits(8) for _ in range(200)),  # 200 random bytes
    b"\xff" * 200,
    b"\x00" * 200,  # first byte of STUN, not STUN
    b"\x40" + b"g" * 199,  # version 1
    b"\xc0" + b"\x08" + b"g" * 198,  # version 3
    b"\x80\x08\x00\x01",  # version 2, truncated header
    rtp(1, pt=18),  # a payload type neither SDP offered
    rtp(1, pt=96),
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_first_never_latches(garbage: bytes) -> None:
    state = call()
    for _ in range(3):
        verdict = decide(state.a, RTP, garbage, MALLORY, 0.0)
        assert isinstance(verdict, Drop) and not verdict.moved
    assert state.a.latched == [None, None]
    # Bob's media goes to Alice's SDP address, never to the stranger...
    assert bob_reaches(state, 0.1) == (ALICE_SDP.host, ALICE_SDP.port)
    # ...and Alice's first real packet latches her.
    assert decide(state.a, RTP, rtp(1), ALICE, 0.2) == Forward(BOB, RTP, moved=True)
    assert bob_reaches(state, 0.3) == ALICE
    assert state.a.dropped == 3
    assert sum(state.a.refusals.values()) == 3
    assert set(state.a.refusals) <= {"not-media", "unknown-payload-type", "malformed-stun"}


def test_garbage_is_counted_per_reason() -> None:
    state = call()
    for garbage in GARBAGE:
        decide(state.a, RTP, garbage, MALLORY, 0.0)
    counters = state.counters().a
    assert counters.refusals == {"not-media": 6, "unknown-payload-type": 2}
    assert counters.dropped == 8 and counters.packets == 0 and counters.latched_rtp is None


def test_garbage_on_the_rtcp_port_never_latches() -> None:
    state = call()
    assert decide(state.a, RTCP, rtp(1), MALLORY, 0.0) == Drop(DropReason.NOT_MEDIA)
    assert decide(state.a, RTCP, b"\x80\xc9", MALLORY, 0.0) == Drop(DropReason.NOT_MEDIA)
    assert state.a.latched[RTCP] is None


# A stranger after silence (a phone on hold)


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("silence", [5.0, 60.0, 3600.0])
def test_a_stranger_after_silence_never_takes_the_leg(strict: bool, silence: float) -> None:
    state = call(strict=strict)
    now = talking(state) + silence
    verdict = decide(state.a, RTP, rtp(777, ssrc=0xBAD), MALLORY, now)
    assert verdict == (Drop(DropReason.FOREIGN_SOURCE) if strict else Forward(BOB, RTP))
    assert bob_reaches(state, now + 0.01) == ALICE
    # The real phone resumes: still the latched source, relayed both ways.
    assert decide(state.a, RTP, rtp(51), ALICE, now + 0.02) == Forward(BOB, RTP)
    assert bob_reaches(state, now + 0.03) == ALICE
    assert state.a.refusals.get("handover-refused") == 1


@pytest.mark.parametrize("seq", [50, 49, 1, 50 + MAX_DROPOUT + 1, 50 + 30000])
def test_the_latched_ssrc_with_an_implausible_sequence_is_refused(seq: int) -> None:
    # Even a stranger who learnt the SSRC (an old trace) must also hit the sequence window.
    state = call()
    now = talking(state) + 10.0
    decide(state.a, RTP, rtp(seq), MALLORY, now)
    assert bob_reaches(state, now + 0.01) == ALICE


def test_a_stranger_with_a_wrong_ssrc_and_a_right_sequence_is_refused() -> None:
    state = call(strict=True)
    now = talking(state) + 10.0
    for ssrc in (0, ALICE_SSRC ^ 1, 0xB0B, 0xFFFFFFFF):
        assert decide(state.a, RTP, rtp(51, ssrc=ssrc), MALLORY, now) == Drop(
            DropReason.FOREIGN_SOURCE
        )
    assert bob_reaches(state, now) == ALICE
    assert state.a.refusals == {"handover-refused": 4, "foreign-source": 4}


def test_rtcp_from_a_stranger_does_not_move_the_rtcp_latch() -> None:
    state = call()
    decide(state.a, RTCP, rtcp(), ("198.51.100.20", 61001), 0.0)
    decide(state.a, RTCP, rtcp(0xBAD), MALLORY, 100.0)
    assert state.a.latched[RTCP] == ("198.51.100.20", 61001)


# Handover that must still work


def test_nat_rebinding_same_ssrc_from_a_new_port_takes_over() -> None:
    state = call(strict=True)
    now = talking(state)
    # The NAT drops Alice's mapping: her next packets come from a new port.
    now += 0.6
    assert decide(state.a, RTP, rtp(53), ALICE_REBOUND, now) == Forward(BOB, RTP, moved=True)
    assert bob_reaches(state, now + 0.01) == ALICE_REBOUND
    # The old port is now the foreign one.
    assert decide(state.a, RTP, rtp(54), ALICE, now + 0.02) == Drop(DropReason.FOREIGN_SOURCE)
    # Sequence numbers wrap around 2^16.
    wrap = call()
    decide(wrap.a, RTP, rtp(65534), ALICE, 0.0)
    assert decide(wrap.a, RTP, rtp(65536 + 3), ALICE_REBOUND, 1.0).moved  # type: ignore[union-attr]


def test_rebinding_after_kernel_forwarded_media_needs_the_ssrc_only() -> None:
    # A kernel data plane forwarded minutes of Alice's media that the policy never saw: the
    # last sequence number it knows is far behind, so rule (a) asks for her SSRC alone.
    state = call()
    now = talking(state)
    state.a.unseen_media = True
    now += 0.6
    stranger = decide(state.a, RTP, rtp(40_000, ssrc=0xBADBAD), MALLORY, now)
    assert not getattr(stranger, "moved", False)
    assert decide(state.a, RTP, rtp(40_000), ALICE_REBOUND, now).moved  # type: ignore[union-attr]


def test_two_sources_sending_the_same_stream_do_not_take_turns() -> None:
    # Someone on the path copies Alice's packets from elsewhere while she is still talking:
    # within handover_after of her last packet the copy never moves the latch.
    state = call()
    now = talking(state)
    for seq in range(51, 80):
        decide(state.a, RTP, rtp(seq), ALICE, now)
        decide(state.a, RTP, rtp(seq + 1), MALLORY, now + 0.001)
        now += 0.02
    assert state.a.latched[RTP] == ALICE
    assert state.a.refusals == {"handover-refused": 29}


def test_rtcp_follows_the_rtp_ssrc_to_a_new_port() -> None:
    state = call()
    decide(state.a, RTP, rtp(1), ALICE, 0.0)
    decide(state.a, RTCP, rtcp(), ("198.51.100.20", 61001), 0.0)
    verdict = decide(state.a, RTCP, rtcp(), ("198.51.100.20", 61445), 5.0)
    assert verdict.moved and state.a.latched[RTCP] == ("198.51.100.20", 61445)


def test_handover_after_zero_hands_over_at_once() -> None:
    state = call(handover_after=None)
    now = talking(state, until=3)
    assert decide(state.a, RTP, rtp(4), ALICE_REBOUND, now).moved  # type: ignore[union-attr]


def test_the_address_signalling_announced_takes_over() -> None:
    # A trunk on a public address: a stranger who wins the race for the first packet loses
    # the leg as soon as the trunk sends from the address its SDP announced.
    trunk = Address("93.184.216.34", 7000)  # globally routable
    state = ForwardingState(Forwarding("k", Leg(RELAY_A, trunk), Leg(RELAY_B, BOB_SDP)))
    assert decide(state.a, RTP, rtp(1, ssrc=0xBAD), MALLORY, 0.0).moved  # type: ignore[union-attr]
    verdict = decide(state.a, RTP, rtp(1), ("93.184.216.34", 7000), 0.1)
    assert verdict == Forward(BOB, RTP, moved=True)
    assert bob_reaches(state, 0.2) == ("93.184.216.34", 7000)
    # A re-INVITE that moves the party to another public address: the new one takes over.
    moved_to = Address("93.184.216.35", 7002)
    state.update(Forwarding("k", Leg(RELAY_A, moved_to), state.b.leg))
    decide(state.a, RTP, rtp(1, ssrc=0xBAD), MALLORY, 1.0)
    assert decide(state.a, RTP, rtp(2), ("93.184.216.35", 7002), 1.1).moved  # type: ignore[union-attr]


def test_a_private_announced_address_takes_nothing_over() -> None:
    # Alice's SDP says 192.168.1.10: a packet "from" there crossed no NAT, so it is spoofed;
    # moving the leg there would send Bob's media nowhere.
    state = call(strict=True)
    now = talking(state)
    spoofed = (ALICE_SDP.host, ALICE_SDP.port)
    assert decide(state.a, RTP, rtp(1, ssrc=0xBAD), spoofed, now) == Drop(DropReason.FOREIGN_SOURCE)
    assert bob_reaches(state, now) == ALICE


def test_a_phone_back_from_hold_on_a_new_nat_mapping_and_ssrc_gets_its_leg_back() -> None:
    """Alice's public address is known (sip_source: the SIP source with the SDP's port). She
    holds for a minute, her NAT mapping expires, and she resumes from a new port with a new
    SSRC: rule (a) cannot follow that; the host of her announced address can."""
    # Her NAT's public address (globally routable: documentation ranges are not), as the SIP
    # source address with the SDP's port; the source her media came from; the new mapping.
    alice_public = Address(NAT_PUBLIC, 4000)
    state = ForwardingState(
        Forwarding(
            "k",
            Leg(RELAY_A, alice_public, payload_types=frozenset({8})),
            Leg(RELAY_B, BOB_SDP, payload_types=frozenset({8})),
            strict_source=True,
            handover_after=0.5,
        )
    )
    now = talking(state, source=ALICE_NATTED)
    assert bob_reaches(state, now) == ALICE_NATTED
    resumed = now + 60.0
    new_stream = rtp(7, ssrc=0x0DDBA11)
    # A stranger on another host, sending valid RTP at the right moment, still gets nothing.
    assert decide(state.a, RTP, new_stream, MALLORY, resumed) == Drop(DropReason.FOREIGN_SOURCE)
    verdict = decide(state.a, RTP, new_stream, ALICE_NATTED_AGAIN, resumed + 0.01)
    assert verdict == Forward(BOB, RTP, moved=True)
    assert bob_reaches(state, resumed + 0.02) == ALICE_NATTED_AGAIN


def test_the_announced_host_does_not_take_a_talking_leg() -> None:
    """Rule (d) waits for the latched source's silence, as rule (a) does: two sources behind
    one NAT do not take turns while the phone talks."""
    alice_public = Address(NAT_PUBLIC, 4000)
    state = ForwardingState(
        Forwarding(
            "k",
            Leg(RELAY_A, alice_public),
            Leg(RELAY_B, BOB_SDP),
            strict_source=True,
            handover_after=0.5,
        )
    )
    now = talking(state, source=ALICE_NATTED)
    verdict = decide(state.a, RTP, rtp(1, ssrc=0xBAD), ALICE_NATTED_AGAIN, now)
    assert verdict == Drop(DropReason.FOREIGN_SOURCE)
    assert bob_reaches(state, now) == ALICE_NATTED
    # Without a public announced address (the SDP's private one), no host is trusted.
    private = call(strict=True)
    now = talking(private) + 60.0
    verdict = decide(private.a, RTP, rtp(1, ssrc=0xBAD), ("198.51.100.20", 61444), now)
    assert verdict == Drop(DropReason.FOREIGN_SOURCE)


# ICE: an authenticated check moves the latch, a forged one does not


def test_an_authenticated_nomination_moves_the_latch_a_wrong_password_does_not() -> None:
    state = call(ice=True, strict=True)
    now = talking(state)
    for pwd in (ALICE_ICE.pwd, "guessedpassword012345678", "bobpassword0123456789xyZ"):
        assert decide(state.a, RTP, nominating_check(pwd), MALLORY, now) == Drop(
            DropReason.UNAUTHENTICATED
        )
    assert bob_reaches(state, now) == ALICE and state.a.checks_authenticated == 0
    verdict = decide(state.a, RTP, nominating_check(BOB_ICE.pwd), ALICE_REBOUND, now + 0.1)
    assert verdict == Forward(BOB, RTP, moved=True)
    assert bob_reaches(state, now + 0.2) == ALICE_REBOUND
    counters = state.counters().a
    assert counters.checks_authenticated == 1 and counters.last_nomination == now + 0.1
    assert counters.refusals == {"unauthenticated": 3}


def test_a_replayed_nomination_from_a_stranger_is_refused() -> None:
    state = call(ice=True)
    check = nominating_check(BOB_ICE.pwd)
    decide(state.a, RTP, check, ALICE, 0.0)
    talking(state, start=0.1)
    assert decide(state.a, RTP, check, MALLORY, 5.0) == Drop(DropReason.REPLAYED_CHECK)
    assert bob_reaches(state, 5.1) == ALICE


# strict_source


def test_strict_source_drops_everything_else_and_counts_it() -> None:
    state = call(strict=True, ice=True)
    now = talking(state) + 30.0
    attempts = [
        rtp(51, ssrc=0xBAD),  # a stranger's valid RTP
        rtp(51, pt=96),  # an unoffered payload type
        b"\x16\xfe\xfd" + b"d" * 40,  # DTLS-looking
        b"\xff" * 100,  # garbage
        nominating_check("guessedpassword012345678"),
        Message(Method.BINDING, MessageClass.INDICATION, b"i" * 12).encode(),
    ]
    for data in attempts:
        verdict = decide(state.a, RTP, data, MALLORY, now)
        assert isinstance(verdict, Drop) and not verdict.moved
    assert bob_reaches(state, now) == ALICE and state.a.packets == 50
    assert state.a.dropped == len(attempts)
    assert state.a.refusals == {
        "foreign-source": 3,
        "handover-refused": 2,
        "unknown-payload-type": 1,
        "not-media": 1,
        "unauthenticated": 1,
    }


# Fallbacks when signalling says less


def test_without_payload_types_any_rtp_v2_latches_but_garbage_still_does_not() -> None:
    # MediaProxy's protocol passes no payload types.
    state = call(alice_types=None, bob_types=None)
    assert isinstance(decide(state.a, RTP, b"\xff" * 200, MALLORY, 0.0), Drop)
    assert decide(state.a, RTP, rtp(1, pt=96), ALICE, 0.1).moved  # type: ignore[union-attr]
    assert decide(state.a, RTP, rtp(2, ssrc=0xBAD), MALLORY, 10.0) == Forward(BOB, RTP)
    assert state.a.latched[RTP] == ALICE


def test_a_stream_that_is_not_rtp_latches_its_first_packet_and_keeps_it() -> None:
    # T.38 over UDPTL cannot be validated: the first packet latches, silence never hands over.
    state = call(opaque=True, alice_types=None, bob_types=None)
    assert decide(state.a, RTP, b"\x00\x05udptl", ALICE, 0.0).moved  # type: ignore[union-attr]
    decide(state.a, RTP, b"\x00\x06udptl", MALLORY, 100.0)
    assert state.a.latched[RTP] == ALICE


def test_a_stranger_racing_the_first_rtcp_packet_does_not_get_the_receiver_reports() -> None:
    # Bob's receiver reports name Alice's SSRC and highest sequence number: a stranger who got
    # them could take her RTP over by rule (a). Her RTP is latched; her RTCP not yet.
    state = call()
    talking(state)
    verdict = decide(state.a, RTCP, rtcp(0xBAD), MALLORY, 1.0)
    assert not verdict.moved and state.a.latched[RTCP] is None
    # Her own first RTCP packet, from her address (another port), latches.
    assert decide(state.a, RTCP, rtcp(), ("198.51.100.20", 61001), 1.1).moved  # type: ignore[union-attr]
