"""Long-term credential authentication for the TURN server (RFC 8489 §9.2, RFC 8656 §5).

Two sources of users, usable together:

- static users (name → password), as in coturn's ``user=name:password``;
- TURN REST API shared secrets (coturn's ``use-auth-secret``): the username is
  ``"<expiry unix time>:<user>"`` and the password ``base64(HMAC-SHA1(secret, username))``
  (:mod:`icerelay.turn.credentials`). Expired timestamps are refused. Several secrets may be
  configured so that one can be rotated without downtime.

Nonces are stateless: ``cookie || hex(expiry || MAC(server key, expiry || transport || client
address))``, the MAC being keyed BLAKE2s (RFC 7693) cut to 96 bits. The server keeps
nothing per client, a nonce cannot be replayed from another address or transport (the MAC would
not match) and it expires (438 Stale Nonce, with a fresh one). The cookie is RFC 8489's
``obMatJos2`` + security features: when SHA-256 is enabled the server offers
PASSWORD-ALGORITHMS (SHA-256, MD5), and USERHASH (username anonymity) when no REST API secret
is configured (a REST username's hash cannot be mapped back to it).

Every secret comparison is constant-time (:func:`hmac.compare_digest`, and
:meth:`Message.check_integrity`); an unknown username costs the same HMAC as a known one, so
timing does not tell which usernames exist.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from icerelay.errors import StunError, TurnError
from icerelay.stun import (
    AttributeType,
    ErrorCode,
    Message,
    PasswordAlgorithm,
    PasswordAlgorithmEntry,
)
from icerelay.stun.constants import SecurityFeature
from icerelay.stun.credentials import long_term_key, userhash
from icerelay.stun.message import encode_attributes
from icerelay.stun.nonce import make_nonce
from icerelay.turn.credentials import SEPARATOR, rest_api_expiry, rest_api_password

if TYPE_CHECKING:
    from random import Random

A = AttributeType
_EXPIRY = struct.Struct("!Q")
_MAC_LENGTH = 12
#: The nonce's opaque part: expiry and MAC, in hex.
_OPAQUE_LENGTH = 2 * (_EXPIRY.size + _MAC_LENGTH)
_NONCE_HEADER = struct.Struct("!HH")
#: Dummy magic cookie and transaction id for encoding the challenge's fixed attributes (none of
#: them is an XOR address, so these bytes do not appear in the result).
_NO_IDS = bytes(16)
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


_UNAUTHENTICATED = AuthFailure(401, "Unauthenticated")
_MISSING = AuthFailure(400, "Missing USERNAME, REALM or NONCE")
_BAD_ALGORITHMS = AuthFailure(400, "Bad PASSWORD-ALGORITHM(S)")
_STALE = AuthFailure(438, "Stale Nonce")


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
        nonce_key = nonce_key or rng.randbytes(32)
        if len(nonce_key) > hashlib.blake2s.MAX_KEY_SIZE:
            nonce_key = hashlib.blake2s(nonce_key).digest()
        # Keyed once; each nonce costs a copy of this state and one compression.
        self._mac_state = hashlib.blake2s(key=nonce_key, digest_size=_MAC_LENGTH)
        self._configured = (dict(users), list(secrets))
        self._keys: dict[tuple[str, int], bytes] = {}
        self._by_userhash: dict[bytes, str] = {}
        self._passwords: dict[str, str] = {}
        #: Credentials of static users, made once: (name, algorithm, integrity, by hash) ->.
        self._credentials: dict[tuple[str, int, str, bool], Credentials] = {}
        #: ERROR-CODE and REALM of a 401/438 answer, encoded, by (code, reason).
        self._challenge_heads: dict[tuple[int, str], bytes] = {}
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
        #: Every nonce starts with this (the RFC 8489 cookie, when there are features).
        self._nonce_prefix = make_nonce("", self.features)
        self._challenge_tail = (
            encode_attributes([(A.PASSWORD_ALGORITHMS, list(OFFERED_ALGORITHMS))], _NO_IDS)
            if self.features
            else b""
        )
        self._credentials.clear()
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

    def _mac(self, expiry: int, transport: str, host: str, port: int) -> bytes:
        state = self._mac_state.copy()
        state.update(f"{expiry}|{transport}|{host}|{port}".encode())
        return state.digest()

    def nonce(self, transport: str, client: tuple[str, int], now: float) -> str:
        """A nonce valid for *client* over *transport* for ``nonce_lifetime`` seconds."""
        expiry = int(now + self.nonce_lifetime)
        mac = self._mac(expiry, transport, client[0], client[1])
        return f"{self._nonce_prefix}{expiry:016x}{mac.hex()}"

    def nonce_valid(self, nonce: str, transport: str, client: tuple[str, int], now: float) -> bool:
        """Whether *nonce* was minted by this server for *client*/*transport* and is unexpired."""
        prefix = self._nonce_prefix
        # The cookie carries the features (RFC 8489 §9.2): a changed one is a bid-down attempt.
        if len(nonce) != len(prefix) + _OPAQUE_LENGTH or not nonce.startswith(prefix):
            return False
        try:
            raw = bytes.fromhex(nonce[len(prefix) :])
        except ValueError:
            return False
        if len(raw) != _EXPIRY.size + _MAC_LENGTH:
            return False  # fromhex skips spaces
        expires: int = _EXPIRY.unpack_from(raw)[0]
        expected = self._mac(expires, transport, client[0], client[1])
        return hmac.compare_digest(raw[_EXPIRY.size :], expected) and now < expires

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
        values: dict[int, Any] | None = None,
    ) -> Credentials | AuthFailure:
        """Authenticate a request (RFC 8489 §9.2.4, in the RFC's order).

        *values*: the message's attributes as a dict of each type's first value, if the
        caller has made it already.
        """
        integrity = message.integrity_algorithm
        if integrity is None:
            return _UNAUTHENTICATED
        if values is None:
            values = dict(reversed(message.attributes))
        get = values.get
        username = get(A.USERNAME)
        hashed = get(A.USERHASH)
        nonce = get(A.NONCE)
        if (username is None and hashed is None) or get(A.REALM) is None or nonce is None:
            return _MISSING
        algorithm = PasswordAlgorithm.MD5
        if self.features and (A.PASSWORD_ALGORITHMS in values or A.PASSWORD_ALGORITHM in values):
            offered = get(A.PASSWORD_ALGORITHMS)
            chosen = get(A.PASSWORD_ALGORITHM)
            # RFC 8489 §9.2.4: both present, the list unchanged (no bid-down), a choice from it.
            if (
                offered is None
                or chosen is None
                or tuple(offered) != OFFERED_ALGORITHMS
                or chosen not in OFFERED_ALGORITHMS
            ):
                return _BAD_ALGORITHMS
            algorithm = PasswordAlgorithm(chosen.algorithm)
        if not self.nonce_valid(nonce, transport, client, now):
            return _STALE
        by_userhash = False
        if username is None:
            if not self.features or hashed is None:
                return _UNAUTHENTICATED
            by_userhash = True
            username = self._by_userhash.get(hashed, "")
        key = self._keys.get((username, algorithm))
        if key is not None:
            # A static user (the common case): no REST API parsing, and the same Credentials.
            if not message.check_integrity(key):
                return _UNAUTHENTICATED
            known = (username, algorithm, integrity, by_userhash)
            credentials = self._credentials.get(known)
            if credentials is None:
                credentials = Credentials(username, username, key, integrity, by_userhash)
                self._credentials[known] = credentials
            return credentials
        found = self._key(username, algorithm, wall_now) if username else None
        if found is None:
            # Same work as for a real user, so response timing does not reveal user names.
            message.check_integrity(_DUMMY_KEY)
            return _UNAUTHENTICATED
        key, quota_user = found
        if message.check_integrity(key):
            return Credentials(username, quota_user, key, integrity, by_userhash)
        if username not in {name for name, _alg in self._keys}:
            for secret in self.secrets[1:]:
                password = rest_api_password(secret, username)
                key = long_term_key(username, self.realm, password, algorithm)
                if message.check_integrity(key):
                    return Credentials(username, quota_user, key, integrity, by_userhash)
        return _UNAUTHENTICATED

    def challenge(
        self, code: int, reason: str, transport: str, client: tuple[str, int], now: float
    ) -> bytes:
        """The attributes of a 401 or 438 answer, encoded: ERROR-CODE (*code*, *reason*),
        REALM, a fresh NONCE (and PASSWORD-ALGORITHMS). Only the nonce differs between
        answers, so the rest is encoded once."""
        head = self._challenge_heads.get((code, reason))
        if head is None:
            if len(self._challenge_heads) > 16:
                self._challenge_heads.clear()  # reasons are the server's own: a few at most
            head = encode_attributes(
                [(A.ERROR_CODE, ErrorCode(code, reason)), (A.REALM, self.realm)], _NO_IDS
            )
            self._challenge_heads[(code, reason)] = head
        nonce = self.nonce(transport, client, now).encode()
        size = len(nonce)
        return b"".join(
            (
                head,
                _NONCE_HEADER.pack(A.NONCE, size),
                nonce,
                b"\x00" * (-size & 3),
                self._challenge_tail,
            )
        )
