"""One ICE agent for audio (RTP + RTCP) and video (rtcp-mux): shared pacing, cross-stream
unfreezing, one role (RFC 8445 sections 6.1.2.6, 6.1.4.2, 7.2.5.3.3)."""

from __future__ import annotations

import itertools
import random
from typing import Any

from icerelay.ice import (
    AgentConfig,
    CandidateGathered,
    CandidatePairStateChanged,
    ConnectionState,
    GatheringComplete,
    PairState,
)
from icerelay.ice.session import Session, StreamEvent
from icerelay.netsim import PORT_RESTRICTED_CONE, Host, Link, Network, Packet, StunServer
from icerelay.stun import MessageClass, decode_message, is_stun

STUN = ("198.51.100.1", 3478)
AUDIO, VIDEO = 0, 1


def build(
    seed: int = 0, *, both_controlling: bool = False
) -> tuple[Network, list[Session], list[list[tuple[float, StreamEvent]]]]:
    network = Network(seed)
    network.add_host("stun", STUN[0]).attach(StunServer())
    sessions: list[Session] = []
    logs: list[list[tuple[float, StreamEvent]]] = [[], []]
    for index in range(2):
        nat = network.add_nat(f"nat{index}", f"203.0.113.{index + 1}", PORT_RESTRICTED_CONE)
        host = network.add_host(f"side{index}", "10.0.0.2", realm=nat.inside, link=Link(0.01))
        session = Session(
            controlling=both_controlling or index == 0,
            streams=(2, 1),
            config=AgentConfig(stun_servers=(STUN,)),
            rng=random.Random(seed * 10 + index),
        )
        sessions.append(session)
        host.attach(session, make_handler(network, sessions, logs, index))
    for index, session in enumerate(sessions):
        session.gather(
            [{1: [("10.0.0.2", 5000)], 2: [("10.0.0.2", 5001)]}, {1: [("10.0.0.2", 5010)]}], 0.0
        )
        peer = sessions[1 - index]
        ufrag, pwd = session.local_username, session.local_password
        network.call_later(
            0.05, lambda p=peer, u=ufrag, w=pwd: p.set_remote_credentials(u, w, network.now)
        )
    return network, sessions, logs


def make_handler(
    network: Network,
    sessions: list[Session],
    logs: list[list[tuple[float, StreamEvent]]],
    index: int,
) -> Any:
    def handle(host: Host, event: object) -> None:
        assert isinstance(event, StreamEvent)
        logs[index].append((network.now, event))
        peer = sessions[1 - index]
        inner = event.event
        if isinstance(inner, CandidateGathered):
            candidate = inner.candidate
            network.call_later(
                0.05,
                lambda: peer.add_remote_candidate(event.stream, candidate, network.now),
            )
        elif isinstance(inner, GatheringComplete):
            network.call_later(
                0.05, lambda: peer.add_remote_candidate(event.stream, None, network.now)
            )

    return handle


def test_audio_and_video_connect_under_one_agent() -> None:
    network, sessions, _ = build()
    assert network.run_until(
        lambda: all(s.state is ConnectionState.COMPLETED for s in sessions), 30
    )
    left = sessions[0]
    assert left.local_username == left.agents[VIDEO].local_username  # one set of credentials
    for session in sessions:
        for stream, components in ((AUDIO, (1, 2)), (VIDEO, (1,))):
            for component in components:
                pair = session.agents[stream].selected_pair(component)
                assert pair is not None and pair.nominated
                assert pair.local.type.value == "srflx"


def test_checks_of_all_streams_share_ta_and_video_waits_for_audio() -> None:
    network, sessions, logs = build()
    checks: list[tuple[float, int, bytes, str]] = []

    def tap(host: Host, packet: Packet) -> None:
        if host.name != "side0" or not is_stun(packet.data) or packet.destination == STUN:
            return
        message = decode_message(packet.data)
        if message.message_class == MessageClass.REQUEST:
            checks.append(
                (network.now, packet.source[1], message.transaction_id, packet.destination[0])
            )

    network.taps.append(tap)
    # The shared pacer: record when it lets a check go, whichever stream it belongs to.
    pacer = sessions[0].pacer
    paced: list[float] = []
    for agent in sessions[0].agents:
        original = agent.send_next_check

        def recording(now: float, original: Any = original) -> bool:
            sent = bool(original(now))
            if sent:
                paced.append(now)
            return sent

        agent.send_next_check = recording  # type: ignore[method-assign]
    assert pacer.agents == sessions[0].agents
    network.run_until(lambda: all(s.state is ConnectionState.COMPLETED for s in sessions), 30)
    # New paced checks (ordinary and queued triggered ones) leave at least Ta apart, whatever
    # their stream; answers to the peer's checks and nominations go at once, outside Ta.
    assert len(paced) >= 3
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(paced))
    # Audio and video share foundations (same interface, same STUN server): one pair of the
    # srflx foundation is checked first, whichever stream's candidates trickled in first; the
    # other stream's pairs stay frozen until it succeeded, then succeed at once.
    first_success = min(
        t
        for t, e in logs[0]
        if isinstance(e.event, CandidatePairStateChanged)
        and e.event.state is PairState.SUCCEEDED
        and e.event.pair.remote.type.value == "srflx"
    )
    first_check = {
        stream: min(t for t, port, _, to in checks if port in ports and to.startswith("203.0.113."))
        for stream, ports in ((AUDIO, (5000, 5001)), (VIDEO, (5010,)))
    }
    assert min(first_check.values()) < first_success <= max(first_check.values())


def test_role_conflict_switches_every_stream() -> None:
    network, sessions, _ = build(both_controlling=True)
    assert network.run_until(
        lambda: all(s.state is ConnectionState.COMPLETED for s in sessions), 30
    )
    left, right = sessions
    assert left.controlling != right.controlling
    for session in sessions:
        assert {agent.controlling for agent in session.agents} == {session.controlling}


def test_restart_renews_the_shared_credentials() -> None:
    network, sessions, _ = build()
    network.run_until(lambda: all(s.state is ConnectionState.COMPLETED for s in sessions), 30)
    left = sessions[0]
    old = left.local_username
    left.restart(network.now)
    assert left.local_username != old
    assert {agent.local_username for agent in left.agents} == {left.local_username}
