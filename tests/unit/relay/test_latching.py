"""The latching policy, packet by packet with explicit times: no sockets, no clock, no sleeping."""

from __future__ import annotations

import struct

import pytest

from icerelay.relay.forwarding import Forwarding, Leg, LegCounters
from icerelay.relay.latching import (
    RTCP,
    RTP,
    Answer,
    Drop,
    DropReason,
    Forward,
    ForwardingState,
    LegState,
    Sockaddr,
    decide,
)
from icerelay.relay.packets import PacketKind, classify, is_rtcp, looks_like_stun, ssrc
from icerelay.sdp import IceCredentials
from icerelay.stun import Address, AttributeType, MessageClass, Method, decode_message
from icerelay.stun.credentials import short_term_key
from icerelay.stun.message import Message

RELAY_A = Address("203.0.113.1", 30000)
RELAY_B = Address("203.0.113.1", 30002)
ALICE_SDP = Address("192.168.1.10", 4000)
BOB_SDP = Address("198.51.100.7", 5000)
BOB_RTCP_SDP = Address("198.51.100.7", 5001)
ALICE: Sockaddr = ("198.51.100.20", 61000)
ALICE_RTCP: Sockaddr = ("198.51.100.20", 61001)
ALICE_NEW: Sockaddr = ("198.51.100.30", 62000)
MALLORY: Sockaddr = ("192.0.2.66", 6666)
BOB: Sockaddr = ("198.51.100.7", 5000)
CREDENTIALS = IceCredentials("relayufr", "relaypassword0123456789x")


