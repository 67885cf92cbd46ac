"""A virtual network for user agents (and a tiny record-routing proxy) in virtual time."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from icerelay.sip.auth import verify
from icerelay.sip.message import (
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    make_response,
    parse_message,
)
from icerelay.sip.useragent import Event, UserAgent, uri_address

Address = tuple[str, int]


class Proxy:
    """A stateless proxy that record-routes, and optionally challenges INVITEs with 407."""

    def __init__(self, address: Address, *, password: str | None = None,
                 record_route: bool = True) -> None:
        self.address = address
        self.password = password
        self.record_route = record_route
        self.outbox: list[tuple[bytes, Address]] = []
        self.challenged = 0
        self.forwarded: list[SipRequest] = []

    def receive(self, data: bytes, source: Address, now: float) -> None:
        message = parse_message(data)
        if isinstance(message, SipResponse):
            vias = message.headers.values("Via")
            message.headers.pop_first_value("Via")
            self.outbox.append((message.to_bytes(), Via.parse(vias[1]).response_address()))
            return
        via = message.top_via
        if not via.has_param("received"):
            via = via.with_param("received", source[0])
        if via.has_param("rport"):
            via = via.with_param("rport", str(source[1]))
        message.headers.replace_first_value("Via", str(via))
        in_dialog = message.to_address.tag is not None
        if self.password and message.method == "INVITE" and not in_dialog:
            auth = message.headers.get("Proxy-Authorization")
            if auth is None or not verify(auth, password=self.password, method="INVITE",
                                          realm="test", nonce="n0nce"):
                self.challenged += 1
                response = make_response(message, 407, to_tag="proxytag")
                response.headers.add("Proxy-Authenticate",
                                     'Digest realm="test", nonce="n0nce", qop="auth"')
                self.outbox.append((response.to_bytes(), via.response_address()))
                return
        if message.method == "ACK" and message.to_address.tag == "proxytag":
            return  # the ACK of our own 407
        routes = message.headers.values("Route")
        if routes and SipUri.parse(routes[0].strip("<>").split(">")[0]).port == self.address[1]:
            message.headers.pop_first_value("Route")
            routes = routes[1:]
        branch = "z9hG4bK" + hashlib.md5((via.branch or "").encode()).hexdigest()[:12]
        message.headers.prepend("Via", f"SIP/2.0/UDP {self.address[0]}:{self.address[1]}"
                                       f";branch={branch}")
        if self.record_route and message.method == "INVITE" and not in_dialog:
            message.headers.prepend("Record-Route",
                                    f"<sip:{self.address[0]}:{self.address[1]};lr>")
        target = (SipUri.parse(routes[0].split("<")[-1].split(">")[0]) if routes
                  else message.request_uri)
        self.forwarded.append(message)
        self.outbox.append((message.to_bytes(), uri_address(target)))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self.outbox = self.outbox, []
        return out

    def next_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass


Node = UserAgent | Proxy


@dataclass
class Network:
    nodes: dict[Address, Node]
    delay: float = 0.01
    drop: Callable[[bytes, Address, Address], bool] = lambda data, src, dst: False
    now: float = 0.0
    events: dict[Address, list[Event]] = field(default_factory=dict)
    in_flight: list[tuple[float, int, bytes, Address, Address]] = field(default_factory=list)
    log: list[tuple[float, Address, Address, bytes]] = field(default_factory=list)
    _counter: int = 0

    def collect(self) -> None:
        for address, node in self.nodes.items():
            for data, destination in node.datagrams_to_send(self.now):
                self.log.append((self.now, address, destination, data))
                if not self.drop(data, address, destination):
                    self._counter += 1
                    self.in_flight.append((self.now + self.delay, self._counter, data, address,
                                           destination))
            if isinstance(node, UserAgent):
                while (event := node.next_event()) is not None:
                    self.events.setdefault(address, []).append(event)
        self.in_flight.sort()

    def run(self, until: float, *, stop: Callable[[], bool] | None = None) -> None:
        self.collect()
        while self.now < until:
            if stop is not None and stop():
                return
            timers = [t for node in self.nodes.values() if (t := node.next_timer()) is not None]
            if self.in_flight:
                timers.append(self.in_flight[0][0])
            if not timers:
                self.now = until
                return
            self.now = max(self.now, min(timers))
            if self.now > until:
                self.now = until
                return
            while self.in_flight and self.in_flight[0][0] <= self.now:
                _, _, data, source, destination = self.in_flight.pop(0)
                node = self.nodes.get(destination)
                if node is not None:
                    node.receive(data, source, self.now)
            for node in self.nodes.values():
                node.handle_timer(self.now)
            self.collect()

    def sent(self, start: bytes) -> list[bytes]:
        return [data for _, _, _, data in self.log if data.startswith(start)]
