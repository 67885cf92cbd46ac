"""SIP message parsing and serialization (RFC 3261 section 7, RFC 4475-style oddities)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icerelay.sip.errors import SipError
from icerelay.sip.message import (
    Headers,
    NameAddress,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    make_response,
    parse_message,
    split_list,
    stream_frame_length,
)

INVITE = (
    b"INVITE sip:bob@192.0.2.4:5070;transport=udp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1, SIP/2.0/UDP [2001:db8::1]:5062;branch=x\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@example.com>\r\n'
    b"f: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    b"i: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1>\r\n"
    b"Subject: folded\r\n  continuation\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n\r\nv=0\nEXTRA"
)


def test_parse_request_with_compact_forms_folding_and_lists() -> None:
    message = parse_message(INVITE)
    assert isinstance(message, SipRequest)
    assert message.method == "INVITE"
    assert message.request_uri == SipUri("192.0.2.4", "bob", 5070,
                                         params=(("transport", "udp"),))
    assert message.call_id == "a84b4c76e66710@pc33.example.com"
    assert message.cseq == (314159, "INVITE")
    assert message.from_address.tag == "1928301774"
    assert message.to_address.display_name == "Bob" and message.to_address.tag is None
    assert [v.host for v in message.vias] == ["192.0.2.1", "proxy.example.com", "2001:db8::1"]
    assert message.vias[2].port == 5062
    assert message.top_via.branch == "z9hG4bK776asdhds" and message.top_via.has_param("rport")
    assert message.headers.get("subject") == "folded continuation"
    assert message.body == b"v=0\n"  # Content-Length wins over trailing bytes
    assert message.content_type == "application/sdp"


def test_serialize_round_trip_and_content_length() -> None:
    message = parse_message(INVITE)
    data = message.to_bytes()
    assert data.startswith(b"INVITE sip:bob@192.0.2.4:5070;transport=udp SIP/2.0\r\n")
    assert b"From: Alice" in data and b"Content-Length: 4\r\n\r\nv=0\n" in data
    again = parse_message(data)
    assert again.headers.values("Via") == message.headers.values("Via")
    assert again.body == message.body


def test_bare_lf_and_missing_content_length() -> None:
    message = parse_message(b"\r\nSIP/2.0 180 Ringing\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\n"
                            b"CSeq: 1 INVITE\n\nbody")
    assert isinstance(message, SipResponse)
    assert message.status == 180 and message.reason == "Ringing" and message.body == b"body"


@pytest.mark.parametrize("data", [
    b"", b"\r\n\r\n", b"HELLO\r\n\r\n", b"SIP/2.0 99 Low\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nshort",
    b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n",
    b"INVITE sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n",
])
def test_malformed_raises_sip_error(data: bytes) -> None:
    with pytest.raises(SipError):
        parse_message(data)


def test_missing_headers_raise_on_access() -> None:
    message = parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: x\r\n\r\n")
    with pytest.raises(SipError):
        _ = message.call_id
    with pytest.raises(SipError):
        _ = message.cseq
    with pytest.raises(SipError):
        _ = message.top_via


@given(st.binary(max_size=300))
def test_parser_raises_only_sip_error(data: bytes) -> None:
    with contextlib.suppress(SipError):
        parse_message(data)


def test_uris() -> None:
    uri = SipUri.parse("sips:alice:secret@[2001:db8::5]:5061;lr;maddr=10.0.0.1?subject=x")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips", "alice", "secret", "2001:db8::5", 5061)
    assert uri.has_param("lr") and uri.param("maddr") == "10.0.0.1"
    assert str(uri) == "sips:alice:secret@[2001:db8::5]:5061;lr;maddr=10.0.0.1?subject=x"
    assert SipUri.parse("sip:example.com").user is None
    for bad in ("http://x", "sip:", "sip:a@b:99999"):
        with pytest.raises(SipError):
            SipUri.parse(bad)


def test_name_addresses() -> None:
    address = NameAddress.parse('"A, B" <sip:a@b;transport=tcp>;tag=9;x')
    assert address.display_name == "A, B" and address.tag == "9"
    assert address.uri.transport == "tcp"
    bare = NameAddress.parse("sip:a@b;tag=5")  # without <>, the params are the header's
    assert bare.tag == "5" and bare.uri.params == ()
    assert str(bare.with_tag("6")) == "<sip:a@b>;tag=6"
    assert split_list('"x,y" <sip:a@b>, <sip:c@d;p=1,2>') == ['"x,y" <sip:a@b>',
                                                             "<sip:c@d;p=1,2>"]


def test_via_response_address_rfc3581() -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport=40000;received=192.0.2.9")
    assert via.response_address() == ("192.0.2.9", 40000)
    assert Via.parse("SIP/2.0/UDP host").response_address() == ("host", 5060)
    assert str(Via.parse("SIP/2.0/udp [::1]:5070;branch=b")) == "SIP/2.0/UDP [::1]:5070;branch=b"
    with pytest.raises(SipError):
        Via.parse("HTTP/1.1/TCP x")


def test_headers_operations() -> None:
    headers = Headers([("v", "a, b"), ("Route", "<sip:r1;lr>"), ("Route", "<sip:r2;lr>")])
    assert headers.values("via") == ["a", "b"]
    headers.replace_first_value("Via", "z")
    assert headers.values("Via") == ["z", "b"]
    assert headers.pop_first_value("Route") == "<sip:r1;lr>"
    assert headers.values("Route") == ["<sip:r2;lr>"]
    headers.set("X-Test", "1")
    headers.set("x-test", "2")
    assert headers.get_all("X-Test") == ["2"] and "x-test" in headers


def test_make_response_copies_and_tags() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, SipRequest)
    response = make_response(request, 180, to_tag="abc")
    assert response.to_address.tag == "abc"
    assert response.headers.values("Via") == request.headers.values("Via")
    assert response.cseq == (314159, "INVITE") and response.reason == "Ringing"
    assert make_response(request, 100, to_tag="abc").to_address.tag is None


def test_stream_framing() -> None:
    data = parse_message(INVITE).to_bytes()
    assert stream_frame_length(b"\r\n" + data + b"INVITE") == len(data) + 2
    assert stream_frame_length(data[:-1]) is None
    assert stream_frame_length(data[:20]) is None
