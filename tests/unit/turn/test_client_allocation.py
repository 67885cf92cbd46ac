"""The TURN client engine against a scripted server, in virtual time: authentication, refresh,
permissions, channels, data both ways, redirection and deallocation (RFC 8656, RFC 8489 §9.2)."""

from __future__ import annotations

import pytest

from icerelay.errors import TurnError
from icerelay.stun import Address, AttributeType, MessageClass, Method, decode_message
from icerelay.stun.constants import PasswordAlgorithm
from icerelay.stun.credentials import userhash
from icerelay.turn.client import (
    AllocationClosed,
    AllocationExpired,
    AllocationFailed,
    AllocationRefreshed,
    AllocationSucceeded,
    AlternateServer,
    ChannelBindFailed,
    ChannelBound,
    DataReceived,
    PermissionCreated,
    PermissionFailed,
    State,
)
from icerelay.turn.client.allocation import REFUSED_HOLD

from .test_client_fakes import (
    ALTERNATE,
    CLIENT,
    GLOBAL_PEER,
    GLOBAL_PEER2,
    PEER,
    PRIVATE_PEER,
    REALM,
    RELAYED,
    SERVER,
    USER,
    FakeServer,
    make,
)

A = AttributeType


# ---------------------------------------------------------------------- authentication


def test_allocate_401_then_retry_with_long_term_credentials() -> None:
    h = make()
    first, second = h.requests_of(Method.ALLOCATE)
    # RFC 8656 §7.1: the first Allocate goes without credentials, the 401 teaches REALM/NONCE.
    assert A.USERNAME not in first and A.MESSAGE_INTEGRITY not in first
    assert first.get(A.REQUESTED_TRANSPORT) == 17
    assert second.get(A.USERNAME) == USER
    assert second.get(A.REALM) == REALM
    assert second.get(A.NONCE) == "nonce-1"
    assert second.integrity_algorithm == "sha1"
    assert second.transaction_id != first.transaction_id
    assert h.events == [AllocationSucceeded(RELAYED, CLIENT, 600)]
    assert h.engine.state is State.ALLOCATED
    assert h.engine.relayed_address == RELAYED and h.engine.mapped_address == CLIENT


def test_wrong_password_fails_with_401() -> None:
    server = FakeServer()
    server.users[USER] = "not the password"
    h = make(server=server)
    assert len(h.requests_of(Method.ALLOCATE)) == 2  # no retry loop on a second 401
    assert len(h.events) == 1
    failed = h.events[0]
    assert isinstance(failed, AllocationFailed) and failed.code == 401
    assert h.engine.state is State.CLOSED
    assert h.engine.next_timer() is None


def test_stale_nonce_on_allocate_is_retried_with_the_new_nonce() -> None:
    server = FakeServer(stale_next=1)
    h = make(server=server)
    allocates = h.requests_of(Method.ALLOCATE)
    assert len(allocates) == 3  # no auth -> 401, auth -> 438, new nonce -> success
    assert allocates[1].get(A.NONCE) == "nonce-1"
    assert allocates[2].get(A.NONCE) == "nonce-2"
    assert isinstance(h.events[-1], AllocationSucceeded)


def test_stale_nonce_on_refresh_permission_and_channel_bind() -> None:
    h = make()
    h.server.stale_next = 1
    h.engine.send_to(b"x", PEER, h.now)
    h.pump()
    permissions = h.requests_of(Method.CREATE_PERMISSION)
    assert [r.get(A.NONCE) for r in permissions] == ["nonce-1", "nonce-2"]
    # The packet pipelined behind the 438'd request was dropped by the server; it went again
    # behind the re-signed one, so a sender that never retransmits loses nothing.
    assert h.server.dropped_sends == [(PEER, b"x")]
    assert h.server.sends == [(PEER, b"x")]
    assert h.engine.counters.dropped == 0
    h.server.stale_next = 1
    h.engine.refresh(h.now)
    h.pump()
    refreshes = h.requests_of(Method.REFRESH)
    assert [r.get(A.NONCE) for r in refreshes] == ["nonce-2", "nonce-3"]
    assert any(isinstance(e, AllocationRefreshed) for e in h.events)
    assert any(isinstance(e, ChannelBound) for e in h.events)


