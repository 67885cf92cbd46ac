"""rtpengine ng protocol: parsing into typed commands, errors, reply cache, JSON, TCP framing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icerelay import bencode
from icerelay.control.ng import (
    Answer,
    Delete,
    Encoding,
    List,
    NgDropped,
    NgFailure,
    NgImmediateReply,
    NgProtocol,
    NgRequest,
    NgStreamFramer,
    Offer,
    Ping,
    Query,
    Statistics,
    command_counts,
    parse_command,
)
from icerelay.control.ng.commands import normalise
from icerelay.errors import ControlError
from icerelay.relay.policy import IceMode, IcePriority

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)


def kamailio_offer(**extra: object) -> bytes:
    """An offer laid out the way Kamailio 5.6's rtpengine module writes it (insertion order)."""
    parts = [b"d3:sdp", bencode.encode(SDP)]
    if "replace" not in extra:
        parts.append(b"7:replacel6:origin18:session-connectione")
    if "received-from" not in extra:
        parts.append(b"13:received-froml3:IP412:192.168.1.10e")
    parts += [
        b"7:call-id",
        bencode.encode("a84b4c76e66710@pc33"),
        b"8:from-tag",
        bencode.encode("1928301774"),
        b"7:command5:offer",
    ]
    for key, value in extra.items():
        parts.append(bencode.encode(key) + bencode.encode(value))  # type: ignore[arg-type]
    parts.append(b"e")
    return b"".join(parts)


def request(
    protocol: NgProtocol, payload: bytes, cookie: bytes = b"8761_1", now: float = 0.0
) -> NgRequest | NgImmediateReply | NgDropped:
    return protocol.receive(cookie + b" " + payload, now)


def reply_dict(data: bytes) -> dict[bytes, bencode.BencodeValue]:
    _, _, payload = data.partition(b" ")
    value = bencode.decode(payload)
    assert isinstance(value, dict)
    return value


def test_ping() -> None:
    protocol = NgProtocol()
    outcome = request(protocol, b"d7:command4:pinge")
    assert isinstance(outcome, NgRequest)
    assert outcome.command == Ping()
    assert protocol.reply(outcome, {"result": "pong"}, 0.0) == b"8761_1 d6:result4:ponge"


def test_kamailio_offer_with_default_flags() -> None:
    outcome = request(NgProtocol(), kamailio_offer(**{"ICE": "force", "flags": ["trust-address"]}))
    assert isinstance(outcome, NgRequest)
    offer = outcome.command
    assert isinstance(offer, Offer)
    assert offer.call_id == "a84b4c76e66710@pc33"
    assert offer.from_tag == "1928301774"
    assert offer.to_tag is None
    assert offer.sdp == SDP
    assert offer.options.replace == {"origin", "session-connection"}
    assert offer.options.received_from == ("IP4", "192.168.1.10")
    assert offer.options.ice is IceMode.FORCE
    assert offer.options.trust_address
    assert outcome.encoding is Encoding.BENCODE


def test_key_spellings_are_interchangeable() -> None:
    outcome = request(
        NgProtocol(),
        kamailio_offer(
            **{
                "address family": "IP6",
                "ICE": "Force-Relay",
                "flags": ["strict source", "trust_address"],
                "rtcp-mux": ["demux", "offer"],
                "direction": ["internal", "external"],
                "via-branch": "z9hG4bK776asdhds",
                "to-tag": "",
                "ICE-priority": "high",
                "media_address": "2001:db8::1",
                "transport protocol": "RTP/AVP",
            }
        ),
    )
    assert isinstance(outcome, NgRequest)
    options = outcome.command.options  # type: ignore[union-attr]
    assert options.address_family == "IP6"
    assert options.ice is IceMode.FORCE_RELAY
    assert options.ice_priority is IcePriority.HIGH
    assert options.strict_source and options.trust_address
    assert options.rtcp_mux == {"demux", "offer"}
    assert options.direction == ("internal", "external")
    assert options.media_address == "2001:db8::1"
    assert options.transport_protocol == "RTP/AVP"
    assert outcome.command.via_branch == "z9hG4bK776asdhds"  # type: ignore[union-attr]
    assert outcome.command.to_tag is None  # type: ignore[union-attr]


def test_answer_needs_a_to_tag() -> None:
    protocol = NgProtocol()
    body: dict[str, bencode.Encodable] = {
        "command": "answer",
        "call-id": "c",
        "from-tag": "f",
        "sdp": SDP,
    }
    outcome = request(protocol, bencode.encode(body))
    assert isinstance(outcome, NgImmediateReply)
    assert reply_dict(outcome.data) == {
        b"result": b"error",
        b"error-reason": b"'to-tag' is missing",
    }
    outcome = request(protocol, bencode.encode({**body, "to-tag": "t"}), cookie=b"2")
    assert isinstance(outcome, NgRequest)
    assert outcome.command == Answer("c", "f", "t", SDP)


