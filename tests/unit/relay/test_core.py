"""The engine's structured core: typed stream offers in, a plan out, no SDP involved."""

from __future__ import annotations

import random

import pytest

from icerelay.errors import RelayError
from icerelay.relay.dialogs import DialogRef
from icerelay.relay.events import ForwardingInstalled
from icerelay.relay.options import RelayConfig, RelayOptions
from icerelay.relay.plans import Exchange, StreamOffer
from icerelay.relay.policy import IceMode
from icerelay.relay.ports import PortPool
from icerelay.relay.rewrite import describe
from icerelay.relay.sessions import MediaRequest, SessionEngine
from icerelay.sdp import Direction, SessionDescription
from icerelay.stun import Address

from .samples import ASTERISK

RELAY = "203.0.113.1"


def make_engine(seed: int = 1) -> SessionEngine:
    return SessionEngine(
        RelayConfig(addresses={4: RELAY}),
        PortPool(30000, 30199, rng=random.Random(seed)),
        rng=random.Random(seed),
    )


def audio(address: str, port: int, *, index: int = 0) -> StreamOffer:
    return StreamOffer(
        index=index,
        media="audio",
        proto="RTP/AVP",
        address=address,
        port=port,
        rtcp_address=address,
        rtcp_port=port + 1 if port else 0,
        rtcp_mux=False,
        direction=Direction.SENDRECV,
        ice=False,
        component_2=False,
        codec="PCMU",
        remote_candidates=(),
    )


def installed(engine: SessionEngine) -> list[ForwardingInstalled]:
    events = []
    while (event := engine.next_event()) is not None:
        if isinstance(event, ForwardingInstalled):
            events.append(event)
    return events


def test_offer_and_answer_plan_the_relay_ports_and_install_the_forwarding() -> None:
    engine = make_engine()
    offer = engine.update(
        DialogRef("call", "alice"), Exchange.OFFER, [audio("192.0.2.10", 5000)], 0.0
    )
    (towards_bob,) = offer.streams
    assert towards_bob is not None and towards_bob.address == RELAY
    assert towards_bob.rtcp_port == towards_bob.rtp_port + 1
    assert towards_bob.candidates == ()  # no ICE, no candidate
    answer = engine.update(
        DialogRef("call", "alice", "bob"), Exchange.ANSWER, [audio("198.51.100.7", 6000)], 1.0
    )
    (towards_alice,) = answer.streams
    assert towards_alice is not None and towards_alice.rtp_port != towards_bob.rtp_port
    forwarding = installed(engine)[-1].forwarding
    assert forwarding.a.rtp_peer == Address("192.0.2.10", 5000)
    assert forwarding.b.rtp_peer == Address("198.51.100.7", 6000)
    assert forwarding.a.local.port == towards_alice.rtp_port
    assert forwarding.b.local.port == towards_bob.rtp_port


def test_a_rejected_stream_has_no_plan() -> None:
    engine = make_engine()
    plan = engine.update(
        DialogRef("call", "alice"),
        Exchange.OFFER,
        [audio("192.0.2.10", 5000), audio("192.0.2.10", 0, index=1)],
        0.0,
    )
    assert plan.streams[0] is not None and plan.streams[1] is None


def test_an_answer_for_an_unknown_call_changes_nothing() -> None:
    engine = make_engine()
    with pytest.raises(RelayError):
        engine.update(
            DialogRef("nope", "alice", "bob"), Exchange.ANSWER, [audio("192.0.2.10", 5000)], 0.0
        )
    assert engine.session_count == 0 and engine.pool.in_use == 0


def test_the_sdp_edge_writes_what_the_core_plans() -> None:
    """offer() is describe + update + rewrite: the same engine state gives the same plan."""
    via_sdp, via_core = make_engine(), make_engine()
    options = RelayOptions(ice=IceMode.DEFAULT)
    body = via_sdp.offer(MediaRequest("call", "alice", ASTERISK, options=options), 0.0)
    plan = via_core.update(
        DialogRef("call", "alice"),
        Exchange.OFFER,
        describe(SessionDescription.parse(ASTERISK)),
        0.0,
        options=options,
    )
    out = SessionDescription.parse(body)
    for media, stream in zip(out.media, plan.streams, strict=True):
        assert stream is not None
        assert media.port == stream.rtp_port
        assert stream.candidates  # the body carries ICE: the relay adds itself
        assert set(stream.candidates) <= set(media.candidates())


def test_ice_force_credentials_come_from_the_injected_rng() -> None:
    def credentials(seed: int) -> object:
        engine = make_engine(seed)
        plan = engine.update(
            DialogRef("call", "alice"),
            Exchange.OFFER,
            [audio("192.0.2.10", 5000)],
            0.0,
            options=RelayOptions(ice=IceMode.FORCE),
        )
        stream = plan.streams[0]
        assert stream is not None and stream.ice_credentials is not None
        assert [c.type for c in stream.candidates] == ["host", "host"]
        return stream.ice_credentials

    assert credentials(7) == credentials(7)
    assert credentials(7) != credentials(8)
