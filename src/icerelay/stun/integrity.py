"""HMAC for MESSAGE-INTEGRITY (HMAC-SHA1) and MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.5-14.6),
with the key's part of the work done once per key.

HMAC (RFC 2104) is ``H((K ^ opad) || H((K ^ ipad) || text))``: the two padded keys are each
exactly one hash block, so the hash states after absorbing them depend on the key alone. A STUN
agent uses the same few keys over and over (a TURN user's long-term key, an ICE session's
password), so :func:`keyed` keeps those two states per key and every message costs only copies
of them, the text and one more block. ``hmac.digest`` starts from the key every time, which
costs about twice as many instructions for a STUN-sized message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

__all__ = ["KeyedHmac", "hmac_sha1", "hmac_sha256", "keyed"]

_BLOCK = 64  # SHA-1 and SHA-256 both hash 64-byte blocks
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
#: Enough for every user of a busy server and every ICE session; more keys only evict.
_CACHE_SIZE = 1024


class KeyedHmac:
    """HMAC-SHA1 and HMAC-SHA256 with one key, its padded-key hash states precomputed."""

    __slots__ = ("_inner1", "_inner256", "_outer1", "_outer256")

    def __init__(self, key: bytes) -> None:
        self._inner1, self._outer1 = self._states(hashlib.sha1, key)
        self._inner256, self._outer256 = self._states(hashlib.sha256, key)

    @staticmethod
    def _states(constructor: Callable[..., Any], key: bytes) -> tuple[Any, Any]:
        if len(key) > _BLOCK:
            key = constructor(key).digest()  # RFC 2104 §2: long keys are hashed first
        key = key.ljust(_BLOCK, b"\x00")
        return constructor(key.translate(_IPAD)), constructor(key.translate(_OPAD))

    def sha1(self, text: bytes) -> bytes:
        """HMAC-SHA1(key, text): 20 bytes."""
        inner = self._inner1.copy()
        inner.update(text)
        outer = self._outer1.copy()
        outer.update(inner.digest())
        digest: bytes = outer.digest()
        return digest

    def sha256(self, text: bytes) -> bytes:
        """HMAC-SHA256(key, text): 32 bytes."""
        inner = self._inner256.copy()
        inner.update(text)
        outer = self._outer256.copy()
        outer.update(inner.digest())
        digest: bytes = outer.digest()
        return digest


@lru_cache(maxsize=_CACHE_SIZE)
def keyed(key: bytes) -> KeyedHmac:
    """The :class:`KeyedHmac` of *key* (memoised, bounded)."""
    return KeyedHmac(key)


def hmac_sha1(key: bytes, text: bytes) -> bytes:
    """HMAC-SHA1(key, text), as ``hmac.digest(key, text, "sha1")``."""
    return keyed(key).sha1(text)


def hmac_sha256(key: bytes, text: bytes) -> bytes:
    """HMAC-SHA256(key, text), as ``hmac.digest(key, text, "sha256")``."""
    return keyed(key).sha256(text)
