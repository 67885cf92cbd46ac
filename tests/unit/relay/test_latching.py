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
# What Alice's and Bob's own SDPs say, when they do ICE through the relay.
ALICE_ICE = IceCredentials("alice1", "alicepassword0123456789x")
BOB_ICE = IceCredentials("bob1", "bobpassword0123456789xyz")


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


def stun_answer(pwd: str | None = None, tid: bytes = b"t" * 12) -> bytes:
    key = short_term_key(pwd) if pwd is not None else None
    return Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, tid).encode(integrity_key=key)


def alice_check(nominate: bool = False, pwd: str = BOB_ICE.pwd, tid: bytes = b"a" * 12) -> bytes:
    """A check Alice sends to Bob through the relay: "bob:alice", keyed with Bob's password."""
    request = Message(Method.BINDING, MessageClass.REQUEST, tid)
    request.add(AttributeType.USERNAME, f"{BOB_ICE.ufrag}:{ALICE_ICE.ufrag}")
    request.add(AttributeType.PRIORITY, 1853817087)
    if nominate:
        request.add(AttributeType.USE_CANDIDATE)
    return request.encode(integrity_key=short_term_key(pwd), fingerprint=True)


def with_ice(strict_source: bool = False, b: Leg | None = None) -> ForwardingState:
    return streams(
        a=Leg(RELAY_A, ALICE_SDP, sdp_ice=ALICE_ICE),
        b=b or Leg(RELAY_B, BOB_SDP, BOB_RTCP_SDP, sdp_ice=BOB_ICE),
        strict_source=strict_source,
    )


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
    verdict = decide(state.a, RTP, rtp(666, ssrc=0x6666), MALLORY, 1000.0)
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


def test_dtls_and_zrtp_are_relayed_but_never_latch_and_garbage_is_dropped() -> None:
    state = streams()
    dtls = b"\x16\xfe\xfd" + b"d" * 20
    zrtp = b"\x10\x00" + b"z" * 20
    assert decide(state.a, RTP, dtls, ALICE, 1.0) == forward(BOB_SDP)
    assert decide(state.a, RTP, zrtp, ALICE, 1.0) == forward(BOB_SDP)
    assert state.a.latched == [None, None] and state.a.packets == 2
    for garbage in (b"", b"\x80", b"\x40" + b"g" * 100, b"\xff" * 200):
        assert decide(state.a, RTP, garbage, ALICE, 1.1) == drop(DropReason.NOT_MEDIA)
    assert decide(state.a, RTP, rtp(pt=99), ALICE, 1.1) == forward(BOB_SDP, moved=True)
    # From the latched source, whatever it sends is the party's (SRTP, DTLS, a new codec).
    assert decide(state.a, RTP, b"\xff" * 20, ALICE, 1.2) == forward(BOB_SDP)
    assert state.a.refusals == {"not-media": 4} and state.a.dropped == 4


def dtls_record(handshake_type: int = 1, epoch: int = 0, version: bytes = b"\xfe\xfd") -> bytes:
    """One DTLS handshake record: header (type 22, version, epoch, sequence, length), then a
    handshake header of type ``handshake_type`` and a body."""
    body = bytes([handshake_type]) + b"\x00\x00\x20" + b"\x00" * 8 + b"h" * 32
    header = b"\x16" + version + epoch.to_bytes(2, "big") + b"\x00" * 6
    return header + len(body).to_bytes(2, "big") + body


def test_a_dtls_srtp_party_without_ice_latches_on_its_hello() -> None:
    """RFC 5763 without ICE, behind a NAT: the handshake comes before any SRTP, and the answer
    can only reach the party at the source it sends from; the SDP's address is private."""
    state = streams(a=Leg(RELAY_A, ALICE_SDP, dtls=True), b=Leg(RELAY_B, BOB_SDP, dtls=True))
    assert decide(state.a, RTP, dtls_record(), ALICE, 1.0) == forward(BOB_SDP, moved=True)
    assert state.a.latched[RTP] == ALICE
    # Bob's ServerHello reaches Alice where she is, not her SDP's private address.
    assert decide(state.b, RTP, dtls_record(2), BOB, 1.1) == forward(ALICE, moved=True)
    # A second hello from a stranger moves nothing: the first hello latched, as a first RTP does.
    assert decide(state.a, RTP, dtls_record(), MALLORY, 1.2) == forward(BOB)
    assert state.a.latched[RTP] == ALICE and state.a.refusals == {"handover-refused": 1}
    # Her SRTP from the same source confirms the latch; the rules for media then hold.
    assert decide(state.a, RTP, rtp(), ALICE, 2.0) == forward(BOB)
    assert state.a.media_latched[RTP]
    assert decide(state.a, RTP, rtp(2, ssrc=0xBAD), MALLORY, 9.0) == forward(BOB)
    assert decide(state.b, RTP, rtp(), BOB, 9.1) == forward(ALICE)


