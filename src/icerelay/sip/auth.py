"""HTTP Digest authentication for SIP (RFC 3261 section 22, RFC 2617, MD5 with qop=auth).

The client side answers a 401 ``WWW-Authenticate`` or 407 ``Proxy-Authenticate`` challenge with
an ``Authorization`` / ``Proxy-Authorization`` header; the server side (:func:`verify`) checks one,
which our tests use as a challenging peer. MD5 is what SIP deployments speak; RFC 8760's SHA-256
is accepted in challenges too.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from icerelay.sip.errors import SipError

if TYPE_CHECKING:
    from random import Random

_ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def parse_auth_params(text: str) -> tuple[str, dict[str, str]]:
    """``Digest a="b", c=d`` -> ("Digest", {"a": "b", "c": "d"}); names lower-cased."""
    scheme, _, rest = text.strip().partition(" ")
    params: dict[str, str] = {}
    index = 0
    while index < len(rest):
        while index < len(rest) and rest[index] in " ,\t":
            index += 1
        equals = rest.find("=", index)
        if equals < 0:
            break
        name = rest[index:equals].strip().lower()
        index = equals + 1
        while index < len(rest) and rest[index] == " ":
            index += 1
        if index < len(rest) and rest[index] == '"':
            value_chars = []
            index += 1
            while index < len(rest) and rest[index] != '"':
                if rest[index] == "\\" and index + 1 < len(rest):
                    index += 1
                value_chars.append(rest[index])
                index += 1
            index += 1
            value = "".join(value_chars)
        else:
            end = rest.find(",", index)
            end = len(rest) if end < 0 else end
            value = rest[index:end].strip()
            index = end
        params[name] = value
    return scheme, params


@dataclass(frozen=True)
class Challenge:
    """A Digest challenge from a 401/407 response."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    proxy: bool = False
    """True for Proxy-Authenticate (answer with Proxy-Authorization)."""

    @classmethod
    def parse(cls, header: str, *, proxy: bool = False) -> Challenge:
        scheme, params = parse_auth_params(header)
        if scheme.lower() != "digest":
            raise SipError(f"unsupported authentication scheme {scheme!r}")
        if "realm" not in params or "nonce" not in params:
            raise SipError("Digest challenge without realm or nonce")
        algorithm = params.get("algorithm", "MD5").upper()
        qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
        return cls(params["realm"], params["nonce"], algorithm, qop, params.get("opaque"),
                   params.get("stale", "").lower() == "true", proxy)

    @property
    def header_name(self) -> str:
        return "Proxy-Authorization" if self.proxy else "Authorization"


def _hash(algorithm: str, text: str) -> str:
    base = algorithm.removesuffix("-SESS")
    function = _ALGORITHMS.get(base)
    if function is None:
        raise SipError(f"unsupported digest algorithm {algorithm!r}")
    return function(text.encode()).hexdigest()


def digest_response(*, algorithm: str, username: str, realm: str, password: str, method: str,
                    uri: str, nonce: str, qop: str | None = None, nc: str | None = None,
                    cnonce: str | None = None) -> str:
    """The ``response`` value of RFC 2617 section 3.2.2.1 (qop ``auth`` or none)."""
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    if algorithm.endswith("-SESS"):
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop:
        return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")


def authorization(challenge: Challenge, *, username: str, password: str, method: str,
                  uri: str, rng: Random, nonce_count: int = 1, cnonce: str | None = None) -> str:
    """The Authorization (or Proxy-Authorization) header value answering ``challenge``;
    the client nonce comes from ``rng`` unless ``cnonce`` is given."""
    if challenge.qop and "auth" not in challenge.qop:
        raise SipError(f"no supported qop in {challenge.qop}")
    qop = "auth" if challenge.qop else None
    nc = f"{nonce_count:08x}"
    cnonce = cnonce or rng.randbytes(8).hex()
    response = digest_response(algorithm=challenge.algorithm, username=username,
                               realm=challenge.realm, password=password, method=method, uri=uri,
                               nonce=challenge.nonce, qop=qop, nc=nc, cnonce=cnonce)
    parts = [f'username="{username}"', f'realm="{challenge.realm}"',
             f'nonce="{challenge.nonce}"', f'uri="{uri}"', f'response="{response}"',
             f"algorithm={challenge.algorithm}"]
    if qop:
        parts += [f'cnonce="{cnonce}"', f"qop={qop}", f"nc={nc}"]
    if challenge.opaque is not None:
        parts.append(f'opaque="{challenge.opaque}"')
    return "Digest " + ", ".join(parts)


def verify(header: str, *, password: str, method: str, realm: str | None = None,
           nonce: str | None = None) -> bool:
    """Check an Authorization header (server side); constant-time comparison."""
    try:
        scheme, params = parse_auth_params(header)
    except (ValueError, IndexError):
        return False
    if scheme.lower() != "digest":
        return False
    try:
        if realm is not None and params.get("realm") != realm:
            return False
        if nonce is not None and params.get("nonce") != nonce:
            return False
        expected = digest_response(
            algorithm=params.get("algorithm", "MD5").upper(), username=params["username"],
            realm=params["realm"], password=password, method=method, uri=params["uri"],
            nonce=params["nonce"], qop=params.get("qop"), nc=params.get("nc"),
            cnonce=params.get("cnonce"))
    except (KeyError, SipError):
        return False
    return hmac.compare_digest(expected, params.get("response", ""))
