"""The agent engine on its own: what its checks carry, how it answers, roles, pacing, gathering.

Each test drives :class:`icerelay.ice.Agent` directly with bytes and virtual time, playing the
peer (or a STUN server) by hand with icerelay.stun messages.
"""

from __future__ import annotations

import os
import random

import pytest

from icerelay.errors import IceError
from icerelay.ice import (
    Agent,
    AgentConfig,
    Candidate,
    CandidateGathered,
    CandidateType,
    ConnectionState,
    Datagram,
    GatheringComplete,
    Nomination,
    PairState,
    RoleChanged,
    candidate_priority,
    make_local_candidate,
)
from icerelay.stun import (
    Address,
    AttributeType,
    Message,
    MessageClass,
    Method,
    decode_message,
)
from icerelay.stun.credentials import short_term_key

LOCAL = ("192.0.2.1", 5000)
PEER = ("192.0.2.2", 6000)
PEER_UFRAG, PEER_PWD = "peerufrag", "peerpasswordpeerpassword"


def remote(address: tuple[str, int] = PEER, component: int = 1) -> Candidate:
    local = make_local_candidate(CandidateType.HOST, address, address, component)
    return Candidate(
        local.foundation,
        component,
        "udp",
        local.priority,
        address[0],
        address[1],
        CandidateType.HOST,
    )


def make_agent(controlling: bool = True, **config: object) -> Agent:
    agent = Agent(
        controlling=controlling,
        config=AgentConfig(**config),  # type: ignore[arg-type]
        rng=random.Random(1),
        tie_breaker=1000,
    )
    agent.gather({1: [LOCAL]}, 0.0)
    return agent


def events(agent: Agent) -> list[object]:
    out = []
    while (event := agent.next_event()) is not None:
        out.append(event)
    return out


def stun_out(agent: Agent, now: float) -> list[tuple[Message, Datagram]]:
    return [(decode_message(d.data), d) for d in agent.datagrams_to_send(now)]


def peer_check(
    agent: Agent,
    *,
    controlling: int | None = None,
    controlled: int | None = None,
    use_candidate: bool = False,
    username: str | None = None,
    pwd: str | None = None,
    priority: int = 1862270975,
) -> bytes:
    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    request.add(AttributeType.USERNAME, username or f"{agent.local_username}:{PEER_UFRAG}")
    request.add(AttributeType.PRIORITY, priority)
    if controlling is not None:
        request.add(AttributeType.ICE_CONTROLLING, controlling)
    if controlled is not None:
        request.add(AttributeType.ICE_CONTROLLED, controlled)
    if use_candidate:
        request.add(AttributeType.USE_CANDIDATE)
    key = short_term_key(pwd or agent.local_password)
    return request.encode(integrity_key=key, fingerprint=True)


def answer(request: Message, mapped: tuple[str, int], code: int | None = None) -> bytes:
    if code is None:
        response = request.response()
        response.add(AttributeType.XOR_MAPPED_ADDRESS, Address(*mapped))
    else:
        response = request.error_response(code, "Role Conflict")
    return response.encode(integrity_key=short_term_key(PEER_PWD), fingerprint=True)


def test_host_candidates_are_reported_at_once() -> None:
    agent = Agent(controlling=True, components=2, rng=random.Random(1))
    agent.gather({1: [LOCAL, ("10.0.0.1", 5000)], 2: [("192.0.2.1", 5001)]}, 0.0)
    got = events(agent)
    gathered = [e.candidate for e in got if isinstance(e, CandidateGathered)]
    assert [c.address for c in gathered] == [LOCAL, ("10.0.0.1", 5000), ("192.0.2.1", 5001)]
    assert [c.priority for c in gathered] == [2130706431, 2130706175, 2130706430]
    assert isinstance(got[-1], GatheringComplete)  # no servers: nothing more to wait for


def test_credentials_are_ice_chars_of_sufficient_length() -> None:
    agent = make_agent()
    assert len(agent.local_username) >= 4 and len(agent.local_password) >= 22
    assert set(agent.local_username + agent.local_password) <= set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
    )


