"""Two user agents (and a record-routing proxy) placing calls in virtual time."""

from __future__ import annotations

import random

from icerelay.sip.message import SipRequest, parse_message
from icerelay.sip.transaction import Timers
from icerelay.sip.useragent import (
    CallAnswered,
    CallConfirmed,
    CallEnded,
    CallProgress,
    CallState,
    IncomingCall,
    OptionsAnswered,
    ReinviteAnswered,
    ReinviteReceived,
    UserAgent,
)

from .network import Network, Proxy

ALICE = ("192.0.2.1", 5060)
BOB = ("192.0.2.2", 5070)
PROXY = ("192.0.2.3", 5060)
OFFER = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
ANSWER = OFFER.replace(b"192.0.2.1", b"192.0.2.2")


def make(**kwargs: object) -> tuple[UserAgent, UserAgent]:
    alice = UserAgent(ALICE, user="alice", rng=random.Random(1), **kwargs)  # type: ignore[arg-type]
    return alice, UserAgent(BOB, user="bob", rng=random.Random(2))


def answer_all(net: Network, ua: UserAgent, address: tuple[str, int], *, ring: bool = True,
               answer: bool = True) -> None:
    """Run until bob has an incoming call, then ring and answer it."""
    net.run(5.0, stop=lambda: any(isinstance(e, IncomingCall) for e in net.events.get(address, [])))
    call = next(e.call for e in net.events[address] if isinstance(e, IncomingCall))
    if ring:
        ua.ringing(call, net.now)
    if answer:
        ua.answer(call, ANSWER, net.now)


def kinds(events: list[object]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_call_answer_hangup() -> None:
    alice, bob = make()
    net = Network({ALICE: alice, BOB: bob})
    call = alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0)
    answer_all(net, bob, BOB)
    net.run(1.0)
    assert call.state is CallState.CONFIRMED and call.remote_sdp == ANSWER
    bob_call = next(e.call for e in net.events[BOB] if isinstance(e, IncomingCall))
    assert bob_call.remote_sdp == OFFER and bob_call.state is CallState.CONFIRMED
    assert kinds(net.events[ALICE]) == ["CallProgress", "CallAnswered"]
    assert "CallConfirmed" in kinds(net.events[BOB])
    alice.hangup(call, net.now)
    net.run(2.0)
    assert call.state is CallState.TERMINATED and bob_call.state is CallState.TERMINATED
    assert isinstance(net.events[BOB][-1], CallEnded) and net.events[BOB][-1].reason == (
        "remote hangup")
    assert len(net.sent(b"INVITE")) == 1 and len(net.sent(b"ACK")) == 1
    assert len(net.sent(b"SIP/2.0 200")) == 2  # INVITE and BYE, no retransmission
    net.run(60.0)  # the transactions' wait timers (M, K, ...) run out
    assert alice.calls == {} and bob.calls == {}  # everything cleaned up
    assert alice.next_timer() is None and bob.next_timer() is None


def test_callee_hangs_up_and_rport_is_answered_to_the_source() -> None:
    alice, bob = make()
    net = Network({ALICE: alice, BOB: bob})
    call = alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0)
    answer_all(net, bob, BOB, ring=False)
    net.run(1.0)
    bob_call = next(iter(bob.calls.values()))
    bob.hangup(bob_call, net.now)
    net.run(2.0)
    assert call.state is CallState.TERMINATED and call.end_reason == "remote hangup"
    response = parse_message(net.sent(b"SIP/2.0 200")[0])
    via = response.top_via
    assert via.param("rport") == "5060" and alice.public_address == ("192.0.2.1", 5060)


def test_lost_ack_and_lost_200_are_recovered() -> None:
    alice, bob = make()
    dropped = {"200": 0, "ACK": 0}

    def drop(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bool:
        for key, prefix in (("200", b"SIP/2.0 200"), ("ACK", b"ACK")):
            if data.startswith(prefix) and dropped[key] == 0:
                dropped[key] += 1
                return True
        return False

    net = Network({ALICE: alice, BOB: bob}, drop=drop)
    call = alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0)
    answer_all(net, bob, BOB, ring=False)
    net.run(5.0)
    assert call.state is CallState.CONFIRMED
    assert any(isinstance(e, CallConfirmed) for e in net.events[BOB])
    assert len(net.sent(b"SIP/2.0 200")) == 3  # first lost, then 2 retransmissions (T1, 2T1)
    assert len(net.sent(b"ACK")) == 2  # the first ACK lost, re-sent for the retransmitted 200


def test_invite_retransmitted_over_loss_and_timeout() -> None:
    alice, bob = make(timers=Timers(t1=0.05))
    lost = [True, True]
    net = Network({ALICE: alice, BOB: bob},
                  drop=lambda d, s, t: d.startswith(b"INVITE") and bool(lost) and lost.pop())
    call = alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0)
    answer_all(net, bob, BOB)
    net.run(2.0)
    assert call.state is CallState.CONFIRMED and len(net.sent(b"INVITE")) == 3
    lonely = UserAgent(ALICE, user="alice", timers=Timers(t1=0.05), rng=random.Random(3))
    net2 = Network({ALICE: lonely})
    call2 = lonely.call("sip:nobody@192.0.2.99", OFFER, 0.0)
    net2.run(10.0)
    assert call2.state is CallState.TERMINATED and call2.end_status == 408


