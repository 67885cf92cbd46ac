"""OpenSIPS mediaproxy module protocol: parsing, framing, and commands run on the engine."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icerelay.control.mediaproxy import (
    MediaproxyFramer,
    MediaproxyHandler,
    MediaproxyRemove,
    MediaproxyStream,
    MediaproxyUpdate,
    parse_command,
)
from icerelay.errors import ControlError
from icerelay.relay.forwarding import Forwarding, ForwardingCounters
from icerelay.relay.ports import PortPool
from icerelay.relay.sessions import (
    ForwardingInstalled,
    RelayConfig,
    SessionEnded,
    SessionEngine,
    StreamEnded,
    StreamEndReason,
    TerminationReason,
)
from icerelay.stun import Address


def update(
    kind: str = "request",
    to_tag: str = "",
    media: str = "audio:10.0.0.5:5000:sendrecv:ice=no",
    user_agent: str = "Blink 5.1",
    signaling_ip: str = "203.0.113.50",
) -> bytes:
    return (
        "update\r\n"
        f"type: {kind}\r\n"
        "dialog_id: 2613:1837\r\n"
        "call_id: 9f3b@192.0.2.10\r\n"
        "cseq: 1 INVITE\r\n"
        "from_uri: sip:alice@example.com\r\n"
        "to_uri: sip:bob@example.com\r\n"
        "from_tag: alicetag\r\n"
        f"to_tag: {to_tag}\r\n"
        f"user_agent: {user_agent}\r\n"
        f"media: {media}\r\n"
        f"signaling_ip: {signaling_ip}\r\n"
        "media_relay: \r\n"
    ).encode()


REMOVE = b"remove\r\ncall_id: 9f3b@192.0.2.10\r\nfrom_tag: alicetag\r\nto_tag: bobtag\r\n"


def engine() -> SessionEngine:
    return SessionEngine(
        RelayConfig(addresses={4: "192.0.2.1"}), PortPool(40000, 40099, rng=random.Random(1)),
        rng=random.Random(5),
    )


def drain(engine: SessionEngine) -> list[object]:
    events: list[object] = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    return events


def test_parse_update() -> None:
    command = parse_command(
        update(media="audio:10.0.0.5:5000:sendrecv:ice=yes,video:2001:db8::5:5002:recvonly")
    )
    assert command == MediaproxyUpdate(
        is_reply=False,
        call_id="9f3b@192.0.2.10",
        from_tag="alicetag",
        to_tag=None,
        streams=(
            MediaproxyStream("audio", "10.0.0.5", 5000, "sendrecv", True),
            MediaproxyStream("video", "2001:db8::5", 5002, "recvonly", False),
        ),
        dialog_id="2613:1837",
        cseq="1 INVITE",
        from_uri="sip:alice@example.com",
        to_uri="sip:bob@example.com",
        user_agent="Blink 5.1",
        signaling_ip="203.0.113.50",
    )
    assert parse_command(REMOVE) == MediaproxyRemove("9f3b@192.0.2.10", "alicetag", "bobtag")
    # The module before ICE support sends no ice= flag; some SDPs have no direction.
    old = parse_command(update(media="audio:10.0.0.5:5000:"))
    assert isinstance(old, MediaproxyUpdate)
    assert old.streams == (MediaproxyStream("audio", "10.0.0.5", 5000, None, False),)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty command"),
        (b"dance\r\ncall_id: x\r\n", "unknown command 'dance'"),
        (b"remove\r\nfrom_tag: a\r\n", "'call_id' is missing"),
        (update(kind="maybe"), "'type' must be request or reply"),
        (update(media="audio:10.0.0.5:x:sendrecv"), "is not a port number"),
        (update(media="audio:nowhere:5000:sendrecv"), "is not an IP address"),
        (update(media="audio:10.0.0.5:5000:sendrecv:ice=perhaps"), "ice must be yes or no"),
        (update(media="audio"), "must be type:ip:port"),
        (update(signaling_ip="example.com"), "'signaling_ip'"),
        (b"remove\r\ncall_id: a\r\ncall_id: b\r\n", "appears twice"),
        (b"remove\r\nno colon here\r\n", "without ':'"),
        (b"remove\r\ncall_id: \xff\r\n", "UTF-8"),
    ],
)
def test_parse_errors(data: bytes, reason: str) -> None:
    with pytest.raises(ControlError, match=reason):
        parse_command(data)


@given(st.binary(max_size=300))
@settings(max_examples=400)
def test_fuzz_parse_raises_only_control_error(data: bytes) -> None:
    with contextlib.suppress(ControlError):
        parse_command(data)


def test_framer_splits_on_empty_lines_anywhere() -> None:
    stream = update() + b"\r\n" + REMOVE + b"\r\n" + b"remove\ncall_id: x\n\n"
    for size in (1, 5, len(stream)):
        framer = MediaproxyFramer()
        commands = []
        for index in range(0, len(stream), size):
            commands.extend(framer.feed(stream[index : index + size]))
        # A command ends where its empty line starts (the last header's CRLF goes with it).
        assert commands == [update()[:-2], REMOVE[:-2], b"remove\ncall_id: x"]
    with pytest.raises(ControlError, match="longer than"):
        MediaproxyFramer().feed(b"x" * 70000)


def test_call_through_the_handler() -> None:
    relay = engine()
    handler = MediaproxyHandler(relay)
    reply = handler.handle(
        update(media="audio:10.0.0.5:5000:sendrecv:ice=yes,video:10.0.0.5:5002:sendrecv"), 0.0
    )
    address, *ports = reply.decode().split()
    assert reply.endswith(b"\r\n") and address == "192.0.2.1"
    assert len(ports) == 2 and all(40000 <= int(port) < 40100 for port in ports)
    (forwarding, _) = [e.forwarding for e in drain(relay) if isinstance(e, ForwardingInstalled)]
    assert isinstance(forwarding, Forwarding)
    # The phone's private address was replaced by where its signalling came from.
    assert forwarding.a.rtp_peer == Address("203.0.113.50", 5000)

    answer = handler.handle(
        update(
            kind="reply",
            to_tag="bobtag",
            media="audio:198.51.100.9:7000:sendrecv,video:198.51.100.9:0:sendrecv",
            user_agent="Linphone 5",
        ),
        1.0,
    )
    address, audio, video = answer.decode().split()
    assert address == "192.0.2.1" and audio not in ports and video == "0"
    assert relay.pool.in_use == 2  # the rejected video stream gave its ports back

    assert handler.handle(REMOVE, 5.0) == b"removed\r\n"
    relay.handle_timer(40.0)  # the default delete delay
    (ended,) = [e for e in drain(relay) if isinstance(e, SessionEnded)]
    record = ended.record
    assert record.reason is TerminationReason.DELETED
    assert record.caller_user_agent == "Blink 5.1"
    assert record.callee_user_agent == "Linphone 5"
    assert dict(record.metadata) == {
        "dialog_id": "2613:1837",
        "from_uri": "sip:alice@example.com",
        "to_uri": "sip:bob@example.com",
    }
    assert relay.pool.in_use == 0


def test_late_offer_in_the_reply_answered_in_the_ack() -> None:
    relay = engine()
    handler = MediaproxyHandler(relay)
    # INVITE without SDP: the 200 OK carries the offer...
    offer = handler.handle(
        update(kind="reply", to_tag="bobtag", media="audio:198.51.100.9:7000:sendrecv"), 0.0
    )
    assert offer.split()[0] == b"192.0.2.1"
    # ...and the ACK (a request from the caller) carries the answer.
    answer = handler.handle(update(kind="request", to_tag="bobtag"), 0.5)
    assert answer.split()[0] == b"192.0.2.1"
    assert relay.session_count == 1 and relay.pool.in_use == 2
    installed = [e.forwarding for e in drain(relay) if isinstance(e, ForwardingInstalled)]
    last = installed[-1]
    peers = {last.a.rtp_peer, last.b.rtp_peer}
    assert peers == {Address("198.51.100.9", 7000), Address("203.0.113.50", 5000)}


def test_errors_answer_error() -> None:
    handler = MediaproxyHandler(engine())
    assert handler.handle(b"dance\r\n", 0.0) == b"error\r\n"
    assert handler.handle(REMOVE, 0.0) == b"error\r\n"  # unknown call
    assert handler.handle(update(kind="reply"), 0.0) == b"error\r\n"  # a reply without to_tag
    assert handler.errors == 3


def test_ice_parties_are_not_hung_up_on_when_ice_went_around_the_relay() -> None:
    counters: dict[str, ForwardingCounters] = {}
    relay = SessionEngine(
        RelayConfig(addresses={4: "192.0.2.1"}, media_timeout=30.0),
        PortPool(40000, 40099, rng=random.Random(1)),
        rng=random.Random(5),
        counters=counters.get,
    )
    handler = MediaproxyHandler(relay)
    handler.handle(update(media="audio:10.0.0.5:5000:sendrecv:ice=yes"), 0.0)
    handler.handle(
        update(kind="reply", to_tag="bobtag", media="audio:198.51.100.9:7000:sendrecv:ice=yes"),
        1.0,
    )
    (key,) = {e.forwarding.key for e in drain(relay) if isinstance(e, ForwardingInstalled)}
    counters[key] = ForwardingCounters()
    counters[key].a.checks_authenticated = 3  # checks crossed the relay; media then went direct
    relay.handle_timer(31.0)
    events = drain(relay)
    assert StreamEnded("9f3b@192.0.2.10", "alicetag", "bobtag", 0, StreamEndReason.ICE_DIRECT) in (
        events
    )
    assert relay.session_count == 1
