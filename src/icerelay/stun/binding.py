"""The STUN Binding engine, sans-I/O (RFC 8489 §§6-7, RFC 5780 §6, RFC 3489 compatibility).

Feed it what arrived on any of the server's sockets; it says what to send from which local
address::

    engine = BindingEngine(rfc5780=Rfc5780Addresses(Address("192.0.2.1", 3478),
                                                    Address("192.0.2.2", 3479)))
    engine.receive(data, source=peer, destination=local, now=loop.time(), transport="udp")
    for datagram in engine.datagrams_to_send(now):
        socket_for(datagram.source).sendto(datagram.data, datagram.destination)

It follows the engine convention of :class:`icerelay.aio.driver.Engine` (``transport`` defaults
to UDP), so the daemon drives it with :class:`~icerelay.aio.driver.EngineDriver`. Over TCP each
answer is a :class:`~icerelay.net.Datagram` with ``transport="tcp"``: the bytes to write back on
the connection the request came on.

Decisions (the RFCs leave room):

- XOR-MAPPED-ADDRESS always (RFC 8489); MAPPED-ADDRESS as well when RFC 5780 is on (§6.1 says
  MUST). A request without the magic cookie comes from an RFC 3489 client, which cannot undo the
  XOR: it gets MAPPED-ADDRESS only, and with RFC 5780 on the old names of RESPONSE-ORIGIN and
  OTHER-ADDRESS (SOURCE-ADDRESS, CHANGED-ADDRESS). RESPONSE-ADDRESS of RFC 3489 is ignored: it
  would let anyone aim our responses at a third party.
- FINGERPRINT in the response iff the request had one; SOFTWARE only when configured.
- CHANGE-REQUEST without an alternate address: 420, as RFC 5780 §6 requires (whatever the flags).
  Over TCP the answer can only come back on the connection, so non-zero flags, RESPONSE-PORT and
  PADDING get 400 there.
- PADDING + RESPONSE-PORT: 400 (RFC 5780 §6.1). The padded response is never larger than the
  request datagram (nor ``padding_limit``), so PADDING cannot amplify traffic.
- Requests of other methods get 400; other indications and all responses are dropped. Nothing the
  peer sends raises out of :meth:`BindingEngine.receive`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from icerelay.errors import StunError

# Responses are the shared datagram, each with the local address it must leave from as source.
from icerelay.net import Datagram as Datagram
from icerelay.stun import (
    HEADER_LENGTH,
    Address,
    AttributeType,
    ChangeRequest,
    Message,
    MessageClass,
    Method,
    decode_message,
)
from icerelay.stun.counters import Counters, DropReason
from icerelay.stun.demux import PacketKind, classify_packet
from icerelay.stun.ratelimit import LogLimiter

A = AttributeType
Transport = Literal["udp", "tcp"]

#: Longest UNKNOWN-ATTRIBUTES list we echo: enough for any honest client, and it keeps a 420
#: small however many unknown attributes a request stuffs in.
MAX_UNKNOWN_REPORTED = 16


@dataclass(frozen=True, slots=True)
class Rfc5780Addresses:
    """The two addresses of an RFC 5780 server: A1:P1 (``primary``) and A2:P2 (``alternate``).

    The server listens on all four combinations A1:P1, A1:P2, A2:P1, A2:P2.
    """

    primary: Address
    alternate: Address

    def __post_init__(self) -> None:
        if self.primary.family != self.alternate.family:
            raise ValueError("RFC 5780 addresses must be of the same family")
        if self.primary.host == self.alternate.host or self.primary.port == self.alternate.port:
            raise ValueError("RFC 5780 needs two different IPs and two different ports")

    def all(self) -> list[Address]:
        """The four local addresses to listen on."""
        ips = (self.primary.host, self.alternate.host)
        ports = (self.primary.port, self.alternate.port)
        return [Address(ip, port) for ip in ips for port in ports]

    def serves(self, local: Address) -> bool:
        """Whether ``local`` is one of the four addresses."""
        return local in self.all()

    def other_ip(self, host: str) -> str:
        return self.alternate.host if host == self.primary.host else self.primary.host

    def other_port(self, port: int) -> int:
        return self.alternate.port if port == self.primary.port else self.primary.port


class BindingEngine:
    """Answers STUN Binding requests; see the module docstring for the behaviour."""

    def __init__(
        self,
        *,
        rfc5780: Rfc5780Addresses | None = None,
        software: str | None = None,
        padding_limit: int = 1500,
        log_interval: float = 60.0,
        logger: logging.Logger | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.rfc5780 = rfc5780
        self.software = software
        self.padding_limit = padding_limit
        self.counters = counters if counters is not None else Counters()
        self.logger = logger or logging.getLogger("icerelay.stun.binding")
        self._limiter = LogLimiter(log_interval)
        self._outgoing: list[Datagram] = []

    # --- sans-I/O interface --------------------------------------------------------------

    def receive(
        self,
        data: bytes,
        source: Address,
        destination: Address,
        now: float,
        transport: Transport = "udp",
    ) -> None:
        """Take one datagram (or one framed TCP message) that ``source`` sent to ``destination``."""
        try:
            self._receive(data, source, destination, now, transport)
        except Exception as exc:
            # A bug of ours, not the peer's fault; keep serving, but say so loudly (rate-limited).
            self.counters.count("internal_errors")
            if self._limiter.allow(("bug", source.host), now) is not None:
                self.logger.exception(
                    "stun.internal_error", extra={"source": str(source), "error": repr(exc)}
                )

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """What to send now (each response with the local address it must leave from)."""
        out, self._outgoing = self._outgoing, []
        return out

    def next_timer(self) -> float | None:
        """The engine is stateless between requests: it never needs a timer."""
        return None

    def handle_timer(self, now: float) -> None:
        """Nothing to do (see :meth:`next_timer`)."""

    def next_event(self) -> None:
        """The engine has no events: what it drops and answers is in :attr:`counters`."""
        return None

    # --- reusable piece for other servers (TURN answers Binding on its own ports) -----------

    def answer(
        self,
        request: Message,
        source: Address,
        destination: Address,
        transport: Transport,
        request_size: int,
    ) -> Datagram:
        """The response to a decoded Binding request (success or error), ready to send."""
        unknown = list(dict.fromkeys(request.unknown_comprehension_required))
        change = request.get(A.CHANGE_REQUEST)
        if change is not None and (self.rfc5780 is None or not self.rfc5780.serves(destination)):
            unknown.append(int(A.CHANGE_REQUEST))
        if unknown:
            response = request.error_response(420, "Unknown Attribute")
            response.add(A.UNKNOWN_ATTRIBUTES, unknown[:MAX_UNKNOWN_REPORTED])
            return self._finish(request, response, destination, source, transport)

        response_port = request.get(A.RESPONSE_PORT)
        padding = A.PADDING in request
        flags = ChangeRequest(change or 0) & (ChangeRequest.CHANGE_IP | ChangeRequest.CHANGE_PORT)
        problem = None
        if padding and response_port is not None:
            problem = "PADDING and RESPONSE-PORT together"
        elif transport != "udp" and (flags or response_port is not None or padding):
            problem = "CHANGE-REQUEST, RESPONSE-PORT and PADDING need UDP"
        elif response_port is not None and not 0 < response_port < 65536:
            problem = f"RESPONSE-PORT {response_port} is not a usable port"
        if problem is not None:
            error = request.error_response(400, problem)
            return self._finish(request, error, destination, source, transport)

        reply_from = self._response_origin(destination, flags)
        reply_to = Address(source.host, response_port) if response_port else source
        response = request.response()
        if request.is_rfc3489:
            response.add(A.MAPPED_ADDRESS, source)
        else:
            response.add(A.XOR_MAPPED_ADDRESS, source)
            if self.rfc5780 is not None:
                response.add(A.MAPPED_ADDRESS, source)
        if self.rfc5780 is not None and self.rfc5780.serves(destination):
            other = Address(
                self.rfc5780.other_ip(destination.host), self.rfc5780.other_port(destination.port)
            )
            if request.is_rfc3489:
                response.add(A.SOURCE_ADDRESS, reply_from)
                response.add(A.CHANGED_ADDRESS, other)
            else:
                response.add(A.RESPONSE_ORIGIN, reply_from)
                response.add(A.OTHER_ADDRESS, other)
        pad_to = request_size if padding else None
        return self._finish(request, response, reply_from, reply_to, transport, pad_to)

    # --- internals ---------------------------------------------------------------------------

    def _receive(
        self, data: bytes, source: Address, destination: Address, now: float, transport: Transport
    ) -> None:
        kind = classify_packet(data)
        if kind is PacketKind.CHANNEL_DATA:
            self._drop(DropReason.CHANNEL_DATA, source, now, f"{len(data)} bytes")
            return
        if kind is not PacketKind.STUN or len(data) < HEADER_LENGTH:
            self._drop(DropReason.NOT_STUN, source, now, f"{len(data)} bytes, kind {kind.value}")
            return
        try:
            message = decode_message(data, allow_rfc3489=True, check_fingerprint=False)
        except StunError as exc:
            self._drop(DropReason.MALFORMED, source, now, str(exc))
            return
        if message.has_fingerprint and not message.fingerprint_ok:
            self._drop(DropReason.BAD_FINGERPRINT, source, now, "FINGERPRINT mismatch")
            return
        if message.message_class == MessageClass.REQUEST:
            self.counters.count("requests")
            if message.method == Method.BINDING:
                self.counters.count("binding_requests")
                self._queue(self.answer(message, source, destination, transport, len(data)))
            else:
                response = message.error_response(400, "Unsupported method")
                self._queue(self._finish(message, response, destination, source, transport))
        elif message.message_class == MessageClass.INDICATION:
            if message.method == Method.BINDING:
                # Keepalives (RFC 8489 §6.3.2, ICE consent freshness): nothing to answer.
                self.counters.count("binding_indications")
            else:
                detail = f"method {message.method}"
                self._drop(DropReason.UNSUPPORTED_INDICATION, source, now, detail)
        else:
            self._drop(DropReason.UNEXPECTED_RESPONSE, source, now, "response sent to a server")

    def _response_origin(self, destination: Address, flags: ChangeRequest) -> Address:
        """RFC 5780 Table 1: the local address the response leaves from."""
        if self.rfc5780 is None or not self.rfc5780.serves(destination):
            return destination
        host, port = destination.host, destination.port
        if flags & ChangeRequest.CHANGE_IP:
            host = self.rfc5780.other_ip(host)
        if flags & ChangeRequest.CHANGE_PORT:
            port = self.rfc5780.other_port(port)
        return Address(host, port)

    def _finish(
        self,
        request: Message,
        response: Message,
        source: Address,
        destination: Address,
        transport: Transport,
        pad_to: int | None = None,
    ) -> Datagram:
        if self.software:
            response.add(A.SOFTWARE, self.software)
        fingerprint = request.has_fingerprint
        data = response.encode(fingerprint=fingerprint)
        if pad_to is not None:
            # Fill the response up to the request's size (a client asks for PADDING to test
            # fragmentation and pads its own request to the MTU), never beyond padding_limit.
            room = min(pad_to, len(data) + 4 + self.padding_limit) - len(data) - 4
            response.add(A.PADDING, bytes(max(0, room) & ~3))
            data = response.encode(fingerprint=fingerprint)
        if response.message_class == MessageClass.ERROR_RESPONSE:
            self.counters.count("error_responses")
        else:
            self.counters.count("success_responses")
        return Datagram(data, source, destination, transport)

    def _queue(self, datagram: Datagram) -> None:
        self._outgoing.append(datagram)

    def _drop(self, reason: DropReason, source: Address, now: float, detail: str) -> None:
        self.counters.drop(reason)
        suppressed = self._limiter.allow(source.host, now)
        if suppressed is not None:
            self.logger.info(
                "stun.dropped",
                extra={
                    "source": str(source),
                    "reason": reason.value,
                    "detail": detail,
                    "suppressed": suppressed,
                },
            )


def listen_addresses(rfc5780: Rfc5780Addresses | None, listen: Iterable[Address]) -> list[Address]:
    """Every local address a STUN service must listen on: ``listen`` plus RFC 5780's four."""
    addresses = list(dict.fromkeys(listen))
    if rfc5780 is not None:
        addresses += [a for a in rfc5780.all() if a not in addresses]
    return addresses
