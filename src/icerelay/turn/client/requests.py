"""The requests a TURN client sends, and what it remembers about each one in flight.

Every request is built here from what it is for (:class:`Kind` plus its peers or channel), so
that the engine can build it again, with a new transaction id and fresh credentials, after a 401
or a 438 (RFC 8489 §9.2.5) without remembering the message itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from icerelay.stun import Address, AttributeType, Message, MessageClass, Method
from icerelay.stun.constants import TRANSPORT_UDP, AddressFamily
from icerelay.stun.transaction import ClientTransaction


class Kind(Enum):
    """What a request is for."""

    ALLOCATE = "Allocate"
    REFRESH = "Refresh"
    DEALLOCATE = "Refresh (deallocate)"
    CREATE_PERMISSION = "CreatePermission"
    CHANNEL_BIND = "ChannelBind"


@dataclass(slots=True)
class Request:
    """One request in flight: what it was for, so that it can be rebuilt after a 438."""

    kind: Kind
    transaction: ClientTransaction
    #: CreatePermission: the peers (IP addresses with any port) it installs.
    peers: tuple[Address, ...] = ()
    #: ChannelBind: the channel number.
    channel: int = 0
    stale_retries: int = 0
    authenticated: bool = False


@dataclass(frozen=True, slots=True)
class AllocateOptions:
    """What an Allocate asks for (RFC 8656 §7.1), fixed when the engine is made."""

    lifetime: int
    family: int | None
    even_port: bool | None
    reservation_token: bytes | None
    dont_fragment: bool


def _request(method: Method, transaction_id: bytes) -> Message:
    return Message(method=method, message_class=MessageClass.REQUEST, transaction_id=transaction_id)


def allocate_request(transaction_id: bytes, options: AllocateOptions) -> Message:
    """An Allocate for a UDP relayed address (RFC 8656 §7.1), without credentials."""
    message = _request(Method.ALLOCATE, transaction_id)
    message.add(AttributeType.REQUESTED_TRANSPORT, TRANSPORT_UDP)
    message.add(AttributeType.LIFETIME, options.lifetime)
    if options.reservation_token is not None:
        # RFC 8656 §7.1: the token names the family and port already; nothing else may.
        message.add(AttributeType.RESERVATION_TOKEN, options.reservation_token)
    else:
        if options.family == 6:
            message.add(AttributeType.REQUESTED_ADDRESS_FAMILY, AddressFamily.IPV6)
        if options.even_port is not None:
            message.add(AttributeType.EVEN_PORT, options.even_port)
    if options.dont_fragment:
        message.add(AttributeType.DONT_FRAGMENT, None)
    return message


def refresh_request(transaction_id: bytes, lifetime: int) -> Message:
    """A Refresh (RFC 8656 §7.2); LIFETIME 0 deletes the allocation."""
    message = _request(Method.REFRESH, transaction_id)
    message.add(AttributeType.LIFETIME, lifetime)
    return message


def create_permission_request(transaction_id: bytes, peers: tuple[Address, ...]) -> Message:
    """A CreatePermission for every peer's IP address (RFC 8656 §10.1)."""
    message = _request(Method.CREATE_PERMISSION, transaction_id)
    for peer in peers:
        message.add(AttributeType.XOR_PEER_ADDRESS, peer)
    return message


def channel_bind_request(transaction_id: bytes, number: int, peer: Address) -> Message:
    """A ChannelBind of *number* to *peer* (RFC 8656 §12.1)."""
    message = _request(Method.CHANNEL_BIND, transaction_id)
    message.add(AttributeType.CHANNEL_NUMBER, number)
    message.add(AttributeType.XOR_PEER_ADDRESS, peer)
    return message


def send_indication(transaction_id: bytes, peer: Address, data: bytes) -> bytes:
    """A Send indication carrying *data* to *peer* (RFC 8656 §11.1), encoded."""
    indication = Message(
        method=Method.SEND, message_class=MessageClass.INDICATION, transaction_id=transaction_id
    )
    indication.add(AttributeType.XOR_PEER_ADDRESS, peer)
    indication.add(AttributeType.DATA, data)
    return indication.encode()