def test_endless_stale_nonce_gives_up() -> None:
    server = FakeServer(stale_next=100)
    h = make(server=server)
    assert len(h.requests_of(Method.ALLOCATE)) == 2 + 3  # 401 round, then three 438 retries
    failed = h.events[-1]
    assert isinstance(failed, AllocationFailed) and failed.code == 438


def test_sha256_and_userhash_when_the_server_offers_them() -> None:
    server = FakeServer(offer_sha256=True, offer_userhash=True)
    h = make(server=server)
    request = h.requests_of(Method.ALLOCATE)[1]
    # RFC 8489 §9.2.4: SHA-256 key and MESSAGE-INTEGRITY-SHA256, USERHASH instead of USERNAME,
    # the server's PASSWORD-ALGORITHMS echoed and the chosen one named.
    assert request.integrity_algorithm == "sha256"
    assert A.MESSAGE_INTEGRITY not in request
    assert A.USERNAME not in request
    assert request.get(A.USERHASH) == userhash(USER, REALM)
    chosen = request.get(A.PASSWORD_ALGORITHM)
    offered = request.get(A.PASSWORD_ALGORITHMS)
    assert chosen is not None and offered is not None
    assert chosen.algorithm == PasswordAlgorithm.SHA256
    assert [e.algorithm for e in offered] == [
        PasswordAlgorithm.SHA256,
        PasswordAlgorithm.MD5,
    ]
    assert isinstance(h.events[-1], AllocationSucceeded)
    # Later requests keep the same scheme.
    h.engine.send_to(b"x", PEER, h.now)
    h.pump()
    permission = h.requests_of(Method.CREATE_PERMISSION)[0]
    assert permission.integrity_algorithm == "sha256" and A.USERHASH in permission
    assert h.server.sends == [(PEER, b"x")]


def test_sha256_without_username_anonymity_keeps_username() -> None:
    h = make(server=FakeServer(offer_sha256=True))
    request = h.requests_of(Method.ALLOCATE)[1]
    assert request.integrity_algorithm == "sha256"
    assert request.get(A.USERNAME) == USER and A.USERHASH not in request
    assert isinstance(h.events[-1], AllocationSucceeded)


def test_userhash_refused_falls_back_to_username_once() -> None:
    # RFC 8489 servers cannot resolve a USERHASH of a computed (REST API) username.
    server = FakeServer(offer_sha256=True, offer_userhash=True, userhash_unknown=True)
    h = make(server=server)
    allocates = h.requests_of(Method.ALLOCATE)
    assert len(allocates) == 3
    assert A.USERHASH in allocates[1] and A.USERNAME not in allocates[1]
    assert allocates[2].get(A.USERNAME) == USER and A.USERHASH not in allocates[2]
    assert allocates[2].integrity_algorithm == "sha256"
    assert isinstance(h.events[-1], AllocationSucceeded)
    assert not h.engine.uses_userhash


def test_userhash_can_be_turned_off() -> None:
    h = make(server=FakeServer(offer_sha256=True, offer_userhash=True), userhash=False)
    assert h.requests_of(Method.ALLOCATE)[1].get(A.USERNAME) == USER
    assert isinstance(h.events[-1], AllocationSucceeded)


def test_wrong_password_with_userhash_fails_after_the_fallback() -> None:
    server = FakeServer(offer_sha256=True, offer_userhash=True)
    server.users[USER] = "not the password"
    h = make(server=server)
    assert len(h.requests_of(Method.ALLOCATE)) == 3
    failed = h.events[-1]
    assert isinstance(failed, AllocationFailed) and failed.code == 401


def test_response_with_bad_integrity_is_dropped_and_retransmission_continues() -> None:
    server = FakeServer()
    h = make(server=server)
    # Sign the next answer with the wrong key (FINGERPRINT still fine: only integrity fails).
    server.mangle = lambda message, data: message.encode(integrity_key=b"x" * 16, fingerprint=True)
    h.engine.refresh(h.now)
    h.pump()
    assert h.engine.counters.integrity_failures == 1
    assert not any(isinstance(e, AllocationRefreshed) for e in h.events)
    server.mangle = None
    h.advance(0.5)  # the retransmission gets a genuine answer
    assert any(isinstance(e, AllocationRefreshed) for e in h.events)