def test_only_a_dtls_hello_latches_and_only_where_the_sdp_announced_dtls() -> None:
    plain = streams()
    assert decide(plain.a, RTP, dtls_record(), ALICE, 1.0) == forward(BOB_SDP)
    assert plain.a.latched == [None, None]
    state = streams(a=Leg(RELAY_A, ALICE_SDP, dtls=True))
    not_hellos = [
        dtls_record(11),  # a Certificate: not what a party sends first
        dtls_record(epoch=1),  # encrypted: nothing to check
        dtls_record(version=b"\xfe\xfe"),  # no such version
        dtls_record()[:-1],  # shorter than its length says
        b"\x17\xfe\xfd" + b"\x00" * 30,  # application data
        b"\x10\x00" + b"z" * 30,  # ZRTP
    ]
    for data in not_hellos:
        assert decide(state.a, RTP, data, ALICE, 1.0) == forward(BOB_SDP), data
    assert state.a.latched == [None, None]


# ICE through the relay: checks verified with the credentials of the two SDPs


def test_checks_without_both_sdps_credentials_pass_but_never_latch() -> None:
    state = streams()
    _, first = check()
    assert decide(state.a, RTP, first, ALICE, 1.0) == forward(BOB_SDP)
    assert decide(state.a, RTP, check(nominate=True)[1], ALICE, 1.0) == forward(BOB_SDP)
    assert state.a.latched == [None, None] and state.a.checks_authenticated == 0
    assert (state.a.stun_requests, state.a.stun_nominations, state.a.packets) == (2, 1, 0)
    assert decide(state.b, RTP, stun_answer(), BOB, 1.1) == forward(ALICE_SDP)
    # Once latched by media, strict_source drops unverifiable STUN from elsewhere.
    strict = streams(strict_source=True)
    decide(strict.a, RTP, rtp(), ALICE, 1.0)
    assert decide(strict.a, RTP, first, MALLORY, 1.1) == drop(DropReason.FOREIGN_SOURCE)
    assert decide(strict.a, RTP, first, ALICE, 1.2) == forward(BOB_SDP)


def test_authenticated_checks_latch_provisionally_and_nominations_move() -> None:
    state = with_ice()
    assert decide(state.a, RTP, alice_check(), ALICE, 1.0) == forward(BOB_SDP, moved=True)
    assert state.a.latched[RTP] == ALICE and state.a.media_latched[RTP] is False
    assert (state.a.checks_authenticated, state.a.last_check) == (1, 1.0)
    # Bob's answer (keyed with his own password) latches his leg and reaches Alice.
    assert decide(state.b, RTP, stun_answer(BOB_ICE.pwd), BOB, 1.1) == forward(ALICE, moved=True)
    assert state.b.checks_authenticated == 1
    # Another plain check from another candidate does not move the provisional latch...
    assert decide(state.a, RTP, alice_check(tid=b"b" * 12), ALICE_NEW, 1.2) == forward(BOB_SDP)
    assert state.a.latched[RTP] == ALICE
    # ...a nominating one does; Bob's answer to it moves his latch.
    nominate = alice_check(nominate=True, tid=b"n" * 12)
    assert decide(state.a, RTP, nominate, ALICE_NEW, 1.3) == forward(BOB_SDP, moved=True)
    assert state.a.latched[RTP] == ALICE_NEW and state.a.last_nomination == 1.3
    bob_new: Sockaddr = ("198.51.100.7", 5555)
    answer = stun_answer(BOB_ICE.pwd, tid=b"n" * 12)
    assert decide(state.b, RTP, answer, bob_new, 1.35) == forward(ALICE_NEW, moved=True)
    assert decide(state.a, RTP, nominate, ALICE_NEW, 1.4) == forward(bob_new)  # retransmission
    # Media from a source that passed a check makes the latch final there.
    assert decide(state.a, RTP, rtp(1), ALICE, 1.5) == forward(bob_new, moved=True)
    assert state.a.media_latched[RTP] is True
    # A nomination moves even a media latch: ICE chose another pair.
    later = alice_check(nominate=True, tid=b"m" * 12)
    assert decide(state.a, RTP, later, ALICE_NEW, 1.6) == forward(bob_new, moved=True)
    counters = state.a.counters()
    assert (counters.checks_authenticated, counters.last_check, counters.last_nomination) == (
        5,
        1.6,
        1.6,
    )


