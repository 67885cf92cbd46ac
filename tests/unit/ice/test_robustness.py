"""Whatever arrives from the network, the agent neither raises nor misbehaves."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icerelay.ice import Agent, Candidate, CandidateType, make_local_candidate
from icerelay.stun import AttributeType, Message, MessageClass, Method
from icerelay.stun.credentials import short_term_key

LOCAL = ("192.0.2.1", 5000)
PEER = ("192.0.2.2", 6000)


def running_agent(controlling: bool) -> Agent:
    agent = Agent(controlling=controlling, rng=random.Random(3))
    agent.gather({1: [LOCAL]}, 0.0)
    agent.set_remote_credentials("peer", "peerpasswordpeerpassword", 0.0)
    host = make_local_candidate(CandidateType.HOST, PEER, PEER, 1)
    agent.add_remote_candidate(
        Candidate(host.foundation, 1, "udp", host.priority, *PEER, CandidateType.HOST), 0.0
    )
    return agent


ATTRIBUTES = st.sampled_from(
    [
        (AttributeType.USERNAME, st.text(max_size=40)),
        (AttributeType.PRIORITY, st.integers(0, 2**32 - 1)),
        (AttributeType.ICE_CONTROLLING, st.integers(0, 2**64 - 1)),
        (AttributeType.ICE_CONTROLLED, st.integers(0, 2**64 - 1)),
        (AttributeType.USE_CANDIDATE, st.none()),
        (0x7777, st.binary(max_size=16)),  # unknown, comprehension-required
    ]
)


@st.composite
def stun_messages(draw: st.DrawFn, agent_ufrag: str, agent_pwd: str) -> bytes:
    message = Message(
        draw(st.sampled_from([Method.BINDING, Method.ALLOCATE])),
        draw(st.sampled_from(list(MessageClass))),
        draw(st.binary(min_size=12, max_size=12)),
    )
    for attribute, values in draw(st.lists(ATTRIBUTES, max_size=6)):
        message.add(attribute, draw(values))
    if draw(st.booleans()):
        message.add(AttributeType.USERNAME, f"{agent_ufrag}:peer")
    key = short_term_key(agent_pwd) if draw(st.booleans()) else None
    return message.encode(integrity_key=key, fingerprint=draw(st.booleans()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), controlling=st.booleans())
def test_random_input_never_raises(data: st.DataObject, controlling: bool) -> None:
    agent = running_agent(controlling)
    now = 0.0
    for _ in range(data.draw(st.integers(1, 8))):
        if data.draw(st.booleans()):
            packet = data.draw(st.binary(max_size=120))
        else:
            packet = data.draw(stun_messages(agent.local_username, agent.local_password))
        source = data.draw(st.sampled_from([PEER, ("203.0.113.9", 7), ("192.0.2.2", 6001)]))
        destination = data.draw(st.sampled_from([LOCAL, ("192.0.2.1", 9999)]))
        now += data.draw(st.floats(0.0, 2.0))
        agent.receive(packet, source, destination, now)
        agent.datagrams_to_send(now)
        timer = agent.next_timer()
        if timer is not None and timer <= now + 1.0:
            agent.handle_timer(max(timer, now))
        while agent.next_event() is not None:
            pass
    # Still a working agent: it keeps checking its real peer.
    assert agent.checklist.pairs


def test_media_from_unknown_addresses_is_dropped() -> None:
    agent = running_agent(False)
    agent.receive(b"\x80rtp", ("203.0.113.66", 4000), LOCAL, 0.1)
    agent.receive(b"\x80rtp", PEER, LOCAL, 0.1)
    data_events = []
    while (event := agent.next_event()) is not None:
        if type(event).__name__ == "DataReceived":
            data_events.append(event)
    assert len(data_events) == 1
    assert agent.data_dropped == 1