def test_unsigned_success_to_an_authenticated_request_is_dropped() -> None:
    server = FakeServer()
    h = make(server=server)
    h.engine.refresh(h.now)
    request_bytes = h.engine.datagrams_to_send(h.now)[0].data
    from icerelay.stun import decode_message

    request = decode_message(request_bytes)
    forged = request.response()
    forged.add(A.LIFETIME, 3600)
    h.deliver(forged.encode())
    assert h.engine.counters.integrity_failures == 1
    assert h.engine.lifetime == 600


def test_even_port_reservation_for_an_rtp_rtcp_pair() -> None:
    rtp = make(even_port=True, dont_fragment=True)
    request = rtp.requests_of(Method.ALLOCATE)[1]
    assert request.get(A.EVEN_PORT) is True and A.DONT_FRAGMENT in request
    assert rtp.events == [AllocationSucceeded(RELAYED, CLIENT, 600, b"T" * 8)]
    assert rtp.engine.reserved_token == b"T" * 8
    rtcp = make(reservation_token=rtp.engine.reserved_token, family=6, even_port=False)
    request = rtcp.requests_of(Method.ALLOCATE)[1]
    # The token alone says which port; EVEN-PORT and the family must not come with it.
    assert request.get(A.RESERVATION_TOKEN) == b"T" * 8
    assert A.EVEN_PORT not in request and A.REQUESTED_ADDRESS_FAMILY not in request
    assert rtcp.engine.relayed_address == Address(RELAYED.host, RELAYED.port + 1)


def test_seeded_rng_gives_reproducible_transaction_ids() -> None:
    import random

    runs = [make(rng=random.Random(7)) for _ in range(2)]
    ids = [[r.transaction_id for r in h.server.requests] for h in runs]
    assert ids[0] == ids[1] and len(set(ids[0])) == len(ids[0])


# ---------------------------------------------------------------------- ALTERNATE-SERVER


def test_300_alternate_server_is_followed_once() -> None:
    server = FakeServer(redirect_to=ALTERNATE)
    h = make(server=server, start=False)
    h.engine.start(h.now)
    h.pump()
    assert h.events[0] == AlternateServer(ALTERNATE)
    assert h.engine.server == ALTERNATE
    # Everything after the redirection goes to the alternate server ...
    destinations = [destination for destination, _ in h.wire]
    assert destinations[0] == SERVER and set(destinations[1:]) == {ALTERNATE}
    # ... which (same fake, still redirecting) sends a second 300: not followed again.
    failed = h.events[-1]
    assert isinstance(failed, AllocationFailed) and failed.code == 300


def test_alternate_server_then_success() -> None:
    server = FakeServer(redirect_to=ALTERNATE)
    h = make(server=server, start=False)
    h.engine.start(h.now)
    h.engine.datagrams_to_send(h.now)  # lose the first Allocate's bytes; answer by hand
    first = server.requests  # nothing yet
    assert first == []
    h.engine.handle_timer(h.now + 0.5)  # retransmission
    h.now += 0.5
    server.redirect_to = ALTERNATE
    for datagram in h.engine.datagrams_to_send(h.now):
        answers = server.handle(datagram.data)
        server.redirect_to = None
        for answer in answers:
            h.deliver(answer, SERVER)
    h.pump()
    assert h.events[0] == AlternateServer(ALTERNATE)
    assert isinstance(h.events[-1], AllocationSucceeded)
    # Datagrams from the old server are no longer accepted (UDP source check).
    before = h.engine.counters.ignored
    h.deliver(server.data_indication(PEER, b"x"), SERVER)
    assert h.engine.counters.ignored == before + 1


# ---------------------------------------------------------------------- refresh


def test_refresh_is_scheduled_a_minute_before_expiry() -> None:
    h = make()
    assert h.engine.next_timer() == pytest.approx(540.0)
    h.advance(539.9)
    assert h.requests_of(Method.REFRESH) == []
    new = h.advance(0.1)
    (refresh,) = h.requests_of(Method.REFRESH)
    assert refresh.get(A.LIFETIME) == 600
    assert new == [AllocationRefreshed(600)]
    assert h.engine.expires_at == pytest.approx(1140.0)
    h.advance(540.0)
    assert len(h.requests_of(Method.REFRESH)) == 2
    assert h.engine.state is State.ALLOCATED