@pytest.mark.parametrize("nomination", [Nomination.REGULAR, Nomination.AGGRESSIVE])
def test_check_carries_the_ice_attributes(nomination: Nomination) -> None:
    agent = make_agent(nomination=nomination)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    [(check, datagram)] = stun_out(agent, 0.0)
    assert (datagram.source, datagram.destination) == (LOCAL, PEER)
    assert check.method == Method.BINDING and check.message_class == MessageClass.REQUEST
    assert check.get(AttributeType.USERNAME) == f"{PEER_UFRAG}:{agent.local_username}"
    # PRIORITY: what a peer-reflexive candidate from this base would have (section 7.1.1)
    assert check.get(AttributeType.PRIORITY) == candidate_priority(
        CandidateType.PEER_REFLEXIVE, 1, 65535
    )
    assert check.get(AttributeType.ICE_CONTROLLING) == 1000
    assert AttributeType.ICE_CONTROLLED not in check
    assert (AttributeType.USE_CANDIDATE in check) is (nomination is Nomination.AGGRESSIVE)
    assert check.check_integrity(short_term_key(PEER_PWD))
    assert check.has_fingerprint and check.fingerprint_ok
    assert agent.state is ConnectionState.CHECKING


def test_checks_are_paced_by_ta() -> None:
    agent = make_agent(ta=0.02)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    for ip in ("192.0.2.2", "192.0.2.3", "192.0.2.4"):  # three foundations: no freezing
        agent.add_remote_candidate(remote((ip, 6000)), 0.0)
    sent: list[tuple[float, tuple[str, int]]] = []
    now = 0.0
    while len(sent) < 3:
        sent += [(now, d.destination) for _, d in stun_out(agent, now)]
        timer = agent.next_timer()
        assert timer is not None
        now = timer
        agent.handle_timer(now)
    assert [round(t, 6) for t, _ in sent] == [0.0, 0.02, 0.04]
    assert {dest for _, dest in sent} == {
        (ip, 6000) for ip in ("192.0.2.2", "192.0.2.3", "192.0.2.4")
    }


def test_pairs_of_one_foundation_wait_for_the_first_result() -> None:
    agent = make_agent()
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    for port in (6000, 6001):
        agent.add_remote_candidate(remote(("192.0.2.2", port)), 0.0)
    [(check, _)] = stun_out(agent, 0.0)
    agent.handle_timer(0.3)
    assert stun_out(agent, 0.3) == []  # frozen behind the first check of its foundation
    second = agent.checklist.find(LOCAL, ("192.0.2.2", 6001))
    assert second is not None and second.state is PairState.FROZEN
    agent.receive(answer(check, LOCAL), PEER, LOCAL, 0.35)
    # The success unfroze its foundation (and the free Ta slot sent it straight away).
    assert second.state in (PairState.WAITING, PairState.IN_PROGRESS)


def test_a_peer_check_is_answered_and_triggers_a_check_at_once() -> None:
    agent = make_agent(controlling=False)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    # The peer's check arrives before its candidate was signalled: a peer-reflexive candidate.
    agent.receive(peer_check(agent, controlling=5), PEER, LOCAL, 0.1)
    out = stun_out(agent, 0.1)
    assert len(out) == 2
    (response, to_peer), (triggered, check_datagram) = out
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    assert response.get(AttributeType.XOR_MAPPED_ADDRESS) == Address(*PEER)
    assert response.check_integrity(short_term_key(agent.local_password))
    assert to_peer.destination == PEER and to_peer.source == LOCAL
    assert triggered.message_class == MessageClass.REQUEST
    assert check_datagram.destination == PEER
    assert triggered.get(AttributeType.ICE_CONTROLLED) == 1000
    [prflx] = agent.remote_candidates
    assert prflx.type is CandidateType.PEER_REFLEXIVE and prflx.priority == 1862270975


def test_check_before_remote_credentials_is_answered_then_checked_back() -> None:
    agent = make_agent(controlling=False)
    agent.receive(peer_check(agent, controlling=5), PEER, LOCAL, 0.0)
    [(response, _)] = stun_out(agent, 0.0)
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.2)
    [(triggered, datagram)] = stun_out(agent, 0.2)
    assert datagram.destination == PEER and triggered.message_class == MessageClass.REQUEST


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"username": "wrong:peerufrag"}, 401),
        ({"pwd": "notthepasswordnotthepassword"}, 401),
    ],
)
def test_bad_credentials_get_401(kwargs: dict[str, str], code: int) -> None:
    agent = make_agent(controlling=False)
    agent.receive(peer_check(agent, controlling=5, **kwargs), PEER, LOCAL, 0.0)  # type: ignore[arg-type]
    [(response, _)] = stun_out(agent, 0.0)
    error = response.get(AttributeType.ERROR_CODE)
    assert error is not None and error.code == code
    assert agent.remote_candidates == []