def test_delete_query_list_statistics() -> None:
    protocol = NgProtocol()
    cases: list[tuple[dict[str, object], object]] = [
        (
            {"command": "delete", "call-id": "c", "from-tag": "f", "delete delay": "5"},
            Delete("c", "f", delete_delay=5),
        ),
        (
            {"command": "delete", "call-id": "c", "flags": ["fatal"]},
            Delete("c", flags=frozenset({"fatal"})),
        ),
        ({"command": "query", "call-id": "c"}, Query("c")),
        ({"command": "list", "limit": 5}, List(5)),
        ({"command": "list"}, List(32)),
        ({"command": "statistics"}, Statistics()),
    ]
    for index, (body, expected) in enumerate(cases):
        outcome = request(protocol, bencode.encode(body), cookie=b"c%d" % index)  # type: ignore[arg-type]
        assert isinstance(outcome, NgRequest), outcome
        assert outcome.command == expected
    assert protocol.counters.events["command.delete"] == 2
    assert command_counts(protocol.counters)["delete"] == 2
    assert protocol.counters.events["requests"] == len(cases)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"le", "not a dictionary"),
        (b"d3:foo3:bare", "no 'command' key"),
        (b"d7:commandi1ee", "'command' must be a string"),
        (b"d7:command4:jumpe", "unknown command 'jump'"),
        (b"d7:command5:offer8:from-tag1:f3:sdp3:v=0e", "'call-id' is missing"),
        (b"d7:command5:offer7:call-id0:8:from-tag1:f3:sdp3:v=0e", "'call-id' is empty"),
        (b"d7:command5:offer7:call-id1:c8:from-tag1:fe", "'sdp' is missing"),
        (b"d7:command5:offer7:call-id1:c8:from-tag1:f3:sdpi1ee", "'sdp' must be"),
        (b"d7:command4:ping", "ends inside a dictionary"),
        (b"d7:command4:pingexx", "trailing bytes"),
        (b"d7:command6:delete7:call-id1:c12:delete-delay2:-1e", "must be an integer"),
        (b"d7:command4:list5:limiti-1ee", "outside 0..1000000"),
        (b"d7:command4:ping7:Command4:pinge", "appears twice"),
        (b"d7:command2:\xff\xfee", "not valid UTF-8"),
    ],
)
def test_bad_requests_get_an_error_reason(body: bytes, reason: str) -> None:
    protocol = NgProtocol()
    outcome = request(protocol, body)
    assert isinstance(outcome, NgImmediateReply)
    assert not outcome.retransmission
    assert outcome.reason is not None and reason in outcome.reason
    reply = reply_dict(outcome.data)
    assert reply[b"result"] == b"error"
    assert reason.encode() in reply[b"error-reason"]  # type: ignore[operator]
    assert protocol.counters.events["errors"] == 1


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"ICE": "sometimes"}, "'ICE' must be remove, force, force-relay or default"),
        ({"ICE-priority": "medium"}, "'ICE-priority' must be none, low or high"),
        ({"replace": ["everything"]}, "unknown 'replace' value 'everything'"),
        ({"rtcp-mux": ["maybe"]}, "unknown 'rtcp-mux' value 'maybe'"),
        ({"received-from": ["IP4"]}, "'received-from' must be a list"),
        ({"received-from": ["IPX", "1.2.3.4"]}, "family must be IP4 or IP6"),
        ({"received-from": ["IP6", "1.2.3.4"]}, "not an IP6 address"),
        ({"address family": "IP5"}, "'address family' must be IP4 or IP6"),
        ({"flags": {"a": "b"}}, "'flags' must be a list of strings"),
        ({"flags": [1]}, "an entry of 'flags' must be a string"),
        ({"direction": ["a", "b", "c"]}, "'direction' names 3 interfaces"),
        ({"media address": "example.com"}, "is not an IP address"),
    ],
)
def test_bad_offer_options(extra: dict[str, object], reason: str) -> None:
    outcome = request(NgProtocol(), kamailio_offer(**extra))
    assert isinstance(outcome, NgImmediateReply)
    assert outcome.reason is not None and reason in outcome.reason, outcome.reason


def test_unknown_flags_and_keys_are_reported_as_ignored() -> None:
    outcome = request(NgProtocol(), kamailio_offer(flags=["pad-crypto"], **{"record call": "yes"}))
    assert isinstance(outcome, NgRequest)
    assert outcome.command.options.ignored == ("pad-crypto", "record-call")  # type: ignore[union-attr]