def test_short_lifetime_refreshes_at_half_life() -> None:
    h = make(server=FakeServer(granted_lifetime=60))
    assert h.events == [AllocationSucceeded(RELAYED, CLIENT, 60)]
    assert h.engine.next_timer() == pytest.approx(30.0)


def test_refresh_437_means_the_allocation_is_gone() -> None:
    h = make()
    h.server.errors[Method.REFRESH] = 437
    new = h.advance(540.0)
    assert len(new) == 1 and isinstance(new[0], AllocationExpired)
    assert h.engine.state is State.CLOSED
    with pytest.raises(TurnError):
        h.engine.send_to(b"x", PEER, h.now)


def test_unanswered_refreshes_end_in_expiry() -> None:
    h = make(rto=1.0, rc=2, rm=2)  # a refresh times out after 3 s
    h.server.drop_requests = 10_000
    new = h.advance(700.0)
    refreshes = h.requests_of(Method.REFRESH)
    # One at 540 s, then retried every 10 s after each timeout until the 600 s lifetime ends.
    assert len(refreshes) >= 8
    assert [type(e) for e in new] == [AllocationExpired]
    assert h.engine.next_timer() is None


# ---------------------------------------------------------------------- permissions and data


def test_send_pipelines_data_right_behind_the_create_permission() -> None:
    h = make(channel_threshold=0)
    h.engine.send_to(b"one", PEER, h.now)
    out = h.engine.datagrams_to_send(h.now)
    # Both ready at once, in this order: no round trip spent waiting for the success.
    sent = [decode_message(datagram.data) for datagram in out]
    assert [(m.method, m.message_class) for m in sent] == [
        (Method.CREATE_PERMISSION, MessageClass.REQUEST),
        (Method.SEND, MessageClass.INDICATION),
    ]
    for datagram in out:
        for answer in h.server.handle(datagram.data):
            h.deliver(answer)
    h.pump()
    assert h.server.sends == [(PEER, b"one")]
    assert PermissionCreated(PEER.host) in h.events
    assert h.engine.counters.dropped == 0


def test_pipelined_data_behind_a_lost_create_permission_is_dropped_by_the_server() -> None:
    h = make(channel_threshold=0)
    h.server.drop_requests = 1  # the cost of pipelining: what waiting would have cost
    h.engine.send_to(b"one", PEER, h.now)
    h.pump()
    assert h.server.dropped_sends == [(PEER, b"one")]
    h.engine.send_to(b"two", PEER, h.now)  # still pending: goes at once, no second request
    h.pump()
    assert len(h.requests_of(Method.CREATE_PERMISSION)) == 1
    h.advance(0.5)  # the retransmission is answered
    h.engine.send_to(b"three", PEER, h.now)
    h.pump()
    assert h.server.sends == [(PEER, b"three")]
    assert h.engine.has_permission(PEER.host)


def test_send_creates_permission_first_and_queues_data_without_pipelining() -> None:
    h = make(channel_threshold=0, pipeline_permissions=False)
    h.server.drop_requests = 1  # lose the first CreatePermission: data must wait, not leak
    h.engine.send_to(b"one", PEER, h.now)
    h.engine.send_to(b"two", PEER, h.now)
    h.pump()
    assert h.server.sends == []
    assert len(h.requests_of(Method.CREATE_PERMISSION)) == 1  # one request for both packets
    h.advance(0.5)  # retransmission is answered
    assert h.server.sends == [(PEER, b"one"), (PEER, b"two")]
    assert PermissionCreated(PEER.host) in h.events
    assert h.engine.has_permission(PEER.host)
    h.engine.send_to(b"three", PEER, h.now)
    h.pump()
    assert h.server.sends[-1] == (PEER, b"three")
    assert len(h.requests_of(Method.CREATE_PERMISSION)) == 2  # the lost one was sent twice
    assert h.engine.counters.send_indications_sent == 3


