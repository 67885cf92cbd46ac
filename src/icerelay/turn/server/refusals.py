"""Why the TURN server refuses a request: errors that carry their answer.

Each refusal is a :class:`~icerelay.errors.TurnError` that knows the STUN error code to answer
with (``status``) and the counter to bump (``counter``). Request handlers raise them; the engine
answers and counts in one place (:meth:`.requests.RequestHandler.handle`), so a code and its
counter cannot drift apart. The counter names are stable: tests, logs and metrics read them.

Data-path drops (a ChannelData without a channel, ...) are not exceptions: they are counted
where they happen, since raising per packet would cost the hot path.
"""

from __future__ import annotations

from typing import ClassVar

from icerelay.errors import TurnError


class RequestRefused(TurnError):
    """A request the server answers with an error response (always the client's doing)."""

    STATUS: ClassVar[int] = 400
    COUNTER: ClassVar[str] = "refused_bad_request"

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason, status=self.STATUS, counter=self.COUNTER, remote=True)
        #: The reason phrase (empty: the standard one for the code).
        self.reason = reason


class BadRequest(RequestRefused):
    """400: missing or contradictory attributes."""


class UnknownAttributes(RequestRefused):
    """420: comprehension-required attributes the server does not know (listed in the answer)."""

    STATUS = 420
    COUNTER = "refused_unknown_attribute"

    def __init__(self, attributes: list[int]) -> None:
        super().__init__()
        self.attributes = attributes


class Forbidden(RequestRefused):
    """403: the peer is not allowed by policy."""

    STATUS = 403
    COUNTER = "refused_peer_policy"


class PeerIsServer(RequestRefused):
    """403: the peer is one of this server's own listening addresses."""

    STATUS = 403
    COUNTER = "refused_peer_loop"


class AllocationMismatch(RequestRefused):
    """437: no allocation for this 5-tuple, or an Allocate for one that exists."""

    STATUS = 437
    COUNTER = "refused_allocation_mismatch"


class AddressFamilyNotSupported(RequestRefused):
    """440: no relay address of the requested family."""

    STATUS = 440
    COUNTER = "refused_address_family"


class WrongCredentials(RequestRefused):
    """441: not the credentials that made the allocation (RFC 8656 §5)."""

    STATUS = 441
    COUNTER = "refused_wrong_credentials"


class UnsupportedTransport(RequestRefused):
    """442: REQUESTED-TRANSPORT other than UDP."""

    STATUS = 442
    COUNTER = "refused_transport"


class PeerAddressFamilyMismatch(RequestRefused):
    """443: the peer's (or requested) family is not one the allocation relays."""

    STATUS = 443
    COUNTER = "refused_peer_family"


class AllocationQuotaReached(RequestRefused):
    """486: the user holds as many allocations as its quota allows."""

    STATUS = 486
    COUNTER = "refused_user_quota"


class SourceQuotaReached(AllocationQuotaReached):
    """486: the client's IP address holds as many allocations as its quota allows."""

    COUNTER = "refused_source_quota"


class InsufficientCapacity(RequestRefused):
    """508: the server (or the allocation's permission/channel quota) is full."""

    STATUS = 508
    COUNTER = "refused_capacity"


class Draining(InsufficientCapacity):
    """508 in drain mode: temporary and about capacity, so a client may try another server."""

    COUNTER = "refused_draining"

    def __init__(self) -> None:
        super().__init__("Draining")


class BadReservation(InsufficientCapacity):
    """508: a RESERVATION-TOKEN that is unknown, expired or someone else's."""

    COUNTER = "refused_reservation"

    def __init__(self) -> None:
        super().__init__("Bad RESERVATION-TOKEN")


class Unauthenticated(RequestRefused):
    """401 with a fresh nonce: no or wrong credentials."""

    STATUS = 401
    COUNTER = "refused_unauthenticated"


class StaleNonce(RequestRefused):
    """438 with a fresh nonce."""

    STATUS = 438
    COUNTER = "refused_stale_nonce"


class UnauthenticatedBadRequest(RequestRefused):
    """400 before authentication (unknown method, missing USERNAME/REALM/NONCE, ...)."""


def auth_refusal(code: int, reason: str) -> RequestRefused:
    """The refusal for an authentication failure (:class:`~.auth.AuthFailure`'s code)."""
    if code == 401:
        return Unauthenticated(reason)
    if code == 438:
        return StaleNonce(reason)
    return UnauthenticatedBadRequest(reason)
