"""Long-term credential authentication for the TURN server (RFC 8489 §9.2, RFC 8656 §5).

Two sources of users, usable together:

- static users (name → password), as in coturn's ``user=name:password``;
- TURN REST API shared secrets (coturn's ``use-auth-secret``): the username is
  ``"<expiry unix time>:<user>"`` and the password ``base64(HMAC-SHA1(secret, username))``
  (:mod:`icerelay.turn.credentials`). Expired timestamps are refused. Several secrets may be
  configured so that one can be rotated without downtime.

Nonces are stateless: ``cookie || base64url(expiry || HMAC-SHA256(server key, expiry ||
transport || client address)[:12])``. The server keeps nothing per client, a nonce cannot be
replayed from another address or transport (the MAC would not match) and it expires (438 Stale
Nonce, with a fresh one). The cookie is RFC 8489's ``obMatJos2`` + security features: when SHA-256
is enabled the server offers PASSWORD-ALGORITHMS (SHA-256, MD5), and USERHASH (username anonymity)
when no REST API secret is configured (a REST username's hash cannot be mapped back to it).

Every secret comparison is constant-time (:func:`hmac.compare_digest`, and
:meth:`Message.check_integrity`); an unknown username costs the same HMAC as a known one, so
timing does not tell which usernames exist.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from icerelay.errors import StunError, TurnError
from icerelay.stun import AttributeType, Message, PasswordAlgorithm, PasswordAlgorithmEntry
from icerelay.stun.constants import SecurityFeature
from icerelay.stun.credentials import long_term_key, userhash
from icerelay.stun.nonce import make_nonce, nonce_opaque_part, nonce_security_features
from icerelay.turn.credentials import SEPARATOR, rest_api_expiry, rest_api_password

if TYPE_CHECKING:
    from random import Random

A = AttributeType
_EXPIRY = struct.Struct("!Q")
_MAC_LENGTH = 12
#: The PASSWORD-ALGORITHMS this server offers, most preferred first (RFC 8489 §14.11). The list
#: must be identical in every response, since a client echoes it to detect a bid-down attack.
OFFERED_ALGORITHMS = (
    PasswordAlgorithmEntry(PasswordAlgorithm.SHA256),
    PasswordAlgorithmEntry(PasswordAlgorithm.MD5),
)
_DUMMY_KEY = b"\x00" * 16


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who sent an authenticated request, and the key that protects the answer."""

    #: The USERNAME as sent (or the name a USERHASH stands for).
    username: str
    #: Whom quotas are counted against: a REST API username without its timestamp.
    quota_user: str
    key: bytes
    #: Which MESSAGE-INTEGRITY the request used; the response uses the same.
    integrity: Literal["sha1", "sha256"]
    #: Whether the request identified the user by USERHASH (then answers do the same).
    by_userhash: bool = False


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a request was refused: 400, 401 or 438 (the last two carry a fresh nonce)."""

    code: int
    reason: str


class Authenticator:
    """Checks long-term credentials and mints nonces; holds no per-client state."""

    def __init__(
        self,
        realm: str,
        users: dict[str, str],
        secrets: list[str],
        *,
        nonce_lifetime: float = 600.0,
        sha256: bool = True,
        rng: Random,
        nonce_key: bytes | None = None,
    ) -> None:
        self.realm = realm
        self.nonce_lifetime = nonce_lifetime
        self._sha256 = sha256
        # A fresh key per process: nonces from a previous run are simply stale (438). Workers
        # of one server share a key (*nonce_key*) so a nonce is good whichever one answers.
        self._nonce_key = nonce_key or rng.randbytes(32)
        self._configured = (dict(users), list(secrets))
        self._keys: dict[tuple[str, int], bytes] = {}
        self._by_userhash: dict[bytes, str] = {}
        self._passwords: dict[str, str] = {}
        self._load(users, secrets)

    def update_users(self, users: dict[str, str], secrets: list[str]) -> None:
        """Users and REST API secrets from outside the configuration (a cluster's Redis
        directory) beside the configured ones, which win on a name clash; replaces the
        previous update. Keys are derived again only for users whose password changed."""
        configured_users, configured_secrets = self._configured
        merged = {**users, **configured_users}
        extra = [secret for secret in secrets if secret not in configured_secrets]
        self._load(merged, configured_secrets + extra)

    def _load(self, users: dict[str, str], secrets: list[str]) -> None:
        realm = self.realm
        self.secrets = [secret.encode("utf-8") for secret in secrets]
        self.features = SecurityFeature(0)
        if self._sha256:
            self.features |= SecurityFeature.PASSWORD_ALGORITHMS
            # USERHASH only works for names the server can list in advance: a REST API username
            # is computed by the web service, so its hash cannot be mapped back. Offering
            # anonymity with secrets configured would make RFC 8489 clients fail with 401.
            if not secrets:
                self.features |= SecurityFeature.USERNAME_ANONYMITY
        for name in [name for name in self._passwords if name not in users]:
            del self._passwords[name]
            self._keys.pop((name, PasswordAlgorithm.MD5), None)
            self._keys.pop((name, PasswordAlgorithm.SHA256), None)
            self._by_userhash.pop(userhash(name, realm), None)
        for name, password in users.items():
            if self._passwords.get(name) == password:
                continue
            self._passwords[name] = password
            self._keys[(name, PasswordAlgorithm.MD5)] = long_term_key(name, realm, password)
            self._keys[(name, PasswordAlgorithm.SHA256)] = long_term_key(
                name, realm, password, PasswordAlgorithm.SHA256
            )
            self._by_userhash[userhash(name, realm)] = name

    # --- nonces -------------------------------------------------------------------------

    def _mac(self, expiry: bytes, transport: str, host: str, port: int) -> bytes:
        text = b"%s|%s|%s|%d" % (expiry, transport.encode(), host.encode(), port)
        return hmac.digest(self._nonce_key, text, "sha256")[:_MAC_LENGTH]

    def nonce(self, transport: str, client: tuple[str, int], now: float) -> str:
        """A nonce valid for *client* over *transport* for ``nonce_lifetime`` seconds."""
        expiry = _EXPIRY.pack(int(now + self.nonce_lifetime))
        mac = self._mac(expiry, transport, client[0], client[1])
        opaque = base64.urlsafe_b64encode(expiry + mac).decode("ascii").rstrip("=")
        return make_nonce(opaque, self.features)

    def nonce_valid(self, nonce: str, transport: str, client: tuple[str, int], now: float) -> bool:
        """Whether *nonce* was minted by this server for *client*/*transport* and is unexpired."""
        if self.features and nonce_security_features(nonce) != self.features:
            return False
        opaque = nonce_opaque_part(nonce)
        try:
            raw = base64.urlsafe_b64decode(opaque + "=" * (-len(opaque) % 4))
        except (binascii.Error, ValueError):
            return False
        if len(raw) != _EXPIRY.size + _MAC_LENGTH:
            return False
        expiry, mac = raw[: _EXPIRY.size], raw[_EXPIRY.size :]
        expected = self._mac(expiry, transport, client[0], client[1])
        if not hmac.compare_digest(mac, expected):
            return False
        expires: int = _EXPIRY.unpack(expiry)[0]
        return now < expires

    # --- authentication -----------------------------------------------------------------

    def _key(self, username: str, algorithm: int, wall_now: float) -> tuple[bytes, str] | None:
        """(key, quota user) for *username*, or None if it is not a valid user now."""
        key = self._keys.get((username, algorithm))
        if key is not None:
            return key, username
        if not self.secrets:
            return None
        try:
            expiry = rest_api_expiry(username)
        except TurnError:
            return None
        if expiry < wall_now:
            return None
        # With several secrets, the one that matches is found by the integrity check; here
        # the first is used and check() retries with the others.
        password = rest_api_password(self.secrets[0], username)
        try:
            key = long_term_key(username, self.realm, password, algorithm)
        except StunError:
            return None
        user = username.split(SEPARATOR, 1)[1] if SEPARATOR in username else username
        return key, user

    def check(
        self,
        message: Message,
        transport: str,
        client: tuple[str, int],
        now: float,
        wall_now: float,
    ) -> Credentials | AuthFailure:
        """Authenticate a request (RFC 8489 §9.2.4, in the RFC's order)."""
        integrity = message.integrity_algorithm
        if integrity is None:
            return AuthFailure(401, "Unauthenticated")
        username = message.get(A.USERNAME)
        hashed = message.get(A.USERHASH)
        nonce = message.get(A.NONCE)
        if (username is None and hashed is None) or message.get(A.REALM) is None or nonce is None:
            return AuthFailure(400, "Missing USERNAME, REALM or NONCE")
        algorithm = PasswordAlgorithm.MD5
        offered = message.get(A.PASSWORD_ALGORITHMS)
        chosen = message.get(A.PASSWORD_ALGORITHM)
        if self.features and (offered is not None or chosen is not None):
            # RFC 8489 §9.2.4: both present, the list unchanged (no bid-down), a choice from it.
            if (
                offered is None
                or chosen is None
                or tuple(offered) != OFFERED_ALGORITHMS
                or chosen not in OFFERED_ALGORITHMS
            ):
                return AuthFailure(400, "Bad PASSWORD-ALGORITHM(S)")
            algorithm = PasswordAlgorithm(chosen.algorithm)
        if not self.nonce_valid(nonce, transport, client, now):
            return AuthFailure(438, "Stale Nonce")
        by_userhash = False
        if username is None:
            if not self.features or hashed is None:
                return AuthFailure(401, "Unauthenticated")
            by_userhash = True
            username = self._by_userhash.get(hashed, "")
        found = self._key(username, algorithm, wall_now) if username else None
        if found is None:
            # Same work as for a real user, so response timing does not reveal user names.
            message.check_integrity(_DUMMY_KEY)
            return AuthFailure(401, "Unauthenticated")
        key, quota_user = found
        if message.check_integrity(key):
            return Credentials(username, quota_user, key, integrity, by_userhash)
        if username not in {name for name, _alg in self._keys}:
            for secret in self.secrets[1:]:
                password = rest_api_password(secret, username)
                key = long_term_key(username, self.realm, password, algorithm)
                if message.check_integrity(key):
                    return Credentials(username, quota_user, key, integrity, by_userhash)
        return AuthFailure(401, "Unauthenticated")

    def challenge_attributes(
        self, transport: str, client: tuple[str, int], now: float
    ) -> list[tuple[int, object]]:
        """REALM, NONCE (and PASSWORD-ALGORITHMS) for a 401 or 438 answer."""
        attributes: list[tuple[int, object]] = [
            (A.REALM, self.realm),
            (A.NONCE, self.nonce(transport, client, now)),
        ]
        if self.features:
            attributes.append((A.PASSWORD_ALGORITHMS, list(OFFERED_ALGORITHMS)))
        return attributes
