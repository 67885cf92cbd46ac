"""The client side of STUN long-term credentials, as TURN uses them (RFC 8489 §9.2, RFC 8656 §5).

The first request goes without credentials; the 401 brings REALM and NONCE (and, from an
RFC 8489 server, PASSWORD-ALGORITHMS and the security features hidden in the nonce). Every later
request carries USERNAME (or USERHASH), REALM, NONCE and MESSAGE-INTEGRITY with the MD5 key, or
MESSAGE-INTEGRITY-SHA256 with the SHA-256 key when the server offers it. A 438 (Stale Nonce)
brings a new nonce to retry with.
"""

from __future__ import annotations

from typing import Literal

from icerelay.errors import TurnError
from icerelay.stun import AttributeType, Message, MessageClass
from icerelay.stun.attributes import PasswordAlgorithmEntry
from icerelay.stun.constants import PasswordAlgorithm, SecurityFeature
from icerelay.stun.credentials import long_term_key, userhash
from icerelay.stun.nonce import nonce_security_features

#: A server that keeps answering 438 is broken or hostile; stop after this many in a row.
MAX_STALE_NONCE_RETRIES = 3


class LongTermCredentials:
    """Username and password, and what the server told us about using them.

    *userhash* False never sends USERHASH, even when the server offers username anonymity.
    """

    __slots__ = (
        "_userhash_refused",
        "algorithm",
        "algorithms",
        "key",
        "nonce",
        "password",
        "realm",
        "use_userhash",
        "userhash",
        "username",
    )

    def __init__(self, username: str, password: str, *, userhash: bool = True) -> None:
        self.username = username
        self.password = password
        self.userhash = userhash
        self.realm: str | None = None
        self.nonce: str | None = None
        self.key: bytes | None = None
        #: The server's PASSWORD-ALGORITHMS, echoed in every request; None from an RFC 5389 one.
        self.algorithms: list[PasswordAlgorithmEntry] | None = None
        self.algorithm = PasswordAlgorithm.MD5
        self.use_userhash = False
        self._userhash_refused = False

    @property
    def ready(self) -> bool:
        """True once a 401 gave us a realm and nonce: requests are signed from then on."""
        return self.nonce is not None

    def learn(self, message: Message) -> None:
        """Take REALM, NONCE and the offered password algorithms from a 401 (RFC 8489 §9.2.4)."""
        realm = message.get(AttributeType.REALM)
        nonce = message.get(AttributeType.NONCE)
        if not isinstance(realm, str) or not isinstance(nonce, str):
            raise TurnError("401 without REALM and NONCE")
        features = nonce_security_features(nonce) or SecurityFeature(0)
        algorithms = message.get(AttributeType.PASSWORD_ALGORITHMS)
        self.algorithms = None
        self.algorithm = PasswordAlgorithm.MD5
        if isinstance(algorithms, list) and algorithms:
            offered = {
                entry.algorithm for entry in algorithms if isinstance(entry, PasswordAlgorithmEntry)
            }
            self.algorithms = [e for e in algorithms if isinstance(e, PasswordAlgorithmEntry)]
            if PasswordAlgorithm.SHA256 in offered:
                self.algorithm = PasswordAlgorithm.SHA256
            elif PasswordAlgorithm.MD5 not in offered:
                raise TurnError("server offers no password algorithm we know (MD5, SHA-256)")
        self.use_userhash = (
            self.userhash
            and not self._userhash_refused
            and bool(features & SecurityFeature.USERNAME_ANONYMITY)
        )
        self.realm = realm
        self.nonce = nonce
        self.key = long_term_key(self.username, realm, self.password, algorithm=self.algorithm)

    def forget(self) -> None:
        """Start over unauthenticated (another server has its own realm and nonces)."""
        self.realm = self.nonce = self.key = None
        self.algorithms = None
        self.algorithm = PasswordAlgorithm.MD5
        self.use_userhash = False

    def challenge(self, message: Message, *, authenticated: bool) -> bool:
        """A 401 to an Allocate: True when the request should go again with what it taught us.

        The first 401 to an unauthenticated request is the normal challenge. A 401 to a request
        with USERHASH gets one more try naming the user in the clear: a server can only map a
        USERHASH back to users it has in a table, and TURN REST API usernames ("expiry:user")
        are computed, not stored. Any other 401 means the credentials are wrong.
        """
        if not authenticated:
            self.learn(message)
            return True
        if self.use_userhash and not self._userhash_refused:
            self._userhash_refused = True
            if isinstance(message.get(AttributeType.NONCE), str):
                self.learn(message)
            else:
                self.use_userhash = False
            return True
        return False

    def stale(self, message: Message) -> None:
        """Take the new nonce from a 438 (RFC 8489 §9.2.5); a new realm changes the key too."""
        nonce = message.get(AttributeType.NONCE)
        if not isinstance(nonce, str):
            raise TurnError("438 without NONCE")
        realm = message.get(AttributeType.REALM)
        if isinstance(realm, str) and realm != self.realm:
            self.learn(message)
        else:
            self.nonce = nonce

    def encode(self, message: Message) -> bytes:
        """*message* with credentials and integrity once we have them, and FINGERPRINT."""
        if self.nonce is None or self.realm is None or self.key is None:
            return message.encode(fingerprint=True)
        if self.use_userhash:
            message.add(AttributeType.USERHASH, userhash(self.username, self.realm))
        else:
            message.add(AttributeType.USERNAME, self.username)
        message.add(AttributeType.REALM, self.realm)
        message.add(AttributeType.NONCE, self.nonce)
        if self.algorithms is not None:
            # RFC 8489 §9.2.4: echo the server's list so it can tell that no one in the middle
            # struck SHA-256 from it (bid-down protection), and name the one we chose.
            message.add(AttributeType.PASSWORD_ALGORITHMS, self.algorithms)
            message.add(AttributeType.PASSWORD_ALGORITHM, PasswordAlgorithmEntry(self.algorithm))
        integrity: Literal["sha1", "sha256"] = (
            "sha256" if self.algorithm == PasswordAlgorithm.SHA256 else "sha1"
        )
        return message.encode(integrity_key=self.key, integrity=integrity, fingerprint=True)

    def authentic(self, message: Message, *, authenticated: bool) -> bool:
        """RFC 8489 §9.2.5: answers to authenticated requests must carry a valid integrity
        attribute, except the errors a server sends before it can check credentials."""
        if not authenticated or self.key is None:
            return True
        has_integrity = (
            message.get(AttributeType.MESSAGE_INTEGRITY) is not None
            or message.get(AttributeType.MESSAGE_INTEGRITY_SHA256) is not None
        )
        if not has_integrity:
            # 400/401/420/438 are sent without integrity by design; other errors may lack it
            # too (coturn signs them, others don't). An off-path attacker would still have to
            # guess the 96-bit transaction id to forge one. A success must be signed.
            return message.message_class is not MessageClass.SUCCESS_RESPONSE
        return message.check_integrity(self.key)
