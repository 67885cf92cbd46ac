"""Digest authentication: RFC 2617's worked example and the SIP header round trip."""

from __future__ import annotations

import random

import pytest

from icerelay.sip.auth import Challenge, authorization, digest_response, parse_auth_params, verify
from icerelay.sip.errors import SipError


def test_rfc2617_example() -> None:
    assert digest_response(
        algorithm="MD5", username="Mufasa", realm="testrealm@host.com", password="Circle Of Life",
        method="GET", uri="/dir/index.html", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth", nc="00000001", cnonce="0a4f113b",
    ) == "6629fae49393a05397450978507c4ef1"


def test_challenge_parse() -> None:
    challenge = Challenge.parse(
        'Digest realm="asterisk", nonce="4d2c", qop="auth,auth-int", opaque="x\\"y", stale=TRUE',
        proxy=True)
    assert challenge.realm == "asterisk" and challenge.qop == ("auth", "auth-int")
    assert challenge.opaque == 'x"y' and challenge.stale and challenge.algorithm == "MD5"
    assert challenge.header_name == "Proxy-Authorization"
    with pytest.raises(SipError):
        Challenge.parse('Basic realm="x"')
    with pytest.raises(SipError):
        Challenge.parse('Digest realm="x"')


@pytest.mark.parametrize("qop", ["auth", None])
def test_authorization_verifies(qop: str | None) -> None:
    header = 'Digest realm="r", nonce="n1"' + (f', qop="{qop}"' if qop else "") + ', opaque="o"'
    value = authorization(Challenge.parse(header), username="alice", password="pw",
                          method="INVITE", uri="sip:bob@example.com", cnonce="c1",
                          rng=random.Random(1))
    scheme, params = parse_auth_params(value)
    assert scheme == "Digest" and params["uri"] == "sip:bob@example.com"
    assert params.get("qop") == qop and params["opaque"] == "o"
    assert verify(value, password="pw", method="INVITE", realm="r", nonce="n1")
    assert not verify(value, password="wrong", method="INVITE")
    assert not verify(value, password="pw", method="BYE")
    assert not verify(value, password="pw", method="INVITE", nonce="other")
    assert not verify("Basic abc", password="pw", method="INVITE")


def test_unsupported_qop_and_algorithm() -> None:
    with pytest.raises(SipError):
        authorization(Challenge.parse('Digest realm="r", nonce="n", qop="auth-int"'),
                      username="a", password="b", method="INVITE", uri="sip:x",
                      rng=random.Random(1))
    with pytest.raises(SipError):
        authorization(Challenge.parse('Digest realm="r", nonce="n", algorithm=SHA-512-256'),
                      username="a", password="b", method="INVITE", uri="sip:x",
                      rng=random.Random(1))
