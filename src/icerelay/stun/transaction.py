"""STUN client transactions, sans-I/O (RFC 8489 §6.2).

Over UDP a request is retransmitted with exponential back-off: first after RTO (500 ms by
default), then 2·RTO later, and so on, Rc (7) requests in all; after the last one the client
waits Rm·RTO (16·RTO) for an answer. With the defaults the requests go at 0, 0.5, 1.5, 3.5,
7.5, 15.5 and 31.5 s and the transaction times out at 39.5 s. Over TCP and TLS the request is
sent once and the transaction times out after Ti = 39.5 s (RFC 8489 §6.2.2).

Nothing here reads a clock or touches a socket: time is passed in, and the caller sends what
:meth:`ClientTransaction.datagrams_to_send` returns to the server it chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from icerelay.errors import TransactionError
from icerelay.stun.constants import HEADER_LENGTH, MessageClass
from icerelay.stun.message import Message

__all__ = [
    "DEFAULT_RC",
    "DEFAULT_RM",
    "DEFAULT_RTO",
    "DEFAULT_TI",
    "ClientTransaction",
    "RtoCache",
    "TransactionCompleted",
    "TransactionError",
]

#: RFC 8489 §6.2.1 defaults (seconds, counts) and the TCP timeout Ti (§6.2.2).
DEFAULT_RTO = 0.5
DEFAULT_RC = 7
DEFAULT_RM = 16
DEFAULT_TI = 39.5

Transport = Literal["udp", "tcp", "tls"]


@dataclass(frozen=True, slots=True)
class TransactionCompleted:
    """The transaction is over: a response arrived (success or error class), or it failed."""

    transaction_id: bytes
    response: Message | None
    error: TransactionError | None


class ClientTransaction:
    """One request and its retransmissions until a response or a timeout.

    ``request`` is the encoded request (``bytes``, with whatever integrity it needs) or a
    :class:`Message`, which is encoded without integrity. Responses are matched on the
    128 bits after the length field (magic cookie + transaction id), so RFC 3489 requests
    work too. Feed every decoded response to :meth:`receive`; it says whether it was ours.
    """

    def __init__(
        self,
        request: bytes | Message,
        transport: Transport = "udp",
        now: float = 0.0,
        *,
        rto: float = DEFAULT_RTO,
        rc: int = DEFAULT_RC,
        rm: int = DEFAULT_RM,
        ti: float = DEFAULT_TI,
    ) -> None:
        data = request.encode() if isinstance(request, Message) else bytes(request)
        if len(data) < HEADER_LENGTH:
            raise ValueError("a STUN request has at least a 20-byte header")
        if rto <= 0 or rc < 1 or rm < 1:
            raise ValueError("RTO must be positive and Rc, Rm at least 1")
        self.request: bytes = data
        self.transport: Transport = transport
        self._key = data[4:20]
        self._rto = rto
        self._rc = rc
        self._rm = rm
        self._interval = rto
        self._pending: list[bytes] = [data]
        #: How many times the request has been put on the wire (or queued to be).
        self.sends = 1
        self.started_at = now
        self._deadline: float | None = now + (rto if transport == "udp" else ti)
        if transport == "udp" and rc == 1:
            self._deadline = now + rm * rto
        self._response: Message | None = None
        self._error: TransactionError | None = None
        self._events: list[TransactionCompleted] = []
        #: Round-trip time of an unretransmitted request, for :class:`RtoCache`.
        self.rtt: float | None = None

    @property
    def transaction_id(self) -> bytes:
        """The 96-bit transaction id of the request."""
        return self._key[4:]

    @property
    def done(self) -> bool:
        """True once a response arrived or the transaction failed."""
        return self._response is not None or self._error is not None

    @property
    def response(self) -> Message | None:
        """The response (success or error class) once it arrived."""
        return self._response

    @property
    def error(self) -> TransactionError | None:
        """TransactionError("timeout") (or "cancelled") if the transaction failed."""
        return self._error

    @property
    def result(self) -> Message | TransactionError | None:
        """The response, the error, or None while the transaction is running."""
        return self._response if self._response is not None else self._error

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The request bytes to put on the wire now (the first send and retransmissions)."""
        pending, self._pending = self._pending, []
        return pending

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None when done."""
        return None if self.done else self._deadline

    def handle_timer(self, now: float) -> None:
        """Retransmit or time out if the deadline has passed."""
        deadline = self._deadline
        if self.done or deadline is None or now < deadline:
            return
        if self.transport != "udp" or self.sends >= self._rc:
            self._finish(None, TransactionError("timeout"))
            return
        self._pending.append(self.request)
        self.sends += 1
        # Deadlines follow the schedule, not the moment we were woken, so that a late timer
        # does not stretch the whole transaction.
        self._interval *= 2
        if self.sends < self._rc:
            self._deadline = deadline + self._interval
        else:
            # RFC 8489 §6.2.1: after the last request, wait Rm times the initial RTO.
            self._deadline = deadline + self._rm * self._rto

    def matches(self, message: Message) -> bool:
        """Whether ``message`` is a response to this request."""
        return (
            message.message_class in (MessageClass.SUCCESS_RESPONSE, MessageClass.ERROR_RESPONSE)
            and message.transaction_key == self._key
        )

    def receive(self, message: Message, now: float | None = None) -> bool:
        """Take a decoded message; True if it is a response to this transaction.

        The first response completes the transaction; a duplicate (a response to a
        retransmission) is recognised (True) but changes nothing. Given ``now``, a response to
        a request that was sent only once yields an RTT sample (:attr:`rtt`).
        """
        if not self.matches(message):
            return False
        if not self.done:
            # Karn's algorithm: after a retransmission we cannot tell which send was answered.
            if now is not None and self.sends == 1:
                self.rtt = max(0.0, now - self.started_at)
            self._finish(message, None)
        return True

    def cancel(self) -> None:
        """Give up (for example when the agent is closed): fails with "cancelled"."""
        if not self.done:
            self._finish(None, TransactionError("cancelled"))

    def next_event(self) -> TransactionCompleted | None:
        """The completion event, once, when the transaction ends."""
        return self._events.pop(0) if self._events else None

    def _finish(self, response: Message | None, error: TransactionError | None) -> None:
        self._response = response
        self._error = error
        self._pending.clear()
        self._deadline = None
        self._events.append(TransactionCompleted(self.transaction_id, response, error))


class RtoCache:
    """Per-server RTO estimates (RFC 8489 §6.2.1, computed as RFC 6298 says).

    The RFC asks a client to start a transaction with the RTO learned from earlier ones to the
    same server (same IP address), and to forget it after 10 minutes without transactions.
    Unlike RFC 6298 the RTO is not rounded up to a second; it is kept between ``min_rto``
    (by default the initial 500 ms, so that a fast path never makes us retransmit sooner than
    the RFC's default) and ``max_rto``.
    """

    def __init__(
        self,
        initial_rto: float = DEFAULT_RTO,
        *,
        min_rto: float | None = None,
        max_rto: float = 3.0,
        stale_after: float = 600.0,
    ) -> None:
        self.initial_rto = initial_rto
        self.min_rto = initial_rto if min_rto is None else min_rto
        self.max_rto = max_rto
        self.stale_after = stale_after
        # host -> (SRTT, RTTVAR, last used)
        self._entries: dict[str, tuple[float, float, float]] = {}

    def rto(self, host: str, now: float) -> float:
        """The RTO to start a transaction to ``host`` with."""
        entry = self._entries.get(host)
        if entry is None or now - entry[2] > self.stale_after:
            self._entries.pop(host, None)
            return self.initial_rto
        srtt, rttvar, _ = entry
        return min(self.max_rto, max(self.min_rto, srtt + 4 * rttvar))

    def observe(self, host: str, transaction: ClientTransaction, now: float) -> None:
        """Learn from a finished transaction: its RTT sample if it has one (RFC 6298 §2)."""
        rtt = transaction.rtt
        entry = self._entries.get(host)
        if entry is not None and now - entry[2] > self.stale_after:
            entry = None
        if rtt is None:
            if entry is not None:
                self._entries[host] = (entry[0], entry[1], now)
            return
        if entry is None:
            srtt, rttvar = rtt, rtt / 2
        else:
            srtt, rttvar = entry[0], entry[1]
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - rtt)
            srtt = 0.875 * srtt + 0.125 * rtt
        self._entries[host] = (srtt, rttvar, now)