def test_missing_username_gets_400() -> None:
    agent = make_agent(controlling=False)
    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    agent.receive(request.encode(fingerprint=True), PEER, LOCAL, 0.0)
    [(response, _)] = stun_out(agent, 0.0)
    error = response.get(AttributeType.ERROR_CODE)
    assert error is not None and error.code == 400


@pytest.mark.parametrize(
    ("controlling", "peer_tie_breaker", "expect_487", "expect_role"),
    [
        (True, 5, True, True),  # both controlling, ours larger: peer must switch
        (True, 5000, False, False),  # theirs larger: we switch to controlled
        (False, 5, False, True),  # both controlled, ours larger: we become controlling
        (False, 5000, True, False),  # theirs larger: they must switch
    ],
)
def test_role_conflict_on_incoming_check(
    controlling: bool, peer_tie_breaker: int, expect_487: bool, expect_role: bool
) -> None:
    agent = make_agent(controlling=controlling)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    stun_out(agent, 0.0)
    events(agent)
    role = {"controlling": peer_tie_breaker} if controlling else {"controlled": peer_tie_breaker}
    agent.receive(peer_check(agent, **role), PEER, LOCAL, 0.0)  # type: ignore[arg-type]
    response = stun_out(agent, 0.0)[0][0]
    error = response.get(AttributeType.ERROR_CODE)
    assert (error is not None and error.code == 487) is expect_487
    assert agent.controlling is expect_role
    switched = [e for e in events(agent) if isinstance(e, RoleChanged)]
    assert bool(switched) is (expect_role != controlling)


def test_487_response_switches_role_and_retries() -> None:
    agent = make_agent(controlling=True)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    [(check, _)] = stun_out(agent, 0.0)
    agent.receive(answer(check, LOCAL, code=487), PEER, LOCAL, 0.01)
    assert agent.controlling is False
    agent.handle_timer(max(agent.next_timer() or 0.0, 0.05))
    [(retry, _)] = stun_out(agent, 0.05)
    assert retry.get(AttributeType.ICE_CONTROLLED) == 1000
    assert AttributeType.ICE_CONTROLLING not in retry


def test_regular_nomination_sends_use_candidate_after_success() -> None:
    agent = make_agent(controlling=True)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    [(check, _)] = stun_out(agent, 0.0)
    agent.receive(answer(check, LOCAL), PEER, LOCAL, 0.01)
    assert agent.state is ConnectionState.CONNECTED
    pair = agent.selected_pair()
    assert pair is not None and not pair.nominated
    # Nothing better can come: the nomination goes at once, without waiting for a Ta slot.
    now = 0.01
    [(nomination, _)] = stun_out(agent, now)
    assert AttributeType.USE_CANDIDATE in nomination
    agent.receive(answer(nomination, LOCAL), PEER, LOCAL, now + 0.01)
    assert agent.state is ConnectionState.COMPLETED
    assert agent.selected_pair() is pair and pair.nominated


def test_controlled_agent_selects_what_the_peer_nominates() -> None:
    agent = make_agent(controlling=False)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    [(check, _)] = stun_out(agent, 0.0)
    agent.receive(answer(check, LOCAL), PEER, LOCAL, 0.01)
    assert agent.state is ConnectionState.CONNECTED
    agent.receive(peer_check(agent, controlling=5, use_candidate=True), PEER, LOCAL, 0.02)
    assert agent.state is ConnectionState.COMPLETED
    pair = agent.selected_pair()
    assert pair is not None and pair.nominated


def test_use_candidate_before_our_check_succeeds_nominates_on_success() -> None:
    agent = make_agent(controlling=False)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.receive(peer_check(agent, controlling=5, use_candidate=True), PEER, LOCAL, 0.0)
    [_, (triggered, _)] = stun_out(agent, 0.0)
    assert agent.state is ConnectionState.CHECKING
    agent.receive(answer(triggered, LOCAL), PEER, LOCAL, 0.01)
    assert agent.state is ConnectionState.COMPLETED


def test_mapped_address_unknown_makes_a_local_peer_reflexive_candidate() -> None:
    agent = make_agent(controlling=False)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    [(check, _)] = stun_out(agent, 0.0)
    agent.receive(answer(check, ("203.0.113.5", 40000)), PEER, LOCAL, 0.01)
    pair = agent.selected_pair()
    assert pair is not None
    assert pair.local.type is CandidateType.PEER_REFLEXIVE
    assert pair.local.address == ("203.0.113.5", 40000)
    assert pair.local.base == LOCAL
    assert pair.local.priority == check.get(AttributeType.PRIORITY)