@pytest.mark.parametrize("pipeline", [True, False])
def test_permission_failure_drops_queued_data(pipeline: bool) -> None:
    h = make(pipeline_permissions=pipeline)
    h.server.errors[Method.CREATE_PERMISSION] = 403
    h.engine.send_to(b"x", PEER, h.now)
    h.pump()
    failed = [e for e in h.events if isinstance(e, PermissionFailed)]
    assert failed == [PermissionFailed(PEER.host, "403 Forbidden", 403)]
    # Queued and never sent, or pipelined and dropped by the server: counted the same.
    assert h.engine.counters.dropped == 1
    assert h.server.sends == []
    assert not h.engine.has_permission(PEER.host)
    # No ChannelBind for a peer whose permission was never confirmed (it would fail too).
    assert h.requests_of(Method.CHANNEL_BIND) == []


def test_refused_peer_is_not_asked_for_again_on_every_packet() -> None:
    h = make(channel_threshold=0)
    h.server.refuse_peers = {PRIVATE_PEER.host}
    h.engine.send_to(b"check", PRIVATE_PEER, h.now)
    h.pump()
    assert [e for e in h.events if isinstance(e, PermissionFailed)] == [
        PermissionFailed(PRIVATE_PEER.host, "403 Forbidden", 403)
    ]
    for _ in range(5):  # an ICE agent retransmitting its check on that pair
        h.advance(1.0)
        h.engine.send_to(b"check", PRIVATE_PEER, h.now)
        h.pump()
    assert len(h.requests_of(Method.CREATE_PERMISSION)) == 1
    assert h.engine.counters.dropped == 6
    h.advance(REFUSED_HOLD)  # policies may change: ask again, once, later
    h.engine.send_to(b"check", PRIVATE_PEER, h.now)
    h.pump()
    assert len(h.requests_of(Method.CREATE_PERMISSION)) == 2


def test_permission_is_refreshed_at_240_s_while_in_use_and_lapses_when_idle() -> None:
    h = make(channel_threshold=0)
    h.engine.send_to(b"x", PEER, h.now)
    h.pump()
    h.advance(100.0)
    h.engine.send_to(b"y", PEER, h.now)  # in use during this period
    h.advance(140.0)  # t = 240
    creates = h.requests_of(Method.CREATE_PERMISSION)
    assert len(creates) == 2
    assert creates[1].get(A.XOR_PEER_ADDRESS) == PEER
    # Nothing sent since: no refresh at 480 s, the permission lapses at 540 s.
    h.advance(301.0)
    assert len(h.requests_of(Method.CREATE_PERMISSION)) == 2
    assert not h.engine.has_permission(PEER.host)
    h.server.permissions.clear()  # the server forgot it too
    h.engine.send_to(b"z", PEER, h.now)
    h.pump()
    assert len(h.requests_of(Method.CREATE_PERMISSION)) == 3
    assert h.server.sends[-1] == (PEER, b"z")


def test_explicit_permissions_for_global_peers_go_in_one_request_and_stay() -> None:
    h = make()
    h.engine.create_permission([GLOBAL_PEER, GLOBAL_PEER2], h.now)
    h.pump()
    (request,) = h.requests_of(Method.CREATE_PERMISSION)
    assert [p.host for p in request.get_all(A.XOR_PEER_ADDRESS)] == [
        GLOBAL_PEER.host,
        GLOBAL_PEER2.host,
    ]
    h.advance(1000.0)
    # Pinned: refreshed every 240 s without traffic (batched, both peers each time).
    refreshes = h.requests_of(Method.CREATE_PERMISSION)[1:]
    assert len(refreshes) == 4
    assert all(len(r.get_all(A.XOR_PEER_ADDRESS)) == 2 for r in refreshes)
    assert h.engine.has_permission(GLOBAL_PEER2.host)


def test_a_refused_private_peer_does_not_cost_the_others_their_permission() -> None:
    h = make()
    h.server.refuse_peers = {PRIVATE_PEER.host}
    # ICE's remote candidates: a private host candidate, srflx and relayed public ones.
    h.engine.create_permission([PRIVATE_PEER, GLOBAL_PEER, PEER, GLOBAL_PEER2], h.now)
    h.pump()
    requests = h.requests_of(Method.CREATE_PERMISSION)
    # Global peers share a request; each address servers usually deny asks alone.
    assert sorted(len(r.get_all(A.XOR_PEER_ADDRESS)) for r in requests) == [1, 1, 2]
    assert h.now == 0.0  # all granted in the first round trip, none retried
    for peer in (GLOBAL_PEER, PEER, GLOBAL_PEER2):
        assert h.engine.has_permission(peer.host)
    assert not h.engine.has_permission(PRIVATE_PEER.host)
    assert [e for e in h.events if isinstance(e, PermissionFailed)] == [
        PermissionFailed(PRIVATE_PEER.host, "403 Forbidden", 403)
    ]


