"""TURN REST API ephemeral credentials (draft-uberti-behave-turn-rest; coturn's use-auth-secret).

A web service that knows a secret shared with the TURN server hands out short-lived credentials
without telling the server: the username is ``"<expiry unix time>:<user>"`` and the password is
``base64(HMAC-SHA1(secret, username))``. The server recomputes the password from the username, so
it needs no user database, and refuses usernames whose timestamp has passed.

Both sides use this module: the client to build credentials, the server to check them.

Example::

    username, password = rest_api_credentials("north", "alice", ttl=86400, now=time.time())
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from icerelay.errors import TurnError
from icerelay.numbers import parse_uint

#: coturn and the draft separate the timestamp from the user id with this character.
SEPARATOR = ":"


def rest_api_username(user: str, ttl: float, now: float) -> str:
    """The username for *user* that stays valid *ttl* seconds after *now* (Unix time).

    An empty *user* gives a bare timestamp, which coturn accepts too.
    """
    expiry = int(now + ttl)
    return f"{expiry}{SEPARATOR}{user}" if user else str(expiry)


def rest_api_password(secret: str | bytes, username: str) -> str:
    """The password that goes with *username*: base64 of HMAC-SHA1 keyed with the shared secret."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    digest = hmac.new(key, username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def rest_api_credentials(secret: str | bytes, user: str, ttl: float, now: float) -> tuple[str, str]:
    """A (username, password) pair valid for *ttl* seconds from *now*."""
    username = rest_api_username(user, ttl, now)
    return username, rest_api_password(secret, username)


def rest_api_expiry(username: str) -> int:
    """The expiry timestamp written in a REST API *username*.

    Raises :class:`TurnError` when the username does not start with a decimal timestamp: a
    server treats that as "not a REST API credential" and refuses it.
    """
    head = username.split(SEPARATOR, 1)[0]
    # isdecimal() alone would accept non-ASCII digits, which int() then parses: refuse them,
    # since coturn reads only ASCII digits and both sides must agree on the expiry.
    # Bounded too: int() of thousands of digits raises ValueError, not TurnError.
    expiry = parse_uint(head)
    if expiry is None:
        raise TurnError(f"REST API username has no timestamp: {username[:80]!r}")
    return expiry


def rest_api_username_expired(username: str, now: float) -> bool:
    """True when *username*'s timestamp is in the past (or it has none)."""
    try:
        return rest_api_expiry(username) < now
    except TurnError:
        return True


def rest_api_password_matches(secret: str | bytes, username: str, password: str) -> bool:
    """Constant-time check that *password* is the one the secret gives for *username*."""
    expected = rest_api_password(secret, username).encode("ascii")
    return hmac.compare_digest(expected, password.encode("utf-8", "replace"))
