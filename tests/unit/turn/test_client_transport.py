"""The TURN client engine's transport behaviour in virtual time: UDP retransmissions (RFC 8489
§6.2.1), the single TCP timeout (§6.2.2), and the TCP/TLS byte stream with STUN and padded
ChannelData split and coalesced arbitrarily (RFC 8656 §12.5)."""

from __future__ import annotations

import pytest

from icerelay.errors import TurnError
from icerelay.stun import Method
from icerelay.turn.client import (
    AllocationExpired,
    AllocationFailed,
    AllocationSucceeded,
    DataReceived,
    State,
)
from icerelay.turn.client.framing import StreamFramer

from .test_client_fakes import PEER, SERVER, Harness, make


def test_udp_allocate_is_retransmitted_on_the_rfc_schedule() -> None:
    h = make(start=False)
    h.server.drop_requests = 1000
    h.engine.start(0.0)
    h.pump()
    sent_at = [0.0]
    while True:
        deadline = h.engine.next_timer()
        if deadline is None:
            break
        h.now = deadline
        h.engine.handle_timer(deadline)
        before = len(h.server.requests)
        h.pump()
        if len(h.server.requests) > before:
            sent_at.append(deadline)
    # RFC 8489 §6.2.1 with RTO 500 ms, Rc 7, Rm 16: 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5; fail 39.5.
    assert sent_at == pytest.approx([0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
    assert h.now == pytest.approx(39.5)
    assert h.engine.counters.retransmissions == 6
    failed = h.events[-1]
    assert isinstance(failed, AllocationFailed) and failed.code is None
    assert "timed out" in failed.reason


def test_udp_lost_answer_is_recovered_by_retransmission() -> None:
    h = make(start=False)
    h.server.drop_requests = 2  # the unauthenticated Allocate twice
    h.engine.start(0.0)
    h.advance(2.0)
    assert isinstance(h.events[-1], AllocationSucceeded)
    assert h.engine.counters.retransmissions == 2


def test_tcp_sends_once_and_times_out_after_ti() -> None:
    h = make(transport="tcp", start=False)
    h.server.drop_requests = 1000
    h.engine.start(0.0)
    h.pump()
    h.advance(39.0)
    assert len(h.server.requests) == 1  # no retransmission over a reliable transport
    h.advance(0.5)
    assert isinstance(h.events[-1], AllocationFailed)
    assert h.engine.counters.retransmissions == 0


def test_tcp_channel_data_is_padded_to_four_bytes() -> None:
    h = make(transport="tcp")
    h.engine.send_to(b"a", PEER, h.now)
    h.pump()
    h.engine.send_to(b"abcde", PEER, h.now)
    h.pump()
    (frame,) = h.server.raw_channel_frames
    assert len(frame) == 4 + 8 and frame[3] == 5 and frame[-3:] == b"\x00\x00\x00"


def _stream_bytes(h_transport: str = "tcp") -> tuple[Harness, bytes, list[bytes]]:
    """An allocated TCP harness, plus a server byte stream holding a Data indication, padded
    ChannelData (odd lengths) and a Refresh answer, and the payloads in order."""
    h = make(transport=h_transport)
    h.engine.send_to(b"open", PEER, h.now)
    h.pump()
    payloads = [b"x", b"indication!", b"yz", b"", b"four", b"seven!!"]
    stream = h.server.channel_data_from(PEER, payloads[0])
    stream += h.server.data_indication(PEER, payloads[1])
    for payload in payloads[2:]:
        stream += h.server.channel_data_from(PEER, payload)
    return h, stream, payloads


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 10_000])
def test_tcp_stream_split_and_coalesced(chunk: int) -> None:
    h, stream, payloads = _stream_bytes()
    for offset in range(0, len(stream), chunk):
        h.engine.receive(stream[offset : offset + chunk], SERVER, None, h.now)
    events = h.pump()
    assert events == [DataReceived(PEER, p) for p in payloads]
    assert h.engine.counters.malformed == 0


def test_tcp_stream_with_response_coalesced_with_data() -> None:
    h = make(transport="tcp")
    h.engine.send_to(b"open", PEER, h.now)
    h.pump()
    h.engine.refresh(h.now)
    (request,) = h.engine.datagrams_to_send(h.now)
    (answer,) = h.server.handle(request.data)
    blob = (
        h.server.channel_data_from(PEER, b"abc") + answer + h.server.channel_data_from(PEER, b"d")
    )
    h.engine.receive(blob[:9], SERVER, None, h.now)
    h.engine.receive(blob[9:], SERVER, None, h.now)
    events = h.pump()
    assert [type(e).__name__ for e in events] == [
        "DataReceived",
        "AllocationRefreshed",
        "DataReceived",
    ]


def test_tcp_framing_loss_ends_the_allocation_without_raising() -> None:
    h = make(transport="tcp")
    h.engine.receive(b"\xff\x00\x00\x00garbage", SERVER, None, h.now)
    events = h.pump()
    assert len(events) == 1 and isinstance(events[0], AllocationExpired)
    assert "framing" in events[0].reason
    assert h.engine.counters.malformed == 1
    assert h.engine.state is State.CLOSED


def test_tcp_connection_lost() -> None:
    h = make(transport="tcp")
    h.engine.connection_lost(h.now)
    assert [type(e) for e in h.pump()] == [AllocationExpired]


def test_stream_framer_directly() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\x40\x00") == []
    assert framer.feed(b"\x00\x01a\x00\x00\x00") == [b"\x40\x00\x00\x01a\x00\x00\x00"]
    assert framer.buffered == 0
    with pytest.raises(TurnError):
        framer.feed(b"\x00\x01\x00\x03" + bytes(20))  # STUN length not a multiple of 4
    with pytest.raises(TurnError):
        framer.feed(b"")  # stays broken


def test_udp_datagram_from_another_source_is_ignored() -> None:
    h = make()
    h.engine.create_permission([PEER], h.now)
    h.pump()
    indication = h.server.data_indication(PEER, b"spoofed")
    h.engine.receive(indication, PEER, None, h.now)
    assert h.pump() == []
    assert h.engine.counters.ignored == 1


def test_retransmission_counter_is_zero_on_a_clean_path() -> None:
    h = make()
    h.advance(1000.0)
    assert h.engine.counters.retransmissions == 0
    assert h.engine.counters.requests_sent == len(h.server.requests)
    assert h.requests_of(Method.REFRESH)