def test_media_from_an_unchecked_source_does_not_override_a_latch_from_checks() -> None:
    state = with_ice(strict_source=True)
    decide(state.a, RTP, alice_check(), ALICE, 1.0)
    assert decide(state.a, RTP, rtp(), MALLORY, 1.1) == drop(DropReason.FOREIGN_SOURCE)
    assert decide(state.a, RTP, rtp(), ALICE, 1.2) == forward(BOB_SDP)
    assert state.a.media_latched[RTP] is True
    assert state.a.refusals == {"handover-refused": 1, "foreign-source": 1}


@pytest.mark.parametrize(
    ("side", "data"),
    [
        ("a", alice_check(nominate=True, pwd=ALICE_ICE.pwd)),  # her own password: wrong key
        ("a", alice_check(nominate=True, pwd="guessedpassword012345678")),
        ("b", stun_answer(ALICE_ICE.pwd)),  # on Bob's leg, a response must carry his password
        ("b", stun_answer()),  # no integrity at all
    ],
)
def test_checks_that_do_not_verify_are_dropped_and_never_latch(side: str, data: bytes) -> None:
    state = with_ice()
    leg, party = (state.a, ALICE) if side == "a" else (state.b, BOB)
    decide(leg, RTP, rtp(), party, 1.0)
    assert decide(leg, RTP, data, MALLORY, 1.1) == drop(DropReason.UNAUTHENTICATED)
    assert leg.latched[RTP] == party and leg.checks_authenticated == 0
    assert leg.refusals == {"unauthenticated": 1}


def test_a_replayed_check_from_another_source_is_refused() -> None:
    state = with_ice()
    nominate = alice_check(nominate=True)
    decide(state.a, RTP, nominate, ALICE, 1.0)
    decide(state.a, RTP, rtp(), ALICE, 1.1)
    # Someone on the path copies Alice's nomination: it verifies, but its ID is Alice's.
    assert decide(state.a, RTP, nominate, MALLORY, 1.2) == drop(DropReason.REPLAYED_CHECK)
    assert state.a.latched[RTP] == ALICE and state.a.checks_authenticated == 1
    # Alice's own retransmission is fine.
    assert decide(state.a, RTP, nominate, ALICE, 1.3) == forward(BOB_SDP)


def test_checks_with_nowhere_to_go_and_malformed_stun_are_dropped() -> None:
    state = with_ice(b=Leg(RELAY_B, sdp_ice=BOB_ICE))
    verdict = decide(state.a, RTP, alice_check(), ALICE, 1.0)
    assert verdict == drop(DropReason.NO_DESTINATION, moved=True)
    assert decide(state.a, RTP, malformed_stun(), ALICE, 1.1) == drop(DropReason.MALFORMED_STUN)
    assert (state.a.dropped, state.a.stun_requests) == (2, 1)
    assert state.a.refusals == {"no-destination": 1, "malformed-stun": 1}


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
    # Media from a source that never passed a check does not move it; from Alice it is final.
    assert decide(state.a, RTP, rtp(), ALICE_NEW, 1.3) == forward(BOB_SDP)
    assert decide(state.a, RTP, rtp(2), ALICE, 1.3) == forward(BOB_SDP)
    assert state.a.media_latched[RTP] is True and state.a.checks_authenticated == 2
    # A nomination moves even a media latch (a new transaction: a retransmission does not).
    nominate = Message(Method.BINDING, MessageClass.REQUEST, b"d" * 12)
    nominate.add(AttributeType.USERNAME, "relayufr:alice1")
    nominate.add(AttributeType.USE_CANDIDATE)
    data = nominate.encode(integrity_key=short_term_key(CREDENTIALS.pwd), fingerprint=True)
    moved = decide(state.a, RTP, data, ALICE_NEW, 1.4)
    assert isinstance(moved, Answer) and moved.moved and state.a.latched[RTP] == ALICE_NEW


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