def test_reject_and_busy() -> None:
    alice, bob = make()
    net = Network({ALICE: alice, BOB: bob})
    call = alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0)
    net.run(1.0, stop=lambda: bool(bob.calls))
    bob.reject(next(iter(bob.calls.values())), net.now, 486)
    net.run(2.0)
    assert call.state is CallState.TERMINATED and call.end_status == 486
    assert len(net.sent(b"ACK")) == 1  # the transaction's ACK for the error


def test_cancel_before_and_after_provisional() -> None:
    alice, bob = make()
    net = Network({ALICE: alice, BOB: bob})
    call = alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0)
    alice.hangup(call, 0.0)  # no provisional yet: the CANCEL waits for the 100
    net.run(2.0)
    assert call.state is CallState.TERMINATED and call.end_reason == "cancelled"
    assert len(net.sent(b"CANCEL")) == 1
    bob_ended = [e for e in net.events[BOB] if isinstance(e, CallEnded)]
    assert bob_ended and bob_ended[0].status == 487
    assert len(net.sent(b"SIP/2.0 487")) == 1 and len(net.sent(b"ACK")) == 1


def test_options_both_ways() -> None:
    alice, bob = make()
    net = Network({ALICE: alice, BOB: bob})
    alice.options("sip:bob@192.0.2.2:5070", 0.0)
    net.run(1.0)
    answered = [e for e in net.events[ALICE] if isinstance(e, OptionsAnswered)]
    assert answered[0].status == 200 and answered[0].response is not None
    assert "INVITE" in (answered[0].response.headers.get("Allow") or "")


def test_unknown_method_and_unknown_dialog() -> None:
    _alice, bob = make()
    for method, tag in (("MESSAGE", ""), ("FOO", ""), ("BYE", ";tag=zz")):
        data = (f"{method} sip:bob@192.0.2.2:5070 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{method};rport\r\n"
                f"From: <sip:alice@192.0.2.1>;tag=1\r\nTo: <sip:bob@192.0.2.2>{tag}\r\n"
                f"Call-ID: x{method}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n").encode()
        bob.receive(data, ALICE, 0.0)
    statuses = [parse_message(d).status for d, _ in bob.datagrams_to_send(0.0)]  # type: ignore[union-attr]
    assert statuses == [405, 501, 481]
    bob.receive(b"garbage\r\n\r\n", ALICE, 0.0)
    bob.receive(b"\r\n\r\n", ALICE, 0.0)  # keep-alive
    assert bob.malformed == 1


def test_proxy_with_record_route_and_407() -> None:
    alice = UserAgent(ALICE, user="alice", username="alice", password="secret",
                      rng=random.Random(4))
    bob = UserAgent(BOB, user="bob", rng=random.Random(5))
    proxy = Proxy(PROXY, password="secret")
    net = Network({ALICE: alice, BOB: bob, PROXY: proxy})
    call = alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0, proxy=PROXY)
    answer_all(net, bob, BOB)
    net.run(1.0)
    assert proxy.challenged == 1 and call.state is CallState.CONFIRMED
    invites = [parse_message(d) for d in net.sent(b"INVITE")]
    assert invites[1].cseq[0] == invites[0].cseq[0] + 1
    assert "Proxy-Authorization" in invites[1].headers
    assert call.dialog is not None and [str(r.uri) for r in call.dialog.route_set] == [
        "sip:192.0.2.3:5060;lr"]
    # ACK and BYE go through the proxy (Route), to bob's Contact as Request-URI.
    alice.hangup(call, net.now)
    net.run(2.0)
    forwarded = {m.method: m for m in proxy.forwarded}
    assert {"INVITE", "ACK", "BYE"} <= set(forwarded)
    assert forwarded["BYE"].uri == "sip:bob@192.0.2.2:5070"
    bob_call_ended = [e for e in net.events[BOB] if isinstance(e, CallEnded)]
    assert bob_call_ended and call.state is CallState.TERMINATED
    # And the callee's BYE goes through the proxy too (its route set is the Record-Route).
    alice2 = UserAgent(ALICE, user="alice", username="alice", password="secret",
                       rng=random.Random(6))
    bob2 = UserAgent(BOB, user="bob", rng=random.Random(7))
    proxy2 = Proxy(PROXY)
    net2 = Network({ALICE: alice2, BOB: bob2, PROXY: proxy2})
    call2 = alice2.call("sip:bob@192.0.2.2:5070", OFFER, 0.0, proxy=PROXY)
    answer_all(net2, bob2, BOB)
    net2.run(1.0)
    bob2.hangup(next(iter(bob2.calls.values())), net2.now)
    net2.run(2.0)
    assert call2.state is CallState.TERMINATED
    assert [m.method for m in proxy2.forwarded].count("BYE") == 1


