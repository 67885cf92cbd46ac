"""SIP parsers raise only SipError, and sip.conf reading never raises (issue 10's fuzz corpus)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from icerelay.sip.errors import SipError
from icerelay.sip.message import NameAddress, SipUri, Via, parse_message
from icerelay.sip.sipconf import parse_sip_conf

HUGE = "9" * 5000
PORTS = st.one_of(
    st.text(alphabet="0123456789²³٣\uff10-+_", max_size=8),
    st.just(HUGE),
    st.text(max_size=8),
)


@given(PORTS)
@example(HUGE)
@example("50³0")
@example("٣")
def test_sip_uri_port(port: str) -> None:
    try:
        uri = SipUri.parse(f"sip:alice@192.0.2.1:{port}")
    except SipError:
        return
    assert uri.port is None or 0 < uri.port < 65536


@given(PORTS)
@example(HUGE)
@example("50³0")
def test_contact_port(port: str) -> None:
    with contextlib.suppress(SipError):
        NameAddress.parse(f"<sip:alice@192.0.2.1:{port}>;expires=60")


@given(PORTS)
@example("50³0")
@example(HUGE)
@example("٣")
def test_via_rport_is_a_port_or_none(rport: str) -> None:
    via = Via.parse(f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport={rport}")
    value = via.rport
    # The parameter's value is what comes before the next ';', stripped.
    head = rport.split(";")[0].strip()
    assert value is None or (head.isascii() and head.isdigit() and int(head) == value)
    assert value is None or 0 < value < 65536


@given(PORTS)
@example(HUGE)
@example("٣")
def test_via_sent_by_port(port: str) -> None:
    try:
        via = Via.parse(f"SIP/2.0/UDP 192.0.2.1:{port};branch=z9hG4bK1")
    except SipError:
        return
    head = port.split(";")[0].strip()
    assert via.port is None or (head.isascii() and int(head) == via.port)
    assert via.port is None or 0 < via.port < 65536


@pytest.mark.parametrize("port", [HUGE, "50³0", "٣", "+5060", "5_060"])
def test_message_with_hostile_numbers(port: str) -> None:
    message = (
        "INVITE sip:bob@192.0.2.2 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;rport={port}\r\n"
        "From: <sip:a@192.0.2.1>;tag=1\r\nTo: <sip:b@192.0.2.2>\r\nCall-ID: c\r\n"
        f"CSeq: {port} INVITE\r\nContact: <sip:a@192.0.2.1:{port}>\r\n"
        f"Content-Length: {port}\r\n\r\n"
    ).encode()
    try:
        parsed = parse_message(message)
    except SipError:
        return
    with pytest.raises(SipError):
        _ = parsed.contact


@given(PORTS)
@example("²")
@example("٣")
@example(HUGE)
def test_sipconf_port_falls_back_to_5060(port: str) -> None:
    conf = parse_sip_conf(f"[peer]\ntype=friend\nhost=192.0.2.1\nport={port}\n")
    peer = conf.peers["peer"]
    assert 0 < peer.port < 65536
    # The file is read line by line (str.splitlines: '\x1e' and '\x85' end lines too) and
    # ';' starts a comment: what the parser sees of the value is the first line, before ';'.
    lines = port.splitlines() or [""]
    seen = lines[0].split(";")[0].strip()
    if not (seen.isascii() and seen.isdigit()):
        assert peer.port == 5060


FIELDS = st.sampled_from(
    ["Via", "From", "To", "Contact", "CSeq", "Content-Length", "Call-ID", "Record-Route"]
)
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "SIP/2.0/UDP 192.0.2.1:٣;rport=50³0",
            f"<sip:a@192.0.2.1:{HUGE}>",
            f"{HUGE} INVITE",
            "SIP/2.0/UDP [2001:db8::1]:²;branch=z9hG4bK",
            "<sip:a@[::1]:0>",
        ]
    ),
)


@given(st.lists(st.tuples(FIELDS, VALUES), max_size=8))
@example([("Via", "SIP/2.0/UDP 192.0.2.1;rport=50³0"), ("Contact", f"<sip:a@h:{HUGE}>")])
def test_message_headers_raise_only_sip_error(headers: list[tuple[str, str]]) -> None:
    text = "INVITE sip:bob@192.0.2.2 SIP/2.0\r\n" + "".join(
        f"{name}: {value.replace(chr(13), ' ').replace(chr(10), ' ')}\r\n"
        for name, value in headers
    )
    try:
        message = parse_message((text + "\r\n").encode())
    except SipError:
        return
    for name in ("call_id", "cseq", "from_address", "to_address", "vias", "contact",
                 "record_route", "request_uri"):
        try:
            value = getattr(message, name)
        except SipError:
            continue
        if name == "vias":
            for via in value:
                assert via.rport is None or 0 < via.rport < 65536
