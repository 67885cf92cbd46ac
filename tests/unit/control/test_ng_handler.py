"""ng commands run on the session engine: options mapping, reply shapes, warnings, errors."""

from __future__ import annotations

import random

from icerelay.control.ng import (
    Answer,
    Delete,
    List,
    MediaOptions,
    NgHandler,
    NgProtocol,
    NgRequest,
    Offer,
    Ping,
    Query,
    Statistics,
    relay_options,
)
from icerelay.relay.policy import IceMode, IcePriority
from icerelay.relay.ports import PortPool
from icerelay.relay.sessions import RelayConfig, RelayOptions, SessionEngine
from icerelay.sdp import SessionDescription

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 8\r\n"
)


def handler() -> NgHandler:
    engine = SessionEngine(
        RelayConfig(addresses={4: "203.0.113.1", 6: "2001:db8::1"}),
        PortPool(30000, 30099, rng=random.Random(2)),
        rng=random.Random(6),
    )
    return NgHandler(engine, wall_offset=1_700_000_000.0)


def test_relay_options_from_ng_spelling() -> None:
    options = MediaOptions(
        flags=frozenset({"sip-source-address", "strict-source"}),
        replace=frozenset({"origin", "session-connection"}),
        ice=IceMode.FORCE_RELAY,
        ice_priority=IcePriority.HIGH,
        address_family="IP6",
        received_from=("IP4", "198.51.100.7"),
        media_address="198.51.100.8",
    )
    assert relay_options(options) == RelayOptions(
        replace_origin=True,
        replace_session_connection=True,
        ice=IceMode.FORCE_RELAY,
        ice_priority=IcePriority.HIGH,
        address_family=6,
        media_address="198.51.100.8",
        received_from="198.51.100.7",
        sip_source_address=True,
        strict_source=True,
    )
    assert relay_options(MediaOptions(replace=frozenset({"origin-full"}))).replace_origin
    assert relay_options(MediaOptions()) == RelayOptions()
    trusted = relay_options(MediaOptions(flags=frozenset({"trust-address"})))
    assert trusted.sip_source_address is False


def test_offer_answer_query_list_delete() -> None:
    ng = handler()
    assert ng.handle(Ping(), 0.0) == {"result": "pong"}
    options = MediaOptions(replace=frozenset({"origin"}), ignored=("record-call",))
    reply = ng.handle(Offer("c1", "a", SDP, options=options), 1.0)
    assert reply["result"] == "ok"
    assert reply["warning"] == "not supported, ignored: record-call"
    sdp = reply["sdp"]
    assert isinstance(sdp, bytes)
    assert SessionDescription.parse(sdp).origin.address == "203.0.113.1"  # type: ignore[union-attr]
    odd = MediaOptions(transport_protocol="RTP/SAVPF", rtcp_mux=frozenset({"demux"}))
    reply = ng.handle(Offer("c9", "a", SDP, options=odd), 1.5)
    assert reply["warning"] == "not supported, ignored: transport-protocol=RTP/SAVPF"
    reply = ng.handle(Answer("c1", "a", "b", SDP.replace(b"4000", b"5000")), 2.0)
    assert reply["result"] == "ok" and "warning" not in reply
    query = ng.handle(Query("c1"), 3.0)
    assert query["result"] == "ok"
    assert query["created"] == 1_700_000_001 and query["last signal"] == 1_700_000_002
    tags = query["tags"]
    assert isinstance(tags, dict) and set(tags) == {"a", "b"}
    assert ng.handle(List(10), 3.0) == {"result": "ok", "calls": ["c1", "c9"]}
    deleted = ng.handle(Delete("c1", "a", delete_delay=0), 4.0)
    assert deleted["result"] == "ok"
    assert ng.handle(List(10), 5.0) == {"result": "ok", "calls": ["c9"]}


def test_errors_become_error_reasons() -> None:
    ng = handler()
    reply = ng.handle(Answer("nope", "a", "b", SDP), 0.0)
    assert reply == {
        "result": "error",
        "error-reason": "answer for unknown call call-id 'nope' from-tag 'a' to-tag 'b'",
    }
    reply = ng.handle(Offer("c", "a", b"v=0\r\nm=broken\r\n"), 0.0)
    assert reply["result"] == "error"
    assert str(reply["error-reason"]).startswith("cannot parse the SDP")
    options = MediaOptions(address_family="IP6")
    assert ng.handle(Offer("c6", "a", SDP, options=options), 0.0)["result"] == "ok"


def test_statistics() -> None:
    ng = handler()
    ng.handle(Offer("c1", "a", SDP), 10.0)
    reply = ng.handle(Statistics(), 70.0)
    statistics = reply["statistics"]
    assert isinstance(statistics, dict)
    current = statistics["currentstatistics"]
    assert isinstance(current, dict)
    assert (current["sessionsown"], current["calls"], current["streams"]) == (1, 1, 1)
    assert current["portsused"] == 4 and current["portsfree"] == 96
    totals = statistics["totalstatistics"]
    assert isinstance(totals, dict) and totals["offers"] == 1 and totals["uptime"] == 60


def test_deleting_an_unknown_call_warns_unless_fatal() -> None:
    ng = handler()
    reply = ng.handle(Delete("gone", "a"), 0.0)
    assert reply == {"result": "ok", "warning": "unknown call call-id 'gone' from-tag 'a'"}
    reply = ng.handle(Delete("gone", "a", flags=frozenset({"fatal"})), 0.0)
    assert reply["result"] == "error"


def test_statistics_report_the_protocol_counters() -> None:
    protocol = NgProtocol()
    ng = NgHandler(handler().engine, protocol.counters)
    for cookie, body in ((b"1", b"d7:command4:pinge"), (b"1", b"d7:command4:pinge")):
        outcome = protocol.receive(cookie + b" " + body, 0.0)
        if isinstance(outcome, NgRequest):
            protocol.reply(outcome, ng.handle(outcome.command, 0.0), 0.0)
    protocol.receive(b"2 d7:command4:jumpe", 0.0)
    outcome = protocol.receive(b"3 d7:command6:delete7:call-id4:gone5:flagsl5:fatalee", 0.0)
    assert isinstance(outcome, NgRequest)
    protocol.reply(outcome, ng.handle(outcome.command, 0.0), 0.0)
    reply = ng.handle(Statistics(), 1.0)
    statistics = reply["statistics"]
    assert isinstance(statistics, dict)
    totals = statistics["totalstatistics"]
    assert isinstance(totals, dict)
    assert (totals["requests"], totals["retransmissions"], totals["errors"]) == (3, 1, 2)
    assert totals["commands"] == {"ping": 1, "unknown": 1, "delete": 1}
