"""The requests a TURN client sends, and what it remembers about each one in flight.

Every request is built here from what it is for (:class:`Kind` plus its peers or channel), so
that the engine can build it again, with a new transaction id and fresh credentials, after a 401
or a 438 (RFC 8489 §9.2.5) without remembering the message itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from icerelay.stun import Address, AttributeType, Message, MessageClass, Method
from icerelay.stun.constants import TRANSPORT_UDP, AddressFamily
from icerelay.stun.message import new_transaction_id
from icerelay.stun.transaction import ClientTransaction, Transport
from icerelay.turn.client.auth import MAX_STALE_NONCE_RETRIES, LongTermCredentials
from icerelay.turn.client.events import AllocationCounters

if TYPE_CHECKING:
    from random import Random


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


class Transactions:
    """The requests of one allocation in flight (RFC 8489 §6.2, §9.2).

    Builds each request from its :class:`Kind`, signs it with the long-term credentials, hands
    its bytes to *emit*, retransmits it, matches the answer to it (checking its integrity), and
    sends it again after a 401 or a 438 with what the answer taught us. What is left, the
    answers that decide something and the timeouts, goes back to the allocation.
    """

    __slots__ = (
        "_auth",
        "_counters",
        "_emit",
        "_options",
        "_requests",
        "_rng",
        "_timing",
        "_transport",
        "software",
    )

    def __init__(
        self,
        *,
        rng: Random,
        auth: LongTermCredentials,
        options: AllocateOptions,
        software: str | None,
        transport: Transport,
        timing: tuple[float, int, int, float],
        counters: AllocationCounters,
        emit: Callable[[bytes], None],
    ) -> None:
        self._rng = rng
        self._auth = auth
        self._options = options
        self.software = software
        self._transport: Transport = transport
        #: rto, rc, rm, ti (RFC 8489 §6.2).
        self._timing = timing
        self._counters = counters
        self._emit = emit
        self._requests: dict[bytes, Request] = {}

    def _build(self, kind: Kind, peers: tuple[Address, ...], channel: int) -> Message:
        transaction_id = new_transaction_id(self._rng)
        if kind is Kind.ALLOCATE:
            return allocate_request(transaction_id, self._options)
        if kind is Kind.REFRESH:
            return refresh_request(transaction_id, self._options.lifetime)
        if kind is Kind.DEALLOCATE:
            return refresh_request(transaction_id, 0)
        if kind is Kind.CREATE_PERMISSION:
            return create_permission_request(transaction_id, peers)
        return channel_bind_request(transaction_id, channel, peers[0])

    def send(
        self,
        kind: Kind,
        now: float,
        *,
        peers: tuple[Address, ...] = (),
        channel: int = 0,
        stale_retries: int = 0,
    ) -> None:
        """Build, sign and send a request; remember it until its answer or timeout."""
        message = self._build(kind, peers, channel)
        if self.software:
            message.add(AttributeType.SOFTWARE, self.software)
        authenticated = self._auth.ready
        rto, rc, rm, ti = self._timing
        transaction = ClientTransaction(
            self._auth.encode(message), self._transport, now, rto=rto, rc=rc, rm=rm, ti=ti
        )
        self._requests[message.transaction_id] = Request(
            kind, transaction, peers, channel, stale_retries, authenticated
        )
        self._counters.requests_sent += 1
        for datagram in transaction.datagrams_to_send(now):
            self._emit(datagram)

    def clear(self) -> None:
        """Forget every request in flight (their answers no longer matter)."""
        self._requests.clear()

    def next_timer(self) -> float | None:
        deadlines = [
            deadline
            for request in self._requests.values()
            if (deadline := request.transaction.next_timer()) is not None
        ]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Request]:
        """Retransmit what is due; the requests that timed out (forgotten)."""
        failed: list[Request] = []
        for transaction_id, request in list(self._requests.items()):
            transaction = request.transaction
            transaction.handle_timer(now)
            for datagram in transaction.datagrams_to_send(now):
                self._counters.retransmissions += 1
                self._emit(datagram)
            if transaction.error is not None:
                del self._requests[transaction_id]
                failed.append(request)
        return failed

    def match(self, message: Message) -> Request | None:
        """The request *message* (a response) answers, now forgotten; None (counted) for a
        late answer, a forgery, or one whose integrity does not verify."""
        request = self._requests.get(message.transaction_id)
        if request is None:
            # Late answer to a retransmitted or abandoned request, or a forgery.
            self._counters.ignored += 1
            return None
        if not self._auth.authentic(message, authenticated=request.authenticated):
            self._counters.integrity_failures += 1
            return None
        if not request.transaction.receive(message):
            self._counters.ignored += 1  # same id, different cookie: not an answer to us
            return None
        del self._requests[message.transaction_id]
        return request

    def retried(self, request: Request, message: Message, code: int, now: float) -> bool:
        """Send *request* again when its error answer asks for credentials: the 401 challenge
        to an Allocate, or a 438 (Stale Nonce) within :data:`MAX_STALE_NONCE_RETRIES`."""
        retries = request.stale_retries
        if code == 401 and request.kind is Kind.ALLOCATE:
            if not self._auth.challenge(message, authenticated=request.authenticated):
                return False
        elif code == 438 and retries < MAX_STALE_NONCE_RETRIES:
            self._auth.stale(message)
            self._counters.stale_nonces += 1
            retries += 1
        else:
            return False
        # A new transaction id and the current credentials (RFC 8489 §9.2.5).
        self.send(
            request.kind, now, peers=request.peers, channel=request.channel, stale_retries=retries
        )
        return True
