"""Whole phone calls on the simulator: two call controllers, SIP, RTP and ICE, a virtual clock.

The caller sits behind a NAT; the answerer has a public address (it must be reachable for the
INVITE: there is no proxy here). Plain RTP gets through by latching (symmetric RTP); ICE by the
server-reflexive candidate from the STUN server, or by the TURN relay when the caller offers only
relayed candidates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from icerelay.endpoint.audio import dominant_frequency
from icerelay.endpoint.call import CallController
from icerelay.endpoint.events import (
    CallAnswered,
    CallEvent,
    CallFinished,
    MediaStarted,
    Notice,
    PortsWanted,
)
from icerelay.endpoint.options import IceSetup, PhoneOptions
from icerelay.ice import AgentConfig
from icerelay.ice import TurnServer as TurnAccount
from icerelay.netsim import (
    PORT_RESTRICTED_CONE,
    SYMMETRIC,
    Host,
    Link,
    NatConfig,
    Network,
    StunServer,
    TurnServer,
)

STUN = ("198.51.100.1", 3478)
TURN = ("198.51.100.2", 3478)
TURN_USER, TURN_PASSWORD = "phone", "relay-password"
CALLER_IP, NAT_IP, ANSWERER_IP = "10.0.0.2", "203.0.113.1", "192.0.2.20"
SIP_PORT = 5060


@dataclass
class Side:
    controller: CallController
    host: Host
    ip: str
    events: list[tuple[float, CallEvent]] = field(default_factory=list)

    @property
    def notices(self) -> list[str]:
        return [e.text for _, e in self.events if isinstance(e, Notice)]


def build(
    *, ice: bool, nat: NatConfig = PORT_RESTRICTED_CONE, relay_only: bool = False,
    seed: int = 1, duration: float = 2.0, loss: float = 0.0, rtcp_mux: bool = False,
) -> tuple[Network, Side, Side]:
    network = Network(seed)
    network.add_host("stun", STUN[0]).attach(StunServer())
    network.add_host("turn", TURN[0]).attach(TurnServer(TURN, {TURN_USER: TURN_PASSWORD}))
    box = network.add_nat("nat", NAT_IP, nat)
    link = Link(delay=0.01, loss=loss)
    caller_host = network.add_host("caller", CALLER_IP, realm=box.inside, link=link)
    answerer_host = network.add_host("answerer", ANSWERER_IP, link=link)
    sides = []
    for index, (host, ip) in enumerate(((caller_host, CALLER_IP), (answerer_host, ANSWERER_IP))):
        caller = index == 0
        options = PhoneOptions(
            target=f"sip:bob@{ANSWERER_IP}:{SIP_PORT}" if caller else None,
            answer=not caller,
            wait=None if caller else 30.0,
            duration=duration if caller else duration + 10,
            tone=500.0 if caller else 1000.0,
            rtcp_interval=0.5,
            ice=ice,
            relay_only=relay_only and caller,
            rtcp_mux=rtcp_mux and caller,
        )
        setup = IceSetup(
            AgentConfig(stun_servers=(STUN,), relay_only=options.relay_only),
            turn_servers=(TurnAccount(TURN, TURN_USER, TURN_PASSWORD),) if relay_only else (),
            addresses=(ip,),
        )
        controller = CallController(
            options, sip=(ip, SIP_PORT), rng=random.Random(seed * 10 + index), ice=setup
        )
        side = Side(controller, host, ip)
        host.attach(controller, make_handler(network, side))
        sides.append(side)
    caller_side, answerer_side = sides
    answerer_side.controller.start(network.now)
    network.call_later(0.1, lambda: caller_side.controller.start(network.now))
    return network, caller_side, answerer_side


def make_handler(network: Network, side: Side) -> Any:
    def handle(host: Host, event: object) -> None:
        assert isinstance(event, CallEvent)
        side.events.append((network.now, event))
        if isinstance(event, PortsWanted):
            # What the asyncio shell does with sockets: here fixed ports on the host's address.
            base = 20000 if event.ice else 40000
            ports = {c: [(side.ip, base + c - 1)] for c in range(1, event.components + 1)}
            side.controller.ports_bound(ports, network.now)

    return handle


def run_call(network: Network, caller: Side, answerer: Side) -> None:
    done = network.run_until(
        lambda: caller.controller.finished and answerer.controller.finished, 60
    )
    assert done, (caller.notices, answerer.notices)
    for side in (caller, answerer):
        side.controller.close(network.now)
    network.run(1.0)  # RTCP BYE, TURN deallocation


def assert_media_both_ways(caller: Side, answerer: Side) -> None:
    for side, heard in ((caller, 1000), (answerer, 500)):
        result = side.controller.result
        assert result.media_both_ways, side.notices
        samples = side.controller.recorder.samples
        assert dominant_frequency(samples[1600:3200]) == pytest.approx(heard, abs=10)
    assert caller.controller.result.end_reason == "local hangup"
    assert answerer.controller.result.end_reason == "remote hangup"


def test_plain_call_through_a_nat_latches_symmetric_rtp() -> None:
    network, caller, answerer = build(ice=False)
    run_call(network, caller, answerer)
    assert_media_both_ways(caller, answerer)
    # The caller's SDP names its private address; the answerer answers where RTP comes from.
    assert f"latched RTP to {NAT_IP}:" in " ".join(answerer.notices)
    stats = caller.controller.result.statistics
    assert stats is not None and stats.packets_lost == 0
    # Media starts when the 200 OK arrives and lasts --duration of virtual time.
    answered = next(t for t, e in caller.events if isinstance(e, CallAnswered))
    finished = next(t for t, e in caller.events if isinstance(e, CallFinished))
    assert finished - answered == pytest.approx(2.0, abs=0.1)


def test_ice_call_through_a_nat_uses_the_server_reflexive_candidate() -> None:
    network, caller, answerer = build(ice=True)
    run_call(network, caller, answerer)
    assert_media_both_ways(caller, answerer)
    result = caller.controller.result
    assert result.ice_state == "completed"
    # The controlled answerer completes on the caller's nomination; its result says so too.
    assert answerer.controller.result.ice_state == "completed"
    assert result.ice_pair is not None and result.ice_pair.startswith(f"srflx {NAT_IP}:")
    assert result.ice_pair.endswith(f"host {ANSWERER_IP}:20000")
    # The controlling caller sent the updated offer once ICE completed (RFC 8445 8.1.2).
    assert "ICE completed: sending the updated offer (re-INVITE)" in caller.notices
    assert answerer.controller.result.reinvites == 1
    assert any(n.startswith("updated offer with remote-candidates: 1 ") for n in answerer.notices)
    assert [e.ice_pair for _, e in caller.events if isinstance(e, MediaStarted)] == [
        result.ice_pair
    ]


def test_an_rtcp_mux_ice_offer_keeps_an_rtcp_fallback_and_the_answer_settles_it() -> None:
    network, caller, answerer = build(ice=True, rtcp_mux=True)
    run_call(network, caller, answerer)
    assert_media_both_ways(caller, answerer)
    # RFC 5761 §5.1.3: the offer has RTCP candidates (component 2) besides a=rtcp-mux; the
    # answerer multiplexes, so it gathers one component and the caller drops the second.
    wanted = {
        side: [e.components for _, e in s.events if isinstance(e, PortsWanted)]
        for side, s in (("caller", caller), ("answerer", answerer))
    }
    assert wanted == {"caller": [2], "answerer": [1]}
    stats = caller.controller.result.statistics
    assert stats is not None and stats.packets_lost == 0


def test_ice_call_through_the_turn_relay() -> None:
    network, caller, answerer = build(ice=True, nat=SYMMETRIC, relay_only=True)
    run_call(network, caller, answerer)
    assert_media_both_ways(caller, answerer)
    pair = caller.controller.result.ice_pair
    assert pair is not None and pair.startswith(f"relay {TURN[0]}:"), pair


def test_same_seed_same_call() -> None:
    """The whole call is deterministic: time and randomness are passed in."""
    runs = []
    for _ in range(2):
        network, caller, answerer = build(ice=True, seed=5)
        run_call(network, caller, answerer)
        runs.append((caller.notices, answerer.notices, caller.controller.result.to_dict()))
    assert runs[0] == runs[1]


def test_no_answer_gives_up_after_the_setup_timeout() -> None:
    network = Network(0)
    host = network.add_host("caller", "192.0.2.1")
    options = PhoneOptions(target="sip:nobody@192.0.2.99", setup_timeout=3.0)
    controller = CallController(options, sip=("192.0.2.1", 5060), rng=random.Random(0))
    events: list[CallEvent] = []

    def handle(host: Host, event: object) -> None:
        assert isinstance(event, CallEvent)
        events.append(event)
        if isinstance(event, PortsWanted):
            controller.ports_bound({1: [("192.0.2.1", 40000)], 2: [("192.0.2.1", 40001)]},
                                   network.now)

    host.attach(controller, handle)
    controller.start(0.0)
    assert network.run_until(lambda: controller.finished, 10)
    assert network.now == pytest.approx(3.0)
    assert controller.result.end_reason == "call setup timed out"
    assert not controller.result.established
