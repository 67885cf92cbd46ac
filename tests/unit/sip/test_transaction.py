"""Transaction state machines in virtual time (RFC 3261 section 17, RFC 6026)."""

from __future__ import annotations

import pytest

from icerelay.sip.message import SipRequest, SipResponse, make_response, parse_message
from icerelay.sip.transaction import ClientTransaction, ServerTransaction, State, Timers

DEST = ("192.0.2.2", 5060)


def request(method: str = "INVITE", branch: str = "z9hG4bKabc") -> SipRequest:
    message = parse_message(
        f"{method} sip:bob@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch={branch}\r\n"
        f"From: <sip:a@x>;tag=1\r\nTo: <sip:bob@192.0.2.2>\r\nCall-ID: c1\r\n"
        f"CSeq: 1 {method}\r\nContact: <sip:a@192.0.2.1>\r\n\r\n".encode())
    assert isinstance(message, SipRequest)
    return message


def sends(tx: ClientTransaction | ServerTransaction) -> list[bytes]:
    out = [data for data, _ in tx.outbox]
    tx.outbox.clear()
    return out


def run_until(tx: ClientTransaction | ServerTransaction, end: float) -> list[float]:
    """Fire timers up to ``end``; the times at which something was sent."""
    times = []
    while (t := tx.next_timer()) is not None and t <= end:
        tx.handle_timer(t)
        if sends(tx):
            times.append(t)
    return times


def test_invite_client_timer_a_doubles_and_b_times_out() -> None:
    tx = ClientTransaction(request(), DEST, 0.0)
    assert len(sends(tx)) == 1
    times = run_until(tx, 100.0)
    assert times == pytest.approx([0.5, 1.5, 3.5, 7.5, 15.5, 31.5])  # A: 500 ms doubling
    assert tx.timed_out and tx.state is State.TERMINATED  # B: 64*T1 = 32 s


def test_invite_client_provisional_stops_retransmission_error_acked() -> None:
    invite = request()
    tx = ClientTransaction(invite, DEST, 0.0)
    sends(tx)
    tx.receive(make_response(invite, 180, to_tag="t"), 0.1)
    assert tx.state is State.PROCEEDING and run_until(tx, 20.0) == []
    busy = make_response(invite, 486, to_tag="t")
    tx.receive(busy, 21.0)
    ack = parse_message(sends(tx)[0])
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert ack.top_via.branch == "z9hG4bKabc" and ack.to_address.tag == "t"
    assert ack.cseq == (1, "ACK")
    tx.receive(busy, 21.5)  # retransmitted 486: the ACK again, not the user
    assert len(sends(tx)) == 1
    assert [r.status for r in tx.responses] == [180, 486]
    tx.handle_timer(21.0 + 32)  # timer D
    assert tx.terminated


def test_invite_client_2xx_goes_to_accepted_and_passes_retransmissions() -> None:
    invite = request()
    tx = ClientTransaction(invite, DEST, 0.0)
    ok = make_response(invite, 200, to_tag="t")
    tx.receive(ok, 0.2)
    tx.receive(ok, 0.7)
    assert tx.state is State.ACCEPTED and len(tx.responses) == 2
    tx.handle_timer(0.2 + 32)  # timer M
    assert tx.terminated and not tx.timed_out


def test_non_invite_client_timer_e_caps_at_t2_and_t2_in_proceeding() -> None:
    tx = ClientTransaction(request("BYE"), DEST, 0.0)
    sends(tx)
    times = run_until(tx, 12.0)
    assert times == pytest.approx([0.5, 1.5, 3.5, 7.5, 11.5])  # 0.5,1,2,4 then capped at 4
    tx.receive(make_response(tx.request, 100), 12.0)
    assert tx.state is State.PROCEEDING
    times = run_until(tx, 32.0)
    assert times[0] == pytest.approx(15.5) and tx.timed_out  # F = 32 s


def test_non_invite_client_completed_then_timer_k() -> None:
    tx = ClientTransaction(request("BYE"), DEST, 0.0, reliable=True)
    tx.receive(make_response(tx.request, 200), 0.1)
    assert tx.final is not None and tx.final.status == 200
    assert tx.next_timer() == pytest.approx(0.1)  # K = 0 over TCP
    tx.handle_timer(0.1)
    assert tx.terminated


def test_invite_server_error_retransmits_g_until_ack() -> None:
    invite = request()
    tx = ServerTransaction(invite, DEST, 0.0)
    tx.respond(make_response(invite, 486, to_tag="x"), 0.0)
    assert len(sends(tx)) == 1
    times = run_until(tx, 10.0)
    assert times == pytest.approx([0.5, 1.5, 3.5, 7.5])
    tx.receive_request(request(), 10.0)  # a retransmitted INVITE gets the 486 again
    assert len(sends(tx)) == 1
    tx.receive_request(request("ACK"), 10.1)
    assert tx.state is State.CONFIRMED and tx.acked
    tx.handle_timer(10.1 + 5.0)  # timer I = T4
    assert tx.terminated


def test_invite_server_timer_h_without_ack() -> None:
    invite = request()
    tx = ServerTransaction(invite, DEST, 0.0, timers=Timers(t1=0.01, t2=0.04))
    tx.respond(make_response(invite, 603, to_tag="x"), 0.0)
    run_until(tx, 1.0)
    assert tx.timed_out and tx.terminated


def test_invite_server_2xx_absorbs_retransmitted_invites() -> None:
    invite = request()
    tx = ServerTransaction(invite, DEST, 0.0)
    tx.respond(make_response(invite, 100), 0.0)
    tx.receive_request(request(), 0.3)  # retransmission answered with the 100
    assert len(sends(tx)) == 2
    tx.respond(make_response(invite, 200, to_tag="x"), 1.0)
    sends(tx)
    tx.receive_request(request(), 1.2)
    assert sends(tx) == [] and tx.state is State.ACCEPTED
    tx.handle_timer(1.0 + 32)  # timer L
    assert tx.terminated


def test_non_invite_server_timer_j() -> None:
    bye = request("BYE")
    tx = ServerTransaction(bye, DEST, 0.0)
    tx.respond(make_response(bye, 200, to_tag="x"), 0.0)
    sends(tx)
    tx.receive_request(request("BYE"), 1.0)
    assert len(sends(tx)) == 1
    tx.respond(make_response(bye, 500), 1.0)  # the user changing its mind is ignored
    assert sends(tx) == []
    tx.handle_timer(32.0)
    assert tx.terminated
    assert isinstance(tx.last_response, SipResponse) and tx.last_response.status == 200