def test_no_cookie_is_dropped() -> None:
    protocol = NgProtocol()
    assert isinstance(protocol.receive(b"d7:command4:pinge", 0.0), NgDropped)
    assert isinstance(protocol.receive(b"\x00\x01 d7:command4:pinge", 0.0), NgDropped)
    assert isinstance(protocol.receive(b"", 0.0), NgDropped)
    assert protocol.counters.dropped == {"no_cookie": 3}


def test_retransmission_gets_the_identical_reply_and_does_not_run_again() -> None:
    protocol = NgProtocol(cache_ttl=30.0)
    first = request(protocol, kamailio_offer(), cookie=b"42_7", now=100.0)
    assert isinstance(first, NgRequest)
    reply = protocol.reply(first, {"result": "ok", "sdp": b"v=0\r\n"}, 100.0)
    again = request(protocol, kamailio_offer(), cookie=b"42_7", now=110.0)
    assert again == NgImmediateReply(reply, retransmission=True)
    assert protocol.counters.events["retransmissions"] == 1
    assert protocol.counters.events["requests"] == 1
    # After the TTL the cookie is forgotten: a late duplicate is a new request.
    late = request(protocol, kamailio_offer(), cookie=b"42_7", now=130.5)
    assert isinstance(late, NgRequest)


def test_errors_are_cached_too() -> None:
    protocol = NgProtocol()
    first = request(protocol, b"d7:command4:jumpe")
    again = request(protocol, b"d7:command4:jumpe")
    assert isinstance(first, NgImmediateReply) and isinstance(again, NgImmediateReply)
    assert again.data == first.data and again.retransmission
    assert protocol.counters.events["errors"] == 1


def test_reply_cache_is_bounded() -> None:
    protocol = NgProtocol(cache_size=3)
    for index in range(10):
        outcome = request(protocol, b"d7:command4:pinge", cookie=b"k%d" % index)
        assert isinstance(outcome, NgRequest)
        protocol.reply(outcome, {"result": "pong"}, 0.0)
    assert protocol.cached_replies == 3
    assert isinstance(request(protocol, b"d7:command4:pinge", cookie=b"k0"), NgRequest)
    assert isinstance(request(protocol, b"d7:command4:pinge", cookie=b"k9"), NgImmediateReply)


def test_json_requests_get_json_replies() -> None:
    protocol = NgProtocol()
    body = {
        "command": "offer",
        "call-id": "c",
        "from-tag": "f",
        "sdp": SDP.decode(),
        "ICE": "remove",
    }
    outcome = request(protocol, json.dumps(body).encode())
    assert isinstance(outcome, NgRequest)
    assert outcome.encoding is Encoding.JSON
    assert outcome.command.options.ice is IceMode.REMOVE  # type: ignore[union-attr]
    data = protocol.reply(outcome, {"result": "ok", "sdp": SDP, "n": [1, {"a": "b"}]}, 0.0)
    cookie, _, payload = data.partition(b" ")
    assert cookie == b"8761_1"
    assert json.loads(payload) == {"result": "ok", "sdp": SDP.decode(), "n": [1, {"a": "b"}]}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"command": true}', "no ng meaning"),
        (b'{"command": "list", "limit": 1.5}', "no ng meaning"),
        (b'["command"]', "invalid bencode: unexpected byte '['"),
        (b"i1e", "not a dictionary"),
    ],
)
def test_bad_json(payload: bytes, reason: str) -> None:
    outcome = request(NgProtocol(), payload)
    assert isinstance(outcome, NgImmediateReply)
    assert outcome.reason is not None and reason in outcome.reason
    _, _, body = outcome.data.partition(b" ")
    if payload.startswith(b"{"):
        assert json.loads(body)["result"] == "error"


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_fuzz_never_raises(payload: bytes) -> None:
    protocol = NgProtocol()
    outcome = protocol.receive(b"c " + payload, 0.0)
    assert isinstance(outcome, NgRequest | NgImmediateReply)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                b"command",
                b"call-id",
                b"from-tag",
                b"to-tag",
                b"sdp",
                b"flags",
                b"ICE",
                b"replace",
                b"received-from",
                b"direction",
                b"rtcp-mux",
                b"delete delay",
                b"limit",
            ]
        ),
        st.one_of(
            st.sampled_from([b"offer", b"answer", b"delete", b"query", b"list", b"x", b""]),
            st.integers(-5, 5),
            st.lists(st.sampled_from([b"origin", b"IP4", b"1.2.3.4", b"demux", b"x"]), max_size=3),
        ),
    )
)
@settings(max_examples=300)
def test_fuzz_structured_requests(body: dict[bytes, bencode.BencodeValue]) -> None:
    protocol = NgProtocol()
    outcome = protocol.receive(b"c " + bencode.encode(body), 0.0)
    if isinstance(outcome, NgImmediateReply):
        assert reply_dict(outcome.data)[b"result"] == b"error"
    else:
        assert isinstance(outcome, NgRequest)


