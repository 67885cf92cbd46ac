"""The fast lane for simple SDP bodies against the general model: the same offers, the same
bytes, or no answer at all (then the general path runs); never an answer where the general
path fails."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from icerelay.errors import RelayError, SdpError
from icerelay.relay import fastlane
from icerelay.relay.options import RelayOptions
from icerelay.relay.plans import SessionPlan, StreamPlan
from icerelay.relay.policy import IceMode
from icerelay.relay.rewrite import apply_plan, describe
from icerelay.sdp import IceCredentials, SessionDescription

PHONE = (
    b"v=0\r\no=caller 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
VIDEO = (
    b"v=0\r\no=- 3868 3869 IN IP6 2001:db8::1\r\ns=call\r\nt=0 0\r\na=recvonly\r\n"
    b"m=audio 4000 RTP/AVP 96 0\r\nc=IN IP6 2001:db8::1\r\na=rtpmap:96 opus/48000/2\r\n"
    b"a=rtcp-mux\r\nm=video 0 RTP/AVP 97\r\nc=IN IP4 0.0.0.0\r\nb=AS:512\r\n"
    b"m=video 4002 RTP/AVP 97\r\nc=IN IP4 192.0.2.1\r\na=rtpmap:97 H264/90000\r\na=inactive\r\n"
)


def _general_offers(body: bytes) -> object:
    try:
        return describe(SessionDescription.parse(body))
    except SdpError as error:
        return error


def _general_write(body: bytes, plan: SessionPlan, options: RelayOptions) -> bytes | None:
    try:
        return apply_plan(SessionDescription.parse(body), plan, options)
    except (RelayError, SdpError):
        return None


def test_what_phones_send_takes_the_fast_lane() -> None:
    options = RelayOptions(replace_origin=True, replace_session_connection=True)
    for body in (PHONE, VIDEO):
        simple = fastlane.read(body)
        assert simple is not None
        assert simple.offers == describe(SessionDescription.parse(body))
        plan = SessionPlan(
            tuple(
                StreamPlan("203.0.113.5", 30000 + 2 * i, 30001 + 2 * i, None, None, ())
                for i in range(len(simple.offers))
            )
        )
        written = simple.write(plan, options)
        assert written is not None and written == _general_write(body, plan, options)
    phone = fastlane.read(PHONE)
    plan = SessionPlan((StreamPlan("203.0.113.5", 30000, 30001, None, None, ()),))
    assert phone is not None
    assert b"c=IN IP4 203.0.113.5\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 8 101\r\n" in (
        phone.write(plan, options) or b""
    )


def test_rtcp_mux_is_added_and_taken_away_as_the_general_model_does() -> None:
    body = VIDEO.replace(b"m=video 0", b"a=rtcp-mux\r\nm=video 0")  # two in the first section
    simple = fastlane.read(body)
    assert simple is not None
    for first, last in ((False, True), (True, False), (None, True), (False, None)):
        plan = SessionPlan(
            (
                StreamPlan("203.0.113.5", 30000, 30001, None, first, ()),
                None,
                StreamPlan("203.0.113.5", 30002, 30003, None, last, ()),
            )
        )
        written = simple.write(plan, RelayOptions())
        assert written is not None and written == _general_write(body, plan, RelayOptions())
        assert written.count(b"a=rtcp-mux") == (first is not False) * 2 + (last is True)


def test_what_it_does_not_know_goes_the_general_way() -> None:
    ice = PHONE + b"a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n"
    for body in (
        PHONE.replace(b"\r\n", b"\n"),  # LF endings
        PHONE.replace(b"s=-", b"s=\xc3\xa9"),  # not ASCII
        PHONE.replace(b"RTP/AVP 0", b"RTP/AVP  0"),  # two spaces in a field list
        PHONE.replace(b"a=ptime:20", b"a=rtcp:4001\r\na=rtcp:4003"),  # two: an error
        PHONE.replace(b"a=ptime:20", b"a=rtcp:x"),  # malformed: the general path says so
        PHONE.replace(b"t=0 0", b"t=0 0\r\na=rtcp:4001"),  # session level
        ice,
        PHONE + b"a=sendonly\r\n",  # two directions: the general parser's error
        PHONE.replace(b"4000", b"04000"),
        PHONE.replace(b"4000", b"4000/2"),
        PHONE.replace(b"c=IN IP4 192.168.1.10", b"c=IN IP4 224.2.1.1/127"),
        b"",
    ):
        assert fastlane.read(body) is None
    simple = fastlane.read(PHONE)
    assert simple is not None
    forced = SessionPlan(
        (StreamPlan("203.0.113.5", 30000, 30001, IceCredentials("a" * 4, "b" * 22), None, ()),),
        IceMode.FORCE,
    )
    assert simple.write(forced, RelayOptions()) is None


# -- generated bodies --------------------------------------------------------------------------

_ADDRESSES = ["192.0.2.1", "2001:db8::2", "0.0.0.0", "::", "host.example", "224.2.1.1/127"]
_ORIGIN = st.sampled_from(
    ["o=- 1 1 IN IP4 192.0.2.1"] * 4 + ["o=alice 2890844526 2890842807 IN IP6 2001:db8::1",
     "o=x 1 1 IN IP4", "o=x 1  1 IN IP4 192.0.2.1", "o=x 01 1 in ip4 h.example"]
)  # fmt: skip
_CONNECTION = st.builds(
    "c={} {} {}".format,
    st.sampled_from(["IN"] * 5 + ["ATM"]),
    st.sampled_from(["IP4"] * 4 + ["IP6", "ip4", "X"]),
    st.sampled_from(_ADDRESSES[:1] * 4 + _ADDRESSES),
) | st.sampled_from(["c=IN IP4", "c=IN  IP4 192.0.2.1"])
_SIMPLE_ATTRIBUTES = st.sampled_from(
    ["a=sendrecv", "a=rtcp-mux", "a=ptime:20", "a=rtpmap:0 PCMU/8000", "a=mid:0",
     "a=rtpmap:96 opus/48000/2", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16",
     "b=AS:64", "a=sendonly", "a=inactive", "a=tool:x y"]
)  # fmt: skip
_ODD_ATTRIBUTES = st.sampled_from(
    ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive", "a=rtcp-mux", "a=rtcp-mux:x",
     "a=rtcp:4001", "a=rtcp:4001 IN IP4 192.0.2.9", "a=rtcp:04001", "a=rtcp", "a=rtcp:",
     "a=rtcp:1 IN IP4", "a=rtcp:70000", "a=rtcp:4001  IN IP4 h", "a=ptime:20", "a=tool:x y", "a=",
     "a=:x", "a=mid:0", "a=rtpmap:0 PCMU/8000", "a=rtpmap:96 opus/48000/2", "a=rtpmap:96",
     "a=rtpmap:96 opus", "a=rtpmap:", "a=rtpmap", "a=rtpmap:101 telephone-event/8000",
     "a=rtpmap:  96 x/1", "a=fmtp:101 0-16", "a=ice-lite", "a=ice-ufrag:abcd",
     "a=candidate:1 1 UDP 2130706431 192.0.2.1 4000 typ host", "a=group:BUNDLE 0 1",
     "b=AS:64", "i=info", "k=prompt", "v=0", "o=- 1 1 IN IP4 192.0.2.1", "x=unknown",
     "A=upper", "a=x\t", "a=trailing ", "c=IN IP4 192.0.2.7"]
)  # fmt: skip
_ATTRIBUTES = st.sampled_from([0] * 8 + [1]).flatmap(
    lambda odd: _ODD_ATTRIBUTES if odd else _SIMPLE_ATTRIBUTES
)
_MEDIA_LINE = st.builds(
    "m={} {} {}{}".format,
    st.sampled_from(["audio", "video", "image"]),
    st.sampled_from(["4000"] * 6 + ["0", "65535", "65536", "04000", "4000/2", "x"]),
    st.sampled_from(["RTP/AVP", "UDP/TLS/RTP/SAVPF", "udptl"]),
    st.lists(st.sampled_from(["0", "8", "96", "101", "18", "t38", "1000"]), max_size=3).map(
        lambda formats: "".join(" " + f for f in formats)
    ),
)
_RTCP = st.sampled_from(
    ["a=rtcp:4001", "a=rtcp:4000", "a=rtcp:4001 IN IP4 192.0.2.9", "a=rtcp:4001 IN IP6 ::",
     "a=rtcp:0", "a=rtcp:4001 IN IP4 0.0.0.0", "a=rtcp:9 IN X y"]
)  # fmt: skip
_MEDIA = st.tuples(
    _MEDIA_LINE, st.none() | _CONNECTION, st.lists(_ATTRIBUTES, max_size=5), st.none() | _RTCP
)


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    lines = ["v=0"]
    if draw(st.integers(0, 9)):
        lines.append(draw(_ORIGIN))
    lines.append("s=-")
    if draw(st.booleans()):
        lines.append(draw(_CONNECTION))
    lines.append("t=0 0")
    lines += draw(st.lists(_ATTRIBUTES, max_size=3))
    for m_line, connection, attributes, rtcp in draw(st.lists(_MEDIA, max_size=3)):
        lines.append(m_line)
        if connection is not None:
            lines.append(connection)
        lines += attributes
        if rtcp is not None:
            lines.insert(len(lines) - draw(st.integers(0, len(attributes))), rtcp)
    ending = "\r\n" if draw(st.integers(0, 19)) else "\n"
    return (ending.join(lines) + ending).encode()


_PLAN = st.none() | st.builds(
    StreamPlan,
    st.sampled_from(["203.0.113.5", "2001:db8::5", "0.0.0.0", "bad address", ""]),
    st.sampled_from([30000, 30002, 0, 70000]),
    st.sampled_from([30001, 30003]),
    st.none() | st.just(IceCredentials("abcd", "0123456789012345678901")),
    st.sampled_from([None, None, True, False]),
    st.sampled_from([(), ()]),
)


@given(_bodies(), st.data())
@settings(max_examples=1500, deadline=None)
def test_the_fast_lane_reads_and_writes_as_the_general_model(
    body: bytes, data: st.DataObject
) -> None:
    simple = fastlane.read(body)
    general = _general_offers(body)
    if simple is None:
        event("general path")
        return
    event("fast lane")
    # Never an answer for a body the general path refuses.
    assert not isinstance(general, SdpError), general
    assert simple.offers == general
    for _ in range(3):
        streams = len(simple.offers) + data.draw(st.sampled_from([0, 0, 0, 1]))
        plan = SessionPlan(
            tuple(data.draw(_PLAN) for _ in range(streams)),
            data.draw(st.sampled_from(list(IceMode))),
        )
        options = RelayOptions(
            replace_origin=data.draw(st.booleans()),
            replace_session_connection=data.draw(st.booleans()),
        )
        written = simple.write(plan, options)
        if written is None:
            event("plan: general path")
            continue
        event("plan: fast lane")
        assert written == _general_write(body, plan, options)


# -- through the engine ------------------------------------------------------------------------


def _engine() -> object:
    import random

    from icerelay.relay.ports import PortPool
    from icerelay.relay.sessions import RelayConfig, SessionEngine

    pool = PortPool(30000, 30199, rng=random.Random(3))
    return SessionEngine(RelayConfig(), pool, rng=random.Random(4))


def _exchange(engine: object, crlf: bool) -> list[object]:
    """A call's requests through ``engine``: simple bodies (CRLF) take the fast lane; with LF
    endings the same bodies take the general model. Returns the replies and events."""
    from icerelay.relay.sessions import MediaRequest, SessionEngine

    assert isinstance(engine, SessionEngine)
    hold = PHONE.replace(b"a=sendrecv", b"a=sendonly").replace(b"o=caller 1 1", b"o=caller 1 2")
    answer = PHONE.replace(b"o=caller", b"o=callee").replace(b"4000", b"5000")
    muxed = VIDEO.replace(b"a=rtcp-mux\r\n", b"a=rtcp-mux\r\na=rtcp:4000\r\n")
    steps: list[tuple[str, bytes, str | None, RelayOptions]] = [
        ("offer", PHONE, None, RelayOptions(replace_origin=True)),
        ("answer", answer, "callee", RelayOptions(replace_session_connection=True)),
        ("offer", hold, "callee", RelayOptions(rtcp_mux=frozenset({"offer"}))),
        ("answer", answer, "callee", RelayOptions(rtcp_mux=frozenset({"accept"}))),
        # ICE=force: the body is simple, the plan is not (the general model writes it).
        ("offer", PHONE, "callee", RelayOptions(ice=IceMode.FORCE)),
        ("offer", muxed, None, RelayOptions(replace_origin=True)),
    ]
    out: list[object] = []
    for number, (kind, sdp, to_tag, options) in enumerate(steps):
        if not crlf:
            sdp = sdp.replace(b"\r\n", b"\n")
        call = "call-2" if sdp.count(b"m=") > 1 else "call-1"
        request = MediaRequest(call, "caller", sdp, to_tag=to_tag, options=options)
        try:
            reply = engine.offer(request, float(number)) if kind == "offer" else engine.answer(
                request, float(number)
            )
        except RelayError as error:
            out.append(str(error))
            continue
        out.append(reply if crlf else reply.replace(b"\n", b"\r\n"))
        while (event := engine.next_event()) is not None:
            out.append(event)
    return out


def test_the_engine_answers_the_same_through_either_path() -> None:
    fast, general = _exchange(_engine(), crlf=True), _exchange(_engine(), crlf=False)
    assert fast == general
    assert any(isinstance(item, bytes) and b"a=ice-lite" in item for item in fast)
    assert any(isinstance(item, bytes) and b"a=rtcp:30" in item for item in fast)