def rtp(seq: int = 1, payload: bytes = b"x" * 160, pt: int = 8, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + payload


def rtcp(ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def check(
    nominate: bool = False, ufrag: str = "relayufr", pwd: str = CREDENTIALS.pwd
) -> tuple[Message, bytes]:
    request = Message(Method.BINDING, MessageClass.REQUEST, b"c" * 12)
    request.add(AttributeType.USERNAME, f"{ufrag}:alice1")
    request.add(AttributeType.PRIORITY, 1853817087)
    if nominate:
        request.add(AttributeType.USE_CANDIDATE)
    return request, request.encode(integrity_key=short_term_key(pwd), fingerprint=True)


def stun_answer() -> bytes:
    return Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, b"t" * 12).encode()


def malformed_stun() -> bytes:
    # A whole STUN header (length 4, magic cookie) whose one attribute claims 8 bytes.
    return b"\x00\x01\x00\x04\x21\x12\xa4\x42" + b"t" * 12 + b"\x00\x06\x00\x08"


def streams(
    a: Leg | None = None,
    b: Leg | None = None,
    strict_source: bool = False,
    handover_after: float | None = 5.0,
) -> ForwardingState:
    return ForwardingState(
        Forwarding(
            "k",
            a or Leg(RELAY_A, ALICE_SDP),
            b or Leg(RELAY_B, BOB_SDP, BOB_RTCP_SDP),
            strict_source=strict_source,
            handover_after=handover_after,
        )
    )


def forward(destination: Sockaddr | Address, socket: int = RTP, moved: bool = False) -> Forward:
    if isinstance(destination, Address):
        destination = (destination.host, destination.port)
    return Forward(destination, socket, moved)


def drop(reason: DropReason, moved: bool = False) -> Drop:
    return Drop(reason, moved)


# Media


def test_the_first_packet_latches_and_goes_to_the_other_partys_sdp_address() -> None:
    state = streams()
    verdict = decide(state.a, RTP, rtp(1, ssrc=0xABCD), ALICE, now=10.0)
    assert verdict == forward(BOB_SDP, moved=True)
    assert state.a.latched == [ALICE, None] and state.a.media_latched == [True, False]
    assert state.a.latched_seen[RTP] == 10.0 and state.a.ssrc == [0xABCD, None]
    assert state.a.counters() == LegCounters(
        packets=1, bytes=172, last_packet=10.0, last_media=10.0, latched_rtp=Address(*ALICE)
    )
    # Later packets from the latched source: forwarded, nothing moves, nothing allocated.
    second = decide(state.a, RTP, rtp(2), ALICE, now=10.02)
    assert second == forward(BOB_SDP) and second is decide(state.a, RTP, rtp(3), ALICE, 10.04)
    assert state.a.latched_seen[RTP] == 10.04 and state.a.packets == 3


def test_the_latched_source_is_where_the_other_party_sends() -> None:
    state = streams()
    assert decide(state.a, RTP, rtp(1), ALICE, 1.0) == forward(BOB_SDP, moved=True)
    # Bob's packets go to where Alice's came from, not to her private SDP address.
    assert decide(state.b, RTP, rtp(1), BOB, 1.0) == forward(ALICE, moved=True)
    assert state.a.destination(RTP) == ALICE and state.b.destination(RTCP) == ("198.51.100.7", 5001)


def test_nowhere_to_go_is_a_drop_that_still_counts_the_packet_and_latches() -> None:
    state = streams(b=Leg(RELAY_B))
    assert decide(state.a, RTP, rtp(1), ALICE, 1.0) == drop(DropReason.NO_DESTINATION, moved=True)
    assert decide(state.a, RTP, rtp(2), ALICE, 1.1) == drop(DropReason.NO_DESTINATION)
    assert (state.a.packets, state.a.dropped, state.a.latched[RTP]) == (2, 2, ALICE)
    assert state.b.destination(RTP) is None


@pytest.mark.parametrize("strict", [False, True])
def test_a_foreign_source_never_moves_a_fresh_latch(strict: bool) -> None:
    state = streams(strict_source=strict, handover_after=None)
    decide(state.a, RTP, rtp(1), ALICE, 1.0)
    verdict = decide(state.a, RTP, rtp(666), MALLORY, 1000.0)
    if strict:
        assert verdict == drop(DropReason.FOREIGN_SOURCE)
        assert (state.a.packets, state.a.dropped, state.a.last_packet) == (1, 1, 1.0)
    else:
        assert verdict == forward(BOB_SDP)
        assert (state.a.packets, state.a.dropped, state.a.last_packet) == (2, 0, 1000.0)
    assert state.a.latched[RTP] == ALICE and state.a.latched_seen[RTP] == 1.0
    assert decide(state.b, RTP, rtp(2), BOB, 1000.0) == forward(ALICE, moved=True)


@pytest.mark.parametrize("strict", [False, True])
def test_handover_after_the_latched_source_was_silent_long_enough(strict: bool) -> None:
    state = streams(strict_source=strict, handover_after=5.0)
    decide(state.a, RTP, rtp(1), ALICE, 100.0)
    decide(state.a, RTP, rtp(2), ALICE, 103.0)  # still talking: the silence starts here
    too_soon = decide(state.a, RTP, rtp(3), ALICE_NEW, 107.99)
    assert too_soon == (drop(DropReason.FOREIGN_SOURCE) if strict else forward(BOB_SDP))
    assert state.a.latched[RTP] == ALICE
    # Exactly handover_after seconds of silence is enough.
    assert decide(state.a, RTP, rtp(4), ALICE_NEW, 108.0) == forward(BOB_SDP, moved=True)
    assert state.a.latched[RTP] == ALICE_NEW and state.a.latched_seen[RTP] == 108.0
    assert decide(state.b, RTP, rtp(1), BOB, 108.1) == forward(ALICE_NEW, moved=True)
    # The old source is now the foreign one.
    old = decide(state.a, RTP, rtp(5), ALICE, 108.2)
    assert old == (drop(DropReason.FOREIGN_SOURCE) if strict else forward(BOB_SDP))


def test_rtcp_on_the_next_port_latches_its_own_component() -> None:
    state = streams()
    assert decide(state.a, RTCP, rtcp(0x77), ALICE_RTCP, 2.0) == forward(
        BOB_RTCP_SDP, RTCP, moved=True
    )
    assert state.a.latched == [None, ALICE_RTCP] and state.a.ssrc == [None, 0x77]
    assert (state.a.rtcp_packets, state.a.packets, state.a.bytes) == (1, 0, 0)
    assert decide(state.b, RTCP, rtcp(), BOB, 2.0) == forward(ALICE_RTCP, RTCP, moved=True)
    # Without an RTCP address in the SDP, RTCP has nowhere to go until the party latches.
    assert decide(state.b, RTP, rtp(), BOB, 2.0) == forward(ALICE_SDP, moved=True)
    lonely = streams(b=Leg(RELAY_B, BOB_SDP))
    assert decide(lonely.a, RTCP, rtcp(), ALICE_RTCP, 1.0) == drop(
        DropReason.NO_DESTINATION, moved=True
    )


def test_rtcp_mux_demultiplexes_by_packet_type_on_a_multiplexed_leg_only() -> None:
    state = streams(a=Leg(RELAY_A, ALICE_SDP, ALICE_SDP, rtcp_mux=True))
    # RFC 5761: on Alice's single port, packet type 201 is RTCP, and goes to Bob's RTCP port.
    assert decide(state.a, RTP, rtcp(), ALICE, 1.0) == forward(BOB_RTCP_SDP, RTCP, moved=True)
    assert state.a.latched == [None, ALICE] and state.a.rtcp_packets == 1
    assert decide(state.a, RTP, rtp(1), ALICE, 1.0) == forward(BOB_SDP, moved=True)
    # RTP payload types 64..95 with the marker bit look like RTCP: RFC 5761 rules them out.
    assert decide(state.a, RTP, rtp(2, pt=0x80 | 72), ALICE, 1.1) == forward(BOB_RTCP_SDP, RTCP)
    # On Bob's ports (no mux) an RTCP-looking packet on the RTP port stays RTP.
    assert decide(state.b, RTP, rtcp(), BOB, 1.0) == forward(ALICE, moved=True)
    assert (state.b.packets, state.b.rtcp_packets) == (1, 0)
    # Both of Bob's components reach Alice at her RTP address, from her one relay port.
    assert decide(state.b, RTCP, rtcp(), BOB, 1.0) == forward(ALICE, RTP, moved=True)
    assert state.a.routes[RTP] is state.a.routes[RTCP]


def test_packets_from_the_relays_own_ports_are_dropped() -> None:
    state = streams(a=Leg(RELAY_A, RELAY_B))
    for own in (RELAY_A, RELAY_B, Address(RELAY_B.host, RELAY_B.port + 1)):
        source = (own.host, own.port)
        assert decide(state.a, RTP, rtp(), source, 1.0) == drop(DropReason.OWN_SOURCE)
        assert decide(state.b, RTP, check()[1], source, 1.0) == drop(DropReason.OWN_SOURCE)
    assert (state.a.dropped, state.a.packets, state.a.latched) == (3, 0, [None, None])
    assert state.b.stun_requests == 0


def test_other_packets_are_relayed_like_media_for_now() -> None:
    # DTLS, ZRTP or garbage: today's policy forwards and latches them (RTP Bleed rules will not).
    state = streams()
    dtls = b"\x16\xfe\xfd" + b"d" * 20
    assert decide(state.a, RTP, dtls, ALICE, 1.0) == forward(BOB_SDP, moved=True)
    assert state.a.ssrc[RTP] is None and state.a.packets == 1
    assert decide(state.a, RTP, b"", ALICE, 1.1) == forward(BOB_SDP)


# ICE through the relay (no credentials on the leg): checks pass, latch provisionally


def test_checks_pass_through_and_latch_provisionally_until_media_comes() -> None:
    state = streams()
    _, first = check()
    assert decide(state.a, RTP, first, ALICE, 1.0) == forward(BOB_SDP, moved=True)
    assert state.a.latched[RTP] == ALICE and state.a.media_latched[RTP] is False
    assert (state.a.stun_requests, state.a.stun_nominations, state.a.packets) == (1, 0, 0)
    # Bob's answer to the check reaches Alice where her check came from; answers never latch.
    assert decide(state.b, RTP, stun_answer(), BOB, 1.1) == forward(ALICE)
    assert state.b.latched == [None, None] and state.b.stun_requests == 0
    # Another plain check from another candidate does not move the provisional latch...
    assert decide(state.a, RTP, first, ALICE_NEW, 1.2) == forward(BOB_SDP)
    assert state.a.latched[RTP] == ALICE
    # ...a nominating one does.
    _, nominate = check(nominate=True)
    assert decide(state.a, RTP, nominate, ALICE_NEW, 1.3) == forward(BOB_SDP, moved=True)
    assert state.a.latched[RTP] == ALICE_NEW and state.a.stun_nominations == 1
    assert decide(state.a, RTP, nominate, ALICE_NEW, 1.4) == forward(BOB_SDP)  # no move
    # Media decides for good, even from elsewhere, and later checks no longer move it.
    assert decide(state.a, RTP, rtp(1), ALICE, 1.5) == forward(BOB_SDP, moved=True)
    assert state.a.media_latched[RTP] is True
    assert decide(state.a, RTP, nominate, MALLORY, 1.6) == forward(BOB_SDP)
    assert state.a.latched[RTP] == ALICE and state.a.stun_nominations == 3


def test_media_from_the_provisionally_latched_source_makes_the_latch_final() -> None:
    state = streams(strict_source=True)
    decide(state.a, RTP, check()[1], ALICE, 1.0)
    assert decide(state.a, RTP, rtp(), ALICE, 1.1) == forward(BOB_SDP)
    assert state.a.media_latched[RTP] is True
    assert decide(state.a, RTP, rtp(), MALLORY, 1.2) == drop(DropReason.FOREIGN_SOURCE)


def test_checks_with_nowhere_to_go_and_malformed_stun_are_dropped() -> None:
    state = streams(b=Leg(RELAY_B))
    verdict = decide(state.a, RTP, check()[1], ALICE, 1.0)
    assert verdict == drop(DropReason.NO_DESTINATION, moved=True)
    assert decide(state.a, RTP, malformed_stun(), ALICE, 1.1) == drop(DropReason.MALFORMED_STUN)
    assert (state.a.dropped, state.a.stun_requests) == (2, 1)


# ICE=force: the relay is an ICE-lite agent on the leg


def forced() -> ForwardingState:
    return streams(a=Leg(RELAY_A, ALICE_SDP, ice_credentials=CREDENTIALS))


def test_ice_lite_answers_an_authenticated_check_and_relays_nothing() -> None:
    state = forced()
    request, data = check()
    verdict = decide(state.a, RTP, data, ALICE, 1.0)
    assert isinstance(verdict, Answer)
    assert (verdict.destination, verdict.socket, verdict.moved) == (ALICE, RTP, False)
    response = decode_message(verdict.data)
    key = short_term_key(CREDENTIALS.pwd)
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.get(AttributeType.XOR_MAPPED_ADDRESS) == Address(*ALICE)
    assert response.check_integrity(key) and response.fingerprint_ok
    # A plain check does not latch on an ICE-lite leg.
    assert state.a.latched == [None, None] and state.a.stun_requests == 1


def test_ice_lite_nomination_latches_without_making_it_final() -> None:
    state = forced()
    verdict = decide(state.a, RTP, check(nominate=True)[1], ALICE, 1.0)
    assert isinstance(verdict, Answer) and verdict.moved
    assert state.a.latched[RTP] == ALICE and state.a.media_latched[RTP] is False
    assert state.a.stun_nominations == 1
    assert decide(state.b, RTP, rtp(), BOB, 1.1) == forward(ALICE, moved=True)
    again = decide(state.a, RTP, check(nominate=True)[1], ALICE, 1.2)
    assert isinstance(again, Answer) and not again.moved
    # The first media packet still decides; a nomination moves even a media latch.
    assert decide(state.a, RTP, rtp(), ALICE_NEW, 1.3) == forward(BOB_SDP, moved=True)
    moved = decide(state.a, RTP, check(nominate=True)[1], ALICE, 1.4)
    assert isinstance(moved, Answer) and moved.moved and state.a.latched[RTP] == ALICE


@pytest.mark.parametrize(
    ("ufrag", "pwd"), [("relayufr", "wrongpassword0123456789"), ("otherufr", CREDENTIALS.pwd)]
)
def test_ice_lite_ignores_checks_with_wrong_credentials(ufrag: str, pwd: str) -> None:
    state = forced()
    verdict = decide(state.a, RTP, check(True, ufrag, pwd)[1], ALICE, 1.0)
    assert verdict == drop(DropReason.UNAUTHENTICATED)
    assert (state.a.dropped, state.a.stun_requests, state.a.latched[RTP]) == (1, 1, None)


def test_ice_lite_drops_other_stun_without_counting_it() -> None:
    state = forced()
    assert decide(state.a, RTP, stun_answer(), ALICE, 1.0) == drop(DropReason.NOT_A_CHECK)
    assert (state.a.dropped, state.a.stun_requests) == (0, 0)


def test_ice_lite_on_a_multiplexed_leg_answers_from_the_rtp_port() -> None:
    state = streams(a=Leg(RELAY_A, ALICE_SDP, rtcp_mux=True, ice_credentials=CREDENTIALS))
    verdict = decide(state.a, RTCP, check(nominate=True)[1], ALICE_RTCP, 1.0)
    assert isinstance(verdict, Answer) and verdict.socket == RTP
    assert state.a.latched == [None, ALICE_RTCP]
    plain = streams(a=Leg(RELAY_A, ALICE_SDP, ice_credentials=CREDENTIALS))
    verdict = decide(plain.a, RTCP, check()[1], ALICE_RTCP, 1.0)
    assert isinstance(verdict, Answer) and verdict.socket == RTCP


# Installing a new description of the same forwarding


def test_update_keeps_latches_and_counters_unless_the_party_moved() -> None:
    state = streams()
    decide(state.a, RTP, rtp(), ALICE, 1.0)
    decide(state.b, RTP, rtp(), BOB, 1.0)
    legs = state.legs
    # Same addresses, new rules: latches stay, the rules apply at once.
    state.update(Forwarding("k", state.a.leg, state.b.leg, strict_source=True, handover_after=None))
    assert state.legs[0] is legs[0] and state.a.latched[RTP] == ALICE
    assert decide(state.a, RTP, rtp(), MALLORY, 99.0) == drop(DropReason.FOREIGN_SOURCE)
    # A re-INVITE moved Bob: his latch is forgotten and his new SDP address is used.
    bob_new = Address("198.51.100.8", 5002)
    state.update(Forwarding("k", state.a.leg, Leg(RELAY_B, bob_new)))
    assert state.b.latched == [None, None] and state.b.media_latched == [False, False]
    assert decide(state.a, RTP, rtp(), ALICE, 100.0) == forward(bob_new)
    assert state.a.latched[RTP] == ALICE and state.a.packets == 2
    # A new relay port for Alice: hers is forgotten too.
    state.update(Forwarding("k", Leg(Address(RELAY_A.host, 31000), ALICE_SDP), state.b.leg))
    assert state.a.latched == [None, None] and decide(state.b, RTP, rtp(), BOB, 101.0) == forward(
        ALICE_SDP, moved=True
    )
    assert (RELAY_A.host, 31001) in state.a.own and (RELAY_A.host, 30000) not in state.a.own


def test_a_change_of_rtcp_mux_reroutes_without_forgetting() -> None:
    state = streams()
    decide(state.b, RTCP, rtcp(), BOB, 1.0)
    state.update(Forwarding("k", state.a.leg, Leg(RELAY_B, BOB_SDP, BOB_RTCP_SDP, rtcp_mux=True)))
    assert state.b.latched == [None, BOB]
    assert decide(state.a, RTP, rtcp(), ALICE, 1.1) == forward(BOB_SDP, RTP, moved=True)


def test_counters_snapshot_both_legs() -> None:
    state = streams()
    decide(state.a, RTP, rtp(), ALICE, 1.0)
    decide(state.b, RTCP, rtcp(), BOB, 2.0)
    counters = state.counters()
    assert counters.a.latched_rtp == Address(*ALICE) and counters.b.latched_rtcp == Address(*BOB)
    assert counters.last_packet == 2.0 and counters.b.rtcp_packets == 1


def test_a_leg_state_alone_needs_its_peer() -> None:
    lone = LegState(Leg(RELAY_A))
    with pytest.raises(AttributeError):
        decide(lone, RTP, rtp(), ALICE, 1.0)


# Packet classification


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (rtp(), PacketKind.RTP),
        (rtcp(), PacketKind.RTCP),
        (check()[1], PacketKind.STUN_REQUEST),
        (check(nominate=True)[1], PacketKind.STUN_NOMINATION),
        (stun_answer(), PacketKind.STUN_OTHER),
        (malformed_stun(), PacketKind.MALFORMED_STUN),
        (b"\x16\xfe\xfd" + b"d" * 20, PacketKind.OTHER),
        (b"", PacketKind.OTHER),
        (b"\x00\x01short", PacketKind.OTHER),  # first byte of STUN, but not a STUN message
    ],
)
def test_classify(data: bytes, kind: PacketKind) -> None:
    assert classify(data) is kind


def test_packet_helpers() -> None:
    assert looks_like_stun(check()[1]) and not looks_like_stun(b"") and not looks_like_stun(rtp())
    assert is_rtcp(rtcp()) and not is_rtcp(rtp()) and not is_rtcp(b"\x80")
    assert ssrc(rtp(ssrc=0xDEADBEEF), PacketKind.RTP) == 0xDEADBEEF
    assert ssrc(rtcp(0x42), PacketKind.RTCP) == 0x42
    assert ssrc(b"\x80\x08", PacketKind.RTP) is None and ssrc(rtp(), PacketKind.OTHER) is None