def test_asymmetric_response_fails_the_pair() -> None:
    agent = make_agent(controlling=True)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    agent.add_remote_candidate(None, 0.0)
    [(check, _)] = stun_out(agent, 0.0)
    agent.receive(answer(check, LOCAL), ("192.0.2.99", 6000), LOCAL, 0.01)
    assert agent.selected_pair() is None
    assert agent.state is ConnectionState.FAILED


def test_unanswered_check_fails_after_retransmissions() -> None:
    agent = make_agent(controlling=True)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    agent.add_remote_candidate(None, 0.0)
    now = 0.0
    sends = []
    while agent.state is not ConnectionState.FAILED:
        sends += [now for _ in agent.datagrams_to_send(now)]
        timer = agent.next_timer()
        assert timer is not None
        now = timer
        agent.handle_timer(now)
    assert [round(t, 3) for t in sends] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert now == pytest.approx(39.5)
    assert agent.checks_sent == 7


def test_response_with_bad_integrity_is_ignored() -> None:
    agent = make_agent(controlling=True)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    [(check, _)] = stun_out(agent, 0.0)
    forged = check.response()
    forged.add(AttributeType.XOR_MAPPED_ADDRESS, Address(*LOCAL))
    data = forged.encode(integrity_key=b"wrong", fingerprint=True)
    agent.receive(data, PEER, LOCAL, 0.01)
    assert agent.selected_pair() is None


def test_media_flows_on_the_selected_pair_and_comes_back_as_events() -> None:
    agent = make_agent(controlling=False)
    with pytest.raises(IceError):
        agent.send(b"rtp", now=0.0)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    [(check, _)] = stun_out(agent, 0.0)
    agent.receive(answer(check, LOCAL), PEER, LOCAL, 0.01)
    agent.send(b"\x80rtp", now=0.02)
    [datagram] = agent.datagrams_to_send(0.02)
    assert (datagram.data, datagram.source, datagram.destination) == (b"\x80rtp", LOCAL, PEER)
    events(agent)
    agent.receive(b"\x80back", PEER, LOCAL, 0.03)
    [received] = events(agent)
    assert received.data == b"\x80back" and received.component == 1  # type: ignore[attr-defined]


def test_srflx_candidates_arrive_as_stun_answers_and_dead_servers_only_delay_completion() -> None:
    alive, dead = ("198.51.100.1", 3478), ("198.51.100.2", 3478)
    agent = Agent(
        controlling=True,
        config=AgentConfig(stun_servers=(alive, dead)),
        rng=random.Random(1),
    )
    agent.gather({1: [LOCAL]}, 0.0)
    requests = stun_out(agent, 0.0)
    assert {d.destination for _, d in requests} == {alive, dead}
    to_alive = next(m for m, d in requests if d.destination == alive)
    response = to_alive.response()
    response.add(AttributeType.XOR_MAPPED_ADDRESS, Address("203.0.113.7", 41000))
    agent.receive(response.encode(fingerprint=True), alive, LOCAL, 0.03)
    got = events(agent)
    gathered = [e.candidate for e in got if isinstance(e, CandidateGathered)]
    assert [c.type for c in gathered] == [CandidateType.HOST, CandidateType.SERVER_REFLEXIVE]
    assert gathered[1].address == ("203.0.113.7", 41000)
    assert gathered[1].priority == 1694498815
    assert not any(isinstance(e, GatheringComplete) for e in got)
    now = 0.03
    while not agent.gatherer.complete:
        timer = agent.next_timer()
        assert timer is not None
        now = timer
        agent.handle_timer(now)
    assert any(isinstance(e, GatheringComplete) for e in events(agent))
    # RTO 0.25 s, 6 requests, then Rm (16) x RTO: the dead server costs 11.75 s at most.
    assert now == pytest.approx(11.75)


def test_lite_agent_never_checks_and_selects_the_nominated_pair() -> None:
    agent = Agent(controlling=True, lite=True, rng=random.Random(1))
    assert agent.controlling is False
    agent.gather({1: [LOCAL]}, 0.0)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    assert agent.datagrams_to_send(0.0) == []
    agent.receive(peer_check(agent, controlling=5), PEER, LOCAL, 0.1)
    [(response, _)] = stun_out(agent, 0.1)
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    assert agent.state is ConnectionState.CONNECTED
    agent.receive(peer_check(agent, controlling=5, use_candidate=True), PEER, LOCAL, 0.2)
    assert len(stun_out(agent, 0.2)) == 1  # the response, no check
    assert agent.state is ConnectionState.COMPLETED


