"""Consent freshness (RFC 7675) and keepalives, on one agent with virtual time."""

from __future__ import annotations

import random

import pytest

from icerelay.errors import IceError
from icerelay.ice import (
    Agent,
    AgentConfig,
    Candidate,
    CandidateType,
    ConnectionState,
    ConnectionStateChanged,
    make_local_candidate,
)
from icerelay.stun import Address, AttributeType, MessageClass, decode_message, is_stun
from icerelay.stun.credentials import short_term_key

LOCAL = ("192.0.2.1", 5000)
PEER = ("192.0.2.2", 6000)
PEER_UFRAG, PEER_PWD = "peerufrag", "peerpasswordpeerpassword"


def connected_agent(**config: object) -> Agent:
    """A controlled agent whose only pair succeeded and was nominated at t = 1."""
    agent = Agent(
        controlling=False,
        config=AgentConfig(**config),  # type: ignore[arg-type]
        rng=random.Random(7),
    )
    agent.gather({1: [LOCAL]}, 0.0)
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD, 0.0)
    host = make_local_candidate(CandidateType.HOST, PEER, PEER, 1)
    agent.add_remote_candidate(
        Candidate(host.foundation, 1, "udp", host.priority, *PEER, CandidateType.HOST), 0.0
    )
    [datagram] = agent.datagrams_to_send(0.0)
    respond(agent, datagram.data, 1.0)
    pair = agent.selected_pair()
    assert pair is not None
    pair.nominated = True  # as if the peer had nominated it
    agent.handle_timer(1.0)
    return agent


def respond(agent: Agent, request_bytes: bytes, now: float) -> None:
    request = decode_message(request_bytes)
    response = request.response()
    response.add(AttributeType.XOR_MAPPED_ADDRESS, Address(*LOCAL))
    agent.receive(
        response.encode(integrity_key=short_term_key(PEER_PWD), fingerprint=True),
        PEER,
        LOCAL,
        now,
    )


def run(agent: Agent, until: float, now: float, *, answer: bool) -> list[float]:
    """Step the agent's timers until ``until``; return when it sent Binding requests."""
    sent: list[float] = []
    while True:
        for datagram in agent.datagrams_to_send(now):
            if is_stun(datagram.data):
                message = decode_message(datagram.data)
                if message.message_class == MessageClass.REQUEST:
                    sent.append(now)
                    if answer:
                        respond(agent, datagram.data, now + 0.01)
        timer = agent.next_timer()
        if timer is None or timer > until:
            return sent
        now = max(timer, now)
        agent.handle_timer(now)


def states(agent: Agent) -> list[ConnectionState]:
    out = []
    while (event := agent.next_event()) is not None:
        if isinstance(event, ConnectionStateChanged):
            out.append(event.state)
    return out


def test_consent_requests_every_five_seconds_randomized() -> None:
    agent = connected_agent()
    sent = run(agent, 200.0, 1.0, answer=True)
    gaps = [b - a for a, b in zip([1.0, *sent], sent, strict=False)]
    assert len(sent) >= 33
    assert all(4.0 <= gap <= 6.0 for gap in gaps)
    assert len({round(gap, 3) for gap in gaps}) > 10  # really randomized
    assert agent.state is ConnectionState.COMPLETED


def test_unanswered_consent_disconnects_then_fails_after_30_seconds() -> None:
    agent = connected_agent()
    states(agent)
    sent = run(agent, 100.0, 1.0, answer=False)
    assert states(agent) == [ConnectionState.DISCONNECTED, ConnectionState.FAILED]
    # last consent: the check answered at t = 1; requests stop when consent expires at 31
    assert sent and max(sent) < 31.0
    with pytest.raises(IceError):
        agent.send(b"\x80", now=40.0)


def test_disconnected_time_is_configurable() -> None:
    agent = connected_agent(disconnected_timeout=6.0, consent_timeout=10.0)
    states(agent)
    now = 1.0
    while agent.state is not ConnectionState.DISCONNECTED:
        agent.datagrams_to_send(now)
        timer = agent.next_timer()
        assert timer is not None
        now = timer
        agent.handle_timer(now)
    assert now == pytest.approx(7.0)
    while agent.state is not ConnectionState.FAILED:
        agent.datagrams_to_send(now)
        timer = agent.next_timer()
        assert timer is not None
        now = timer
        agent.handle_timer(now)
    assert now == pytest.approx(11.0)


def test_keepalive_indications_without_consent() -> None:
    agent = connected_agent(consent_freshness=False)
    indications: list[float] = []
    now = 1.0
    while now < 50.0:
        for datagram in agent.datagrams_to_send(now):
            message = decode_message(datagram.data)
            assert message.message_class == MessageClass.INDICATION
            indications.append(now)
        timer = agent.next_timer()
        assert timer is not None
        now = timer
        agent.handle_timer(now)
    # Tr = 15 s after the last packet sent on the pair (the check at t = 0)
    assert indications == [15.0, 30.0, 45.0]
    assert agent.state is ConnectionState.COMPLETED