def test_an_ice_restart_keeps_the_previous_credentials_valid_until_replaced() -> None:
    state = with_ice()
    decide(state.a, RTP, alice_check(), ALICE, 1.0)
    # Alice re-offers with new credentials; her consent checks still use the old ones.
    restarted = IceCredentials("alice2", "alicepassword2222222222x")
    state.update(Forwarding("k", Leg(RELAY_A, ALICE_SDP, sdp_ice=restarted), state.b.leg))
    assert decide(state.a, RTP, alice_check(tid=b"o" * 12), ALICE, 2.0) == forward(BOB_SDP)
    new = Message(Method.BINDING, MessageClass.REQUEST, b"p" * 12)
    new.add(AttributeType.USERNAME, f"{BOB_ICE.ufrag}:alice2")
    data = new.encode(integrity_key=short_term_key(BOB_ICE.pwd), fingerprint=True)
    assert decide(state.a, RTP, data, ALICE, 2.1) == forward(BOB_SDP)
    assert state.a.checks_authenticated == 3
    # Bob answers with new credentials too: the first ones are gone.
    bob2 = IceCredentials("bob2", "bobpassword2222222222xyz")
    state.update(Forwarding("k", state.a.leg, Leg(RELAY_B, BOB_SDP, BOB_RTCP_SDP, sdp_ice=bob2)))
    stale = decide(state.a, RTP, alice_check(tid=b"q" * 12), ALICE, 3.0)
    assert stale == drop(DropReason.UNAUTHENTICATED)


def test_the_hot_path_keeps_nothing_per_packet() -> None:
    # Net growth only (a counter's new int replaces the old one): the reference to the last
    # packet, kept for the continuity test, must replace the previous one, not accumulate.
    import sys

    state = with_ice()
    decide(state.a, RTP, rtp(1), ALICE, 1.0)
    decide(state.b, RTP, rtp(1), BOB, 1.0)
    packets = [rtp(seq) for seq in range(2, 1002)]
    now = 2.0
    decide(state.a, RTP, packets[0], ALICE, now)
    before = sys.getallocatedblocks()
    for packet in packets:
        decide(state.a, RTP, packet, ALICE, now)
    # A few blocks of slack for the interpreter's own bookkeeping, not 1000 of them.
    assert sys.getallocatedblocks() - before < 10


def test_a_counters_snapshot_names_every_field_and_copies_the_refusals() -> None:
    """The snapshot is built positionally (it is taken often): each value lands in its field."""
    state = ForwardingState(Forwarding("k", Leg(RELAY_A, ALICE_SDP), Leg(RELAY_B, BOB_SDP)))
    leg = state.a
    values = {
        "packets": 1, "bytes": 2, "rtcp_packets": 3, "dropped": 4, "stun_requests": 5,
        "stun_nominations": 6, "checks_authenticated": 7, "last_check": 8.5,
        "last_nomination": 9.5, "last_media": 10.5, "last_packet": 11.5,
    }  # fmt: skip
    for name, value in values.items():
        setattr(leg, name, value)
    leg.refusals["stranger"] = 12
    leg.latched = [ALICE, ALICE_RTCP]
    snapshot = state.counters()
    assert snapshot.a == LegCounters(
        **values,
        refusals={"stranger": 12},
        latched_rtp=Address(*ALICE),
        latched_rtcp=Address(*ALICE_RTCP),
    )
    assert snapshot.b == LegCounters()
    snapshot.a.refusals["stranger"] = 0
    assert leg.refusals == {"stranger": 12}
    assert snapshot.last_packet == 11.5
    state.b.last_packet = 12.0
    assert state.counters().last_packet == 12.0