def test_remote_lite_makes_us_controlling() -> None:
    agent = make_agent(controlling=False)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0, lite=True)
    assert agent.controlling is True


def test_new_credentials_need_a_restart() -> None:
    agent = make_agent()
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    with pytest.raises(IceError):
        agent.set_remote_credentials("other", PEER_PWD, 0.0)
    old = agent.local_username
    agent.restart(1.0)
    assert agent.local_username != old
    agent.set_remote_credentials("other", PEER_PWD, 1.0)


def test_rtcp_candidates_are_ignored_with_rtcp_mux() -> None:
    agent = make_agent()
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(("192.0.2.2", 6001), component=2), 0.0)
    assert agent.remote_candidates == []


@pytest.mark.parametrize("include_local", [False, True])
def test_one_to_one_nat_host_mapping(include_local: bool) -> None:
    config = AgentConfig(host_mappings=(("10.0.0.5", "198.51.100.50", include_local),))
    agent = Agent(controlling=False, config=config, rng=random.Random(1))
    local = ("10.0.0.5", 5000)
    agent.gather({1: [local]}, 0.0)
    gathered = [e.candidate for e in events(agent) if isinstance(e, CandidateGathered)]
    expected = [("198.51.100.50", 5000)] + ([local] if include_local else [])
    assert [c.address for c in gathered] == expected
    assert all(c.type is CandidateType.HOST and c.base == local for c in gathered)
    # A check to the socket is answered as usual: the socket is the base of the advertised one.
    agent.receive(peer_check(agent, controlling=5), PEER, local, 0.1)
    response = stun_out(agent, 0.1)[0][0]
    assert response.message_class == MessageClass.SUCCESS_RESPONSE


def test_stun_acl_limits_which_bases_gather_srflx() -> None:
    server = ("198.51.100.1", 3478)
    config = AgentConfig(stun_servers=(server,), stun_base_allowed=lambda ip: ip != "10.0.0.9")
    agent = Agent(controlling=True, config=config, rng=random.Random(1))
    agent.gather({1: [("10.0.0.8", 5000), ("10.0.0.9", 5000)]}, 0.0)
    sources = [d.source for d in agent.datagrams_to_send(0.0)]
    assert sources == [("10.0.0.8", 5000)]
    assert len(agent.local_candidates) == 2


def test_becoming_controlling_late_nominates_what_is_already_valid() -> None:
    agent = make_agent(controlling=False)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(), 0.0)
    [(check, _)] = stun_out(agent, 0.0)
    agent.receive(answer(check, LOCAL), PEER, LOCAL, 0.01)
    assert agent.state is ConnectionState.CONNECTED and not agent.controlling
    # The peer turns out to be controlled too, with a smaller tie-breaker: we take control...
    agent.receive(peer_check(agent, controlled=5), PEER, LOCAL, 1.0)
    assert agent.controlling
    stun_out(agent, 1.0)
    now = 1.0
    nomination = None
    while nomination is None and now < 3.0:
        timer = agent.next_timer()
        assert timer is not None
        now = max(timer, now)
        agent.handle_timer(now)
        for message, _ in stun_out(agent, now):
            if AttributeType.USE_CANDIDATE in message:
                nomination = message
    # ...and so nominate the valid pair we already have.
    assert nomination is not None and AttributeType.ICE_CONTROLLING in nomination


def test_use_rtcp_mux_drops_the_rtcp_component_before_the_checks() -> None:
    agent = Agent(controlling=True, components=2, rng=random.Random(1))
    agent.gather({1: [LOCAL], 2: [("192.0.2.1", 5001)]}, 0.0)
    assert {c.component for c in agent.local_candidates} == {1, 2}
    agent.use_rtcp_mux()  # the answer accepted rtcp-mux (RFC 5761 section 5.1.3)
    assert agent.components == (1,) and {c.component for c in agent.local_candidates} == {1}
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    agent.add_remote_candidate(remote(("192.0.2.2", 6001), component=2), 0.0)
    assert agent.remote_candidates == []
    two = Agent(controlling=True, components=2, rng=random.Random(1))
    two.gather({1: [LOCAL], 2: [("192.0.2.1", 5001)]}, 0.0)
    two.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    with pytest.raises(IceError):
        two.use_rtcp_mux()