def test_stream_framer_both_framings_split_anywhere() -> None:
    ping = b"1_1 d7:command4:pinge"
    offer = b"2_2 " + kamailio_offer()
    json_ping = b'3_3 {"command": "ping", "x": "}{\\""}'
    stream = ping + b"\n" + b"%d:%s" % (len(offer), offer) + json_ping
    expected = [(ping, False), (offer, True), (json_ping, False)]
    for chunk in (1, 2, 7, len(stream)):
        framer = NgStreamFramer()
        got: list[tuple[bytes, bool]] = []
        for index in range(0, len(stream), chunk):
            got.extend(framer.feed(stream[index : index + chunk]))
        assert got == expected
    assert NgStreamFramer.frame(b"1_1 x", True) == b"5:1_1 x"
    assert NgStreamFramer.frame(b"1_1 x", False) == b"1_1 x"


def test_stream_framer_rejects_garbage_and_oversize() -> None:
    with pytest.raises(ControlError):
        NgStreamFramer().feed(b"1_1 x")
    with pytest.raises(ControlError, match="longer than"):
        NgStreamFramer(max_message=100).feed(b"5000:")
    with pytest.raises(ControlError, match="cookie"):
        NgStreamFramer().feed(b"x" * 200)
    framer = NgStreamFramer(max_message=100)
    with pytest.raises(ControlError, match="longer than"):
        framer.feed(b"c 1000:" + b"x" * 200)


def test_kamailio_supports_key_is_not_warned_about() -> None:
    outcome = request(NgProtocol(), kamailio_offer(supports=["load limit"]))
    assert isinstance(outcome, NgRequest)
    assert outcome.command.options.ignored == ()  # type: ignore[union-attr]


def test_refusals_carry_the_kind_of_failure() -> None:
    protocol = NgProtocol()
    request(protocol, b"d7:command4:jumpe", cookie=b"1")
    request(protocol, b"d7:command5:offere", cookie=b"2")
    request(protocol, b"le", cookie=b"3")
    request(protocol, b"{not json", cookie=b"4")
    assert protocol.counters.events["errors"] == 4
    assert protocol.counters.events["error.unknown_command"] == 1
    assert protocol.counters.events["error.malformed_request"] == 1
    assert protocol.counters.events["error.undecodable"] == 2
    # Names come from the network: only known ones get a counter of their own (issue 10).
    assert command_counts(protocol.counters) == {"offer": 1, "unknown": 3}
    with pytest.raises(ControlError) as raised:
        parse_command({"command": b"jump"})
    assert raised.value.counter == NgFailure.UNKNOWN_COMMAND and raised.value.remote
    assert raised.value.status is None


@given(st.text(max_size=40))
def test_normalise_is_rtpengines_key_matching(text: str) -> None:
    # Case-insensitive, with "-", "_" and space interchangeable, whatever the order of the steps.
    assert normalise(text) == text.translate(str.maketrans({" ": "-", "_": "-"})).lower()


_option_words = st.sampled_from(
    [b"trust-address", b"Trust_Address", b"origin", b"session-connection", b"SIP source address",
     b"no-such-flag", b"\xff", b"", b"symmetric", b"origin-full"]
)  # fmt: skip
_option_values = st.none() | _option_words | st.lists(_option_words | st.integers(), max_size=4)


@given(_option_values, _option_values, st.booleans())
@settings(max_examples=300)
def test_the_usual_options_are_made_once_and_as_the_full_reading_makes_them(
    flags: bencode.BencodeValue | None, replace: bencode.BencodeValue | None, rare: bool
) -> None:
    from icerelay.control.ng.commands import _all_media_options, _media_options

    message: dict[str, bencode.BencodeValue] = {}
    if flags is not None:
        message["flags"] = flags
    if replace is not None:
        message["replace"] = replace
    if rare:
        message["ICE"] = b"remove"
        message["ice"] = b"remove"
    try:
        expected = _all_media_options(message)
    except ControlError as error:
        with pytest.raises(ControlError) as raised:
            _media_options(message)
        assert str(raised.value) == str(error)
        return
    assert _media_options(message) == expected
    if not rare:
        # Shared: the handler maps one options value to the engine's once.
        assert _media_options(dict(message)) is _media_options(message)
