"""Verify the ICE checks that cross the relay against the credentials of the two SDPs.

When both parties do ICE through the relay (their checks pass through it), the relay saw both
halves of the offer/answer and so knows both parties' ``a=ice-ufrag``/``a=ice-pwd``. That is
enough to tell a real connectivity check from a forged one (RFC 8445 §7.2.2, §7.3):

- a Binding **request** from party X to its peer Y carries ``USERNAME = "Y.ufrag:X.ufrag"`` and
  a MESSAGE-INTEGRITY keyed with **Y's** password (the password of the agent that will receive
  it, which X learnt from Y's SDP);
- a Binding **response** from X (answering a request Y sent) has no USERNAME; its
  MESSAGE-INTEGRITY is keyed with **X's own** password, the same key as the request it answers
  (the password of the requester's peer).

So on the leg of party X, the relay verifies a request with Y's password and a response with
X's. An off-path attacker knows neither password (they travel in signalling, not in media), so
a check that verifies proves its source is one of the party's ICE candidates: the latching
policy (:mod:`.latching`) lets such checks latch and move a leg, and the step-aside decision
reads how many verified.

Pure functions: no I/O, no clock. :class:`CheckKeys` holds what verification needs, computed
once per installed forwarding (the OpaqueString preparation of a password is not cheap).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from icerelay.errors import StunError
from icerelay.sdp import IceCredentials
from icerelay.stun import AttributeType, MessageClass, Method, decode_message
from icerelay.stun.credentials import short_term_key
from icerelay.stun.message import Message

__all__ = ["CheckKeys", "CheckVerdict", "check_keys", "verify_check", "verify_message"]


class CheckVerdict(StrEnum):
    """What one STUN message on a leg turned out to be."""

    #: A Binding request whose USERNAME and MESSAGE-INTEGRITY verify.
    REQUEST = "request"
    #: The same, with USE-CANDIDATE: a nomination (RFC 8445 §8.1.1).
    NOMINATION = "nomination"
    #: A Binding success or error response whose MESSAGE-INTEGRITY verifies.
    RESPONSE = "response"
    #: A Binding request or response that does not verify: wrong USERNAME, wrong or missing
    #: MESSAGE-INTEGRITY.
    UNAUTHENTICATED = "unauthenticated"
    #: Any other STUN message (an indication, another method): nothing to verify.
    OTHER = "other"
    #: Not a decodable STUN message.
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class CheckKeys:
    """What verifying the checks that arrive *from* one party needs.

    :attr:`username_prefix` is ``"peer.ufrag:"`` and :attr:`username` the whole expected
    ``"peer.ufrag:party.ufrag"``; :attr:`request_key` is the short-term key of the peer's
    password (requests), :attr:`response_key` that of the party's own (responses).
    """

    username: str
    request_key: bytes
    response_key: bytes


def check_keys(party: IceCredentials | None, peer: IceCredentials | None) -> CheckKeys | None:
    """The keys for checks from ``party`` to ``peer``; None if either SDP had no credentials
    or a password the STUN string preparation rejects (nothing can verify then)."""
    if party is None or peer is None:
        return None
    try:
        return CheckKeys(
            username=f"{peer.ufrag}:{party.ufrag}",
            request_key=short_term_key(peer.pwd),
            response_key=short_term_key(party.pwd),
        )
    except StunError:
        return None


def verify_message(message: Message, keys: CheckKeys) -> CheckVerdict:
    """Verify a decoded STUN message that arrived from the party ``keys`` were made for."""
    if message.method != Method.BINDING:
        return CheckVerdict.OTHER
    message_class = message.message_class
    if message_class == MessageClass.REQUEST:
        if message.get(AttributeType.USERNAME) != keys.username:
            return CheckVerdict.UNAUTHENTICATED
        if not message.check_integrity(keys.request_key):
            return CheckVerdict.UNAUTHENTICATED
        if message.has(AttributeType.USE_CANDIDATE):
            return CheckVerdict.NOMINATION
        return CheckVerdict.REQUEST
    if message_class in (MessageClass.SUCCESS_RESPONSE, MessageClass.ERROR_RESPONSE):
        if not message.check_integrity(keys.response_key):
            return CheckVerdict.UNAUTHENTICATED
        return CheckVerdict.RESPONSE
    # Binding indications (keepalives, RFC 8445 §11) carry no integrity at all.
    return CheckVerdict.OTHER


def verify_check(
    data: bytes, party: IceCredentials | None, peer: IceCredentials | None
) -> CheckVerdict:
    """Verify one datagram that arrived from ``party``, whose ICE peer is ``peer``.

    The convenience form of :func:`check_keys` + :func:`verify_message`; without both
    credentials every Binding request or response is :attr:`CheckVerdict.UNAUTHENTICATED`.
    """
    try:
        message = decode_message(data)
    except StunError:
        return CheckVerdict.MALFORMED
    keys = check_keys(party, peer)
    if keys is None:
        if message.method == Method.BINDING and message.message_class != MessageClass.INDICATION:
            return CheckVerdict.UNAUTHENTICATED
        return CheckVerdict.OTHER
    return verify_message(message, keys)
