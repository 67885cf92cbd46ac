"""Dialogs (RFC 3261 section 12): route sets, loose and strict routing, targets, CSeq."""

from __future__ import annotations

import pytest

from icerelay.sip.dialog import Dialog
from icerelay.sip.errors import SipError
from icerelay.sip.message import SipRequest, SipResponse, make_response, parse_message

VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnew"


def invite(record_route: str = "") -> SipRequest:
    message = parse_message(
        ("INVITE sip:bob@example.com SIP/2.0\r\n"
         "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
         "From: Alice <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n"
         "Call-ID: d1\r\nCSeq: 5 INVITE\r\nContact: <sip:alice@192.0.2.1:5060>\r\n"
         + record_route + "\r\n").encode())
    assert isinstance(message, SipRequest)
    return message


def answer(request: SipRequest, record_route: list[str], status: int = 200) -> SipResponse:
    response = make_response(request, status, to_tag="b1")
    for route in record_route:
        response.headers.add("Record-Route", route)
    response.headers.add("Contact", "<sip:bob@192.0.2.2:5070>")
    return response


def test_caller_reverses_record_route_and_uses_loose_routing() -> None:
    request = invite()
    response = answer(request, ["<sip:p2.example.com;lr>, <sip:p1.example.com;lr>"])
    dialog = Dialog.from_response(request, response)
    assert dialog.id == ("d1", "a1", "b1") and not dialog.early
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p1.example.com;lr",
                                                      "sip:p2.example.com;lr"]
    bye = dialog.create_request("BYE", via=VIA, contact=None)
    assert bye.uri == "sip:bob@192.0.2.2:5070"  # the remote target
    assert bye.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert bye.cseq == (6, "BYE") and bye.to_address.tag == "b1"
    assert str(dialog.next_destination()) == "sip:p1.example.com;lr"


def test_strict_router_gets_the_request_uri() -> None:
    request = invite()
    dialog = Dialog.from_response(request, answer(request, ["<sip:old.example.com;maddr=x>"]))
    bye = dialog.create_request("BYE", via=VIA, contact=None)
    assert bye.uri == "sip:old.example.com"  # maddr stripped
    assert bye.headers.get_all("Route") == ["<sip:bob@192.0.2.2:5070>"]


def test_callee_keeps_the_order_and_checks_cseq() -> None:
    request = invite("Record-Route: <sip:p1.example.com;lr>\r\n"
                     "Record-Route: <sip:p2.example.com;lr>\r\n")
    dialog = Dialog.from_request(request, "b1")
    assert [r.uri.host for r in dialog.route_set] == ["p1.example.com", "p2.example.com"]
    assert dialog.local_address.tag == "b1" and dialog.remote_address.tag == "a1"
    assert dialog.remote_target.port == 5060
    assert dialog.accept_remote_cseq(6) and dialog.accept_remote_cseq(6)
    assert not dialog.accept_remote_cseq(5)
    reinvite = dialog.create_request("INVITE", via=VIA, contact=request.contact)
    assert reinvite.headers.get("Contact") is not None and reinvite.cseq == (1, "INVITE")
    incoming_bye = parse_message(
        b"BYE sip:bob@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK2\r\n"
        b"From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b1\r\n"
        b"Call-ID: d1\r\nCSeq: 7 BYE\r\n\r\n")
    assert dialog.matches(incoming_bye)
    assert not dialog.matches(parse_message(incoming_bye.to_bytes().replace(b"tag=b1",
                                                                             b"tag=zz")))


def test_early_dialog_is_confirmed_by_the_2xx() -> None:
    request = invite()
    ringing = answer(request, ["<sip:p1.example.com;lr>"], 180)
    dialog = Dialog.from_response(request, ringing)
    assert dialog.early
    final = answer(request, ["<sip:p9.example.com;lr>"])
    final.headers.set("Contact", "<sip:bob@192.0.2.99>")
    dialog.update_from_response(final)
    assert not dialog.early and dialog.remote_target.host == "192.0.2.99"
    assert dialog.route_set[0].uri.host == "p9.example.com"


def test_dialog_needs_tags() -> None:
    request = invite()
    with pytest.raises(SipError):
        Dialog.from_response(request, make_response(request, 200))  # no To tag
    no_contact = parse_message(request.to_bytes().replace(
        b"Contact: <sip:alice@192.0.2.1:5060>\r\n", b""))
    assert isinstance(no_contact, SipRequest)
    with pytest.raises(SipError):
        Dialog.from_request(no_contact, "b1")
