"""ClientTransaction: RFC 8489 §6.2 retransmission timing on a virtual clock."""

from __future__ import annotations

import pytest

from icerelay.errors import TransactionError
from icerelay.stun import Address, AttributeType, Message, MessageClass, Method, decode_message
from icerelay.stun.transaction import ClientTransaction, RtoCache


def _request() -> Message:
    return Message(Method.BINDING, MessageClass.REQUEST, bytes(range(12)))


def _run(transaction: ClientTransaction, until: float) -> list[float]:
    """Drive the transaction's timers until ``until``; the times at which it sent."""
    sent = [0.0] * len(transaction.datagrams_to_send(0.0))
    while (deadline := transaction.next_timer()) is not None and deadline <= until:
        transaction.handle_timer(deadline)
        sent += [deadline] * len(transaction.datagrams_to_send(deadline))
    return sent


def test_udp_schedule_and_timeout() -> None:
    transaction = ClientTransaction(_request(), "udp", 0.0)
    sent = _run(transaction, 100.0)
    assert sent == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert transaction.done
    assert isinstance(transaction.error, TransactionError)
    assert str(transaction.error) == "timeout"
    event = transaction.next_event()
    assert event is not None and event.error is transaction.error and event.response is None
    assert transaction.next_event() is None


def test_udp_timeout_is_at_39_5_seconds() -> None:
    transaction = ClientTransaction(_request(), "udp", 10.0)
    transaction.datagrams_to_send(10.0)
    times = []
    while (deadline := transaction.next_timer()) is not None:
        times.append(deadline - 10.0)
        transaction.handle_timer(deadline)
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 39.5]
    assert transaction.sends == 7


def test_configurable_rto_rc_rm() -> None:
    transaction = ClientTransaction(_request(), "udp", 0.0, rto=0.1, rc=3, rm=4)
    sent = _run(transaction, 10.0)
    assert sent == pytest.approx([0.0, 0.1, 0.3])
    assert transaction.error is not None


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_stream_transports_send_once_and_time_out_at_ti(transport: str) -> None:
    transaction = ClientTransaction(_request(), transport, 0.0)  # type: ignore[arg-type]
    assert len(transaction.datagrams_to_send(0.0)) == 1
    assert transaction.next_timer() == 39.5
    transaction.handle_timer(39.4)
    assert not transaction.done
    transaction.handle_timer(39.5)
    assert transaction.datagrams_to_send(39.5) == []
    assert transaction.error is not None


def test_response_completes_and_stops_timers() -> None:
    request = _request()
    transaction = ClientTransaction(request, "udp", 0.0)
    transaction.datagrams_to_send(0.0)
    transaction.handle_timer(0.5)
    assert len(transaction.datagrams_to_send(0.5)) == 1
    response = request.response()
    response.add(AttributeType.XOR_MAPPED_ADDRESS, Address("192.0.2.1", 32853))
    assert transaction.receive(decode_message(response.encode()))
    assert transaction.done and transaction.next_timer() is None
    assert transaction.response == response
    assert transaction.result is transaction.response
    # a duplicate response (to the retransmission) is ours but changes nothing
    assert transaction.receive(response)
    event = transaction.next_event()
    assert event is not None and event.response == response
    assert transaction.next_event() is None


def test_error_response_completes_too() -> None:
    request = _request()
    transaction = ClientTransaction(request.encode(), "udp", 0.0)
    assert transaction.receive(request.error_response(401))
    assert transaction.response is not None
    assert transaction.response.message_class == MessageClass.ERROR_RESPONSE


def test_other_messages_are_not_ours() -> None:
    request = _request()
    transaction = ClientTransaction(request, "udp", 0.0)
    other = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, bytes(12))
    assert not transaction.receive(other)
    # same id but a request or an indication is not a response
    assert not transaction.receive(
        Message(Method.BINDING, MessageClass.REQUEST, request.transaction_id)
    )
    assert not transaction.receive(
        Message(Method.BINDING, MessageClass.INDICATION, request.transaction_id)
    )
    # RFC 3489: the cookie field is part of the id
    assert not transaction.receive(
        Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, request.transaction_id, cookie=1)
    )
    assert not transaction.done


def test_late_timer_keeps_the_schedule() -> None:
    transaction = ClientTransaction(_request(), "udp", 0.0)
    transaction.handle_timer(0.7)  # woken late
    assert transaction.next_timer() == 1.5
    transaction.handle_timer(0.2)  # early: nothing
    assert transaction.sends == 2


def test_cancel() -> None:
    transaction = ClientTransaction(_request(), "udp", 0.0)
    transaction.cancel()
    assert transaction.done and str(transaction.error) == "cancelled"
    assert transaction.datagrams_to_send(0.0) == []


def test_rtt_sample_only_without_retransmission() -> None:
    request = _request()
    fast = ClientTransaction(request, "udp", 1.0)
    assert fast.receive(request.response(), now=1.2)
    assert fast.rtt == pytest.approx(0.2)
    slow = ClientTransaction(request, "udp", 1.0)
    slow.handle_timer(1.5)
    assert slow.receive(request.response(), now=1.6)
    assert slow.rtt is None  # Karn: ambiguous after a retransmission


def test_rto_cache() -> None:
    cache = RtoCache()
    assert cache.rto("192.0.2.1", 0.0) == 0.5
    request = _request()
    # a slow server: RTO grows above the initial value
    transaction = ClientTransaction(request, "udp", 0.0, rto=cache.rto("192.0.2.1", 0.0))
    transaction.receive(request.response(), now=0.4)
    cache.observe("192.0.2.1", transaction, 0.4)
    assert cache.rto("192.0.2.1", 1.0) == pytest.approx(0.4 + 4 * 0.2)
    # another server is not affected
    assert cache.rto("192.0.2.2", 1.0) == 0.5
    # a fast one never goes below the floor
    fast = ClientTransaction(request, "udp", 0.0)
    fast.receive(request.response(), now=0.001)
    cache.observe("192.0.2.3", fast, 0.001)
    assert cache.rto("192.0.2.3", 1.0) == 0.5
    # second sample smooths (RFC 6298 §2.3)
    again = ClientTransaction(request, "udp", 2.0)
    again.receive(request.response(), now=2.4)
    cache.observe("192.0.2.1", again, 2.4)
    assert cache.rto("192.0.2.1", 3.0) == pytest.approx(0.4 + 4 * 0.15)
    # forgotten after ten minutes without transactions
    assert cache.rto("192.0.2.1", 2.4 + 601) == 0.5
    capped = RtoCache(max_rto=1.0)
    slow = ClientTransaction(request, "udp", 0.0)
    slow.receive(request.response(), now=0.9)
    capped.observe("h", slow, 0.9)
    assert capped.rto("h", 1.0) == 1.0