def test_a_batch_refused_with_403_is_retried_peer_by_peer() -> None:
    h = make()
    h.server.refuse_peers = {GLOBAL_PEER.host}  # an operator's own deny list
    h.engine.create_permission([GLOBAL_PEER, GLOBAL_PEER2], h.now)
    h.engine.send_to(b"check", GLOBAL_PEER2, h.now)  # pipelined behind the doomed batch
    h.pump()
    # Dropped with the batch, sent again behind GLOBAL_PEER2's own request: delivered.
    assert h.server.sends == [(GLOBAL_PEER2, b"check")]
    sizes = [len(r.get_all(A.XOR_PEER_ADDRESS)) for r in h.requests_of(Method.CREATE_PERMISSION)]
    assert sizes == [2, 1, 1]
    assert h.engine.has_permission(GLOBAL_PEER2.host)
    assert not h.engine.has_permission(GLOBAL_PEER.host)
    failed = [e for e in h.events if isinstance(e, PermissionFailed)]
    assert failed == [PermissionFailed(GLOBAL_PEER.host, "403 Forbidden", 403)]


def test_permissions_asked_before_the_allocation_wait_for_it() -> None:
    h = make(start=False)
    h.engine.start(h.now)
    h.engine.create_permission([PEER, Address("2001:db8::7", 9)], h.now)
    h.pump()
    (request,) = h.requests_of(Method.CREATE_PERMISSION)
    assert request.get_all(A.XOR_PEER_ADDRESS) == [PEER]  # the IPv6 one can't be: counted
    assert h.engine.counters.dropped == 1
    assert h.engine.has_permission(PEER.host)


def test_data_indication_is_delivered() -> None:
    h = make()
    h.engine.create_permission([PEER], h.now)
    h.pump()
    h.deliver(h.server.data_indication(PEER, b"hello"))
    assert h.pump() == [DataReceived(PEER, b"hello")]
    assert h.engine.counters.data_indications_received == 1
    assert h.engine.counters.bytes_received == 5


def test_data_indication_from_peer_without_permission_is_ignored() -> None:
    h = make()
    h.deliver(h.server.data_indication(PEER, b"hello"))
    assert h.pump() == []
    assert h.engine.counters.ignored == 1


def test_channel_bound_after_first_packet_then_channel_data_both_ways() -> None:
    h = make()
    h.engine.send_to(b"first", PEER, h.now)
    h.pump()
    # The first packet went as a Send indication, and started the ChannelBind.
    assert h.server.sends == [(PEER, b"first")]
    (bind,) = h.requests_of(Method.CHANNEL_BIND)
    number = bind.get(A.CHANNEL_NUMBER)
    assert number is not None and 0x4000 <= number <= 0x4FFF
    assert ChannelBound(PEER, number) in h.events
    assert h.engine.channel_for(PEER) == number
    h.engine.send_to(b"second", PEER, h.now)
    h.pump()
    assert h.server.channel_data == [(number, b"second")]
    assert h.server.raw_channel_frames[0][:4] == bytes([0x40, number & 0xFF, 0, 6])
    assert h.engine.counters.channel_data_sent == 1
    h.deliver(h.server.channel_data_from(PEER, b"back"))
    assert h.pump() == [DataReceived(PEER, b"back")]
    assert h.engine.counters.channel_data_received == 1


def test_data_waits_in_send_indications_while_the_bind_is_in_flight() -> None:
    h = make()
    h.server.drop_requests = 0
    h.engine.send_to(b"a", PEER, h.now)
    h.pump()
    assert h.engine.channel_for(PEER) is not None
    other = make(channel_threshold=3)
    for payload in (b"1", b"2", b"3", b"4"):
        other.engine.send_to(payload, PEER, other.now)
        other.pump()
    assert [p for _, p in other.server.sends] == [b"1", b"2", b"3"]
    assert [p for _, p in other.server.channel_data] == [b"4"]


