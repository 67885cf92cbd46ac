"""Why the STUN Binding responder dropped an input.

The counter type itself is :class:`icerelay.counters.Counters`, re-exported here.
"""

from __future__ import annotations

from enum import StrEnum

from icerelay.counters import Counters

__all__ = ["Counters", "DropReason"]


class DropReason(StrEnum):
    """Why an input was dropped without an answer."""

    #: Not a STUN message at all (first bits, length or magic cookie wrong).
    NOT_STUN = "not_stun"
    #: Looked like STUN but did not decode (bad attribute, overrun, ...).
    MALFORMED = "malformed"
    #: FINGERPRINT present and wrong: corrupted, or not meant for us.
    BAD_FINGERPRINT = "bad_fingerprint"
    #: A response (success or error) sent to a server.
    UNEXPECTED_RESPONSE = "unexpected_response"
    #: An indication of a method we do not handle (Binding indications are keepalives: counted
    #: apart, never a drop).
    UNSUPPORTED_INDICATION = "unsupported_indication"
    #: TURN ChannelData arriving at a STUN-only service.
    CHANNEL_DATA = "channel_data"
    #: A response could not be sent (socket error, unknown local address).
    SEND_FAILED = "send_failed"
    #: TCP stream that cannot be framed (first byte neither STUN nor ChannelData).
    UNFRAMEABLE_STREAM = "unframeable_stream"