def test_wrong_password_gives_up() -> None:
    alice = UserAgent(ALICE, user="alice", password="wrong", rng=random.Random(8))
    bob = UserAgent(BOB, user="bob", rng=random.Random(9))
    net = Network({ALICE: alice, BOB: bob, PROXY: Proxy(PROXY, password="secret")})
    call = alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0, proxy=PROXY)
    net.run(5.0)
    assert call.state is CallState.TERMINATED and call.end_status == 407
    assert len(net.sent(b"INVITE")) == 3  # the first, then two attempts with credentials


def test_reinvite_both_directions() -> None:
    alice, bob = make()
    net = Network({ALICE: alice, BOB: bob})
    call = alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0)
    answer_all(net, bob, BOB)
    net.run(1.0)
    new_offer = OFFER + b"a=remote-candidates:1 192.0.2.2 4000\r\n"
    alice.reinvite(call, new_offer, net.now)
    net.run(1.5, stop=lambda: any(isinstance(e, ReinviteReceived) for e in net.events[BOB]))
    received = next(e for e in net.events[BOB] if isinstance(e, ReinviteReceived))
    assert received.offer == new_offer
    bob.accept_reinvite(received.call, ANSWER + b"a=sendrecv\r\n", net.now)
    net.run(2.0)
    answered = [e for e in net.events[ALICE] if isinstance(e, ReinviteAnswered)]
    assert answered and answered[0].answer.endswith(b"a=sendrecv\r\n")
    invites = [parse_message(d) for d in net.sent(b"INVITE")]
    assert isinstance(invites[1], SipRequest) and invites[1].cseq == (2, "INVITE")
    assert invites[1].to_address.tag is not None
    # Now bob re-INVITEs alice.
    bob.reinvite(received.call, ANSWER, net.now)
    net.run(2.5, stop=lambda: any(isinstance(e, ReinviteReceived)
                                  for e in net.events.get(ALICE, [])))
    alice.accept_reinvite(call, OFFER, net.now)
    net.run(3.0)
    assert any(isinstance(e, ReinviteAnswered) for e in net.events[BOB])
    assert call.state is CallState.CONFIRMED


def test_no_ack_for_our_200_ends_with_bye() -> None:
    alice, bob = make(timers=Timers(t1=0.05))
    bob.timers = Timers(t1=0.05)
    net = Network({ALICE: alice, BOB: bob},
                  drop=lambda d, s, t: d.startswith(b"ACK"))
    alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0)
    answer_all(net, bob, BOB)
    net.run(10.0)
    bob_call = next(e.call for e in net.events[BOB] if isinstance(e, IncomingCall))
    assert bob_call.state is CallState.TERMINATED and bob_call.end_reason == "no ACK"
    assert len(net.sent(b"BYE")) >= 1
    assert any(isinstance(e, CallProgress) for e in net.events[ALICE])
    assert any(isinstance(e, CallAnswered) for e in net.events[ALICE])


def test_over_tcp_nothing_is_retransmitted() -> None:
    alice = UserAgent(ALICE, user="alice", transport="TCP", rng=random.Random(10))
    bob = UserAgent(BOB, user="bob", transport="TCP", rng=random.Random(11))
    net = Network({ALICE: alice, BOB: bob}, delay=2.0)  # slower than T1: UDP would retransmit
    call = alice.call("sip:bob@192.0.2.2:5070;transport=tcp", OFFER, 0.0)
    answer_all(net, bob, BOB)
    net.run(20.0)
    assert call.state is CallState.CONFIRMED
    assert len(net.sent(b"INVITE")) == 1 and len(net.sent(b"SIP/2.0 200")) == 1
    invite = parse_message(net.sent(b"INVITE")[0])
    assert invite.top_via.transport == "TCP" and "transport=tcp" in (
        invite.headers.get("Contact") or "")
    assert alice.public_address is None  # rport over TCP is an ephemeral port: not learned


def test_unacceptable_reinvite_is_refused_and_the_call_goes_on() -> None:
    alice, bob = make()
    net = Network({ALICE: alice, BOB: bob})
    call = alice.call("sip:bob@192.0.2.2:5070", OFFER, 0.0)
    answer_all(net, bob, BOB)
    net.run(1.0)
    alice.reinvite(call, b"garbage", net.now)
    net.run(1.5, stop=lambda: any(isinstance(e, ReinviteReceived) for e in net.events[BOB]))
    received = next(e for e in net.events[BOB] if isinstance(e, ReinviteReceived))
    bob.reject_reinvite(received.call, net.now)
    net.run(2.0)
    assert any(type(e).__name__ == "ReinviteFailed" and e.status == 488  # type: ignore[attr-defined]
               for e in net.events[ALICE])
    assert call.state is CallState.CONFIRMED and received.call.state is CallState.CONFIRMED