def test_channel_is_refreshed_before_600_s_while_in_use() -> None:
    h = make()
    h.engine.send_to(b"a", PEER, h.now)
    h.pump()
    for _ in range(6):  # traffic every 100 s
        h.advance(100.0)
        h.engine.send_to(b"b", PEER, h.now)
        h.pump()
    binds = h.requests_of(Method.CHANNEL_BIND)
    assert len(binds) == 2  # the first, and the refresh at 540 s with the same number
    assert binds[0].get(A.CHANNEL_NUMBER) == binds[1].get(A.CHANNEL_NUMBER)
    assert len([e for e in h.events if isinstance(e, ChannelBound)]) == 1
    assert h.engine.channel_for(PEER) is not None


def test_idle_channel_expires_and_a_new_one_is_bound_on_new_traffic() -> None:
    h = make()
    h.engine.send_to(b"a", PEER, h.now)
    h.pump()
    first = h.engine.channel_for(PEER)
    h.engine.create_permission([PEER], h.now)  # keep the permission, not the channel
    h.advance(601.0)
    assert h.engine.channel_for(PEER) is None
    h.engine.send_to(b"b", PEER, h.now)
    h.pump()
    second = h.engine.channel_for(PEER)
    assert second is not None and second != first


def test_explicit_channel_bind_installs_the_permission() -> None:
    h = make()
    h.engine.bind_channel(PEER, h.now)
    h.pump()
    number = h.engine.channel_for(PEER)
    assert number is not None and h.engine.has_permission(PEER.host)
    assert h.requests_of(Method.CREATE_PERMISSION) == []
    h.engine.send_to(b"direct", PEER, h.now)
    h.pump()
    assert h.server.channel_data == [(number, b"direct")]


def test_channel_bind_failure_keeps_send_indications() -> None:
    h = make()
    h.server.errors[Method.CHANNEL_BIND] = 400
    for payload in (b"1", b"2", b"3"):
        h.engine.send_to(payload, PEER, h.now)
        h.pump()
    assert [p for _, p in h.server.sends] == [b"1", b"2", b"3"]
    assert len(h.requests_of(Method.CHANNEL_BIND)) == 1  # not retried on every packet
    assert any(isinstance(e, ChannelBindFailed) for e in h.events)


def test_data_sent_before_the_allocation_waits_for_it() -> None:
    h = make(start=False)
    h.engine.start(h.now)
    h.engine.send_to(b"early", PEER, h.now)
    h.pump()
    assert h.server.sends == [(PEER, b"early")]


def test_peer_of_the_wrong_family_is_refused() -> None:
    h = make()
    with pytest.raises(TurnError):
        h.engine.send_to(b"x", Address("2001:db8::1", 5000), h.now)


# ---------------------------------------------------------------------- closing


def test_close_deallocates_with_lifetime_zero() -> None:
    h = make()
    h.engine.send_to(b"x", PEER, h.now)
    h.pump()
    h.engine.close(h.now)
    new = h.pump()
    refresh = h.requests_of(Method.REFRESH)[-1]
    assert refresh.get(A.LIFETIME) == 0
    assert new == [AllocationClosed(confirmed=True)]
    assert h.engine.state is State.CLOSED
    assert h.engine.next_timer() is None
    with pytest.raises(TurnError):
        h.engine.send_to(b"x", PEER, h.now)
    h.engine.close(h.now)  # idempotent
    assert h.pump() == []


def test_close_without_answer_reports_unconfirmed() -> None:
    h = make()
    h.server.drop_requests = 100
    h.engine.close(h.now)
    new = h.advance(40.0)
    assert new == [AllocationClosed(confirmed=False)]


def test_close_while_allocating_deallocates_once_allocated() -> None:
    h = make(start=False)
    h.engine.start(h.now)
    h.engine.close(h.now)
    h.pump()
    assert [type(e) for e in h.events] == [AllocationSucceeded, AllocationClosed]
    assert h.requests_of(Method.REFRESH)[-1].get(A.LIFETIME) == 0


def test_close_before_start() -> None:
    h = make(start=False)
    h.engine.close(h.now)
    assert h.pump() == [AllocationClosed(confirmed=True)]
    assert h.server.requests == []
