"""A minimal STUN Binding responder for the simulator (RFC 8489 section 6.3, no authentication).

It answers every Binding request with XOR-MAPPED-ADDRESS set to the source it saw, which behind a
NAT is the NAT's mapping: exactly what an ICE agent needs to learn a server-reflexive candidate. It
is a sans-I/O engine like every other, so the simulator drives it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from icerelay.errors import StunError
from icerelay.netsim.network import TransportAddress
from icerelay.stun import Address, AttributeType, MessageClass, Method, decode_message


@dataclass(frozen=True)
class Datagram:
    """One datagram to put on the wire."""

    data: bytes
    source: TransportAddress
    destination: TransportAddress


class StunBindingResponder:
    """Answers Binding requests; counts what it answered and what it could not parse."""

    def __init__(self) -> None:
        self._outbox: list[Datagram] = []
        self.answered = 0
        self.malformed = 0

    def receive(
        self, data: bytes, source: TransportAddress, destination: TransportAddress, now: float
    ) -> None:
        try:
            request = decode_message(data)
        except StunError:
            self.malformed += 1
            return
        if request.method != Method.BINDING or request.message_class != MessageClass.REQUEST:
            return
        response = request.response()
        response.add(AttributeType.XOR_MAPPED_ADDRESS, Address(source[0], source[1]))
        self.answered += 1
        self._outbox.append(Datagram(response.encode(fingerprint=True), destination, source))

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        outbox, self._outbox = self._outbox, []
        return outbox

    def next_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None
