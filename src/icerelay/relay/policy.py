"""The knobs a SIP proxy turns per call or per request: ICE handling and relay-candidate priority.

They live in the relay package (not in a control protocol) because every control protocol -- ng,
mediaproxy -- maps its own spelling onto these same values.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["IceMode", "IcePriority", "candidate_priority"]


class IceMode(StrEnum):
    """What the relay does with the ICE attributes of an SDP body it forwards (rtpengine's ``ICE``).

    - ``DEFAULT``: keep the peer's ICE attributes and candidates; add the relay's own ``typ relay``
      candidate when the body carries ICE and the :class:`IcePriority` is not ``NONE``.
    - ``REMOVE``: strip every ICE attribute, so the far side sees a plain relayed stream.
    - ``FORCE``: strip the peer's ICE attributes and offer the relay as the only candidate, with
      the relay's own credentials and ``a=ice-lite`` (the relay answers connectivity checks).
    - ``FORCE_RELAY``: keep the peer's candidates except its own ``typ relay`` ones and add the
      relay's candidate; ``c=`` and ``m=`` keep the peer's default address.
    """

    DEFAULT = "default"
    REMOVE = "remove"
    FORCE = "force"
    FORCE_RELAY = "force-relay"


class IcePriority(StrEnum):
    """How strongly the inserted relay candidate is preferred (the MediaProxy ICE policy).

    ``LOW`` lets ICE pick any direct path first and fall back to the relay; ``HIGH`` makes the
    relay win whenever its checks succeed; ``NONE`` inserts no candidate at all.
    """

    NONE = "none"
    LOW = "low"
    HIGH = "high"

    @property
    def type_preference(self) -> int:
        """RFC 8445 §5.1.2.1 type preference used for the relay candidate (0..126)."""
        # 126 is the RFC maximum; MediaProxy's 130 overflows the 7-bit field and must not be copied.
        return 126 if self is IcePriority.HIGH else 0


def candidate_priority(type_preference: int, component: int, local_preference: int = 65535) -> int:
    """RFC 8445 §5.1.2.1 candidate priority.

    ``2^24 * type preference + 2^8 * local preference + (256 - component)``. The relay has a single
    address per family, so its local preference is the maximum, 65535.
    """
    if not 0 <= type_preference <= 126:
        raise ValueError(f"type preference {type_preference} is outside 0..126")
    if not 0 <= local_preference <= 65535:
        raise ValueError(f"local preference {local_preference} is outside 0..65535")
    if not 1 <= component <= 256:
        raise ValueError(f"component {component} is outside 1..256")
    return (type_preference << 24) + (local_preference << 8) + (256 - component)
