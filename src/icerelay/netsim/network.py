"""The virtual network: a clock, an event queue, realms, hosts, links.

Topology model
--------------
A *realm* is one addressing domain (an IP subnet where every node reaches every other node
directly): the public Internet is one realm, the private side of every NAT box is another. Each
node (a :class:`Host` or a :class:`~icerelay.netsim.nat.Nat`) attaches to a realm through an
:class:`Interface` that carries one IP address and one :class:`Link` (delay and loss). A packet
sent by a node crosses its own link to the realm, and then the destination's link; so the
one-way delay between two hosts in one realm is the sum of their link delays. A packet addressed
to an IP that is not in the realm goes to the realm's *gateway* (the inside interface of the NAT
that made the realm), or is dropped when the realm has none.

IP addresses only need to be unique within a realm: two private realms may both use 10.0.0.2, as
real home networks do, which is a good test of an ICE agent's bookkeeping.

Endpoints
---------
Each host runs at most one sans-I/O engine (:class:`Endpoint`): the network calls
``receive(data, source, destination, now)`` and ``handle_timer(now)``, and collects
``datagrams_to_send(now)``. Engines that also have ``next_event()`` get their events drained
into the host's ``on_event`` callback after every step, so a test can react (for example, signal
candidates to the peer with :meth:`Network.call_later`).

Everything is deterministic: time is virtual, ties are broken by insertion order, and loss draws
from one seeded :class:`random.Random`.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from icerelay.errors import IcerelayError
from icerelay.net import Address

if TYPE_CHECKING:
    from icerelay.netsim.nat import Nat, NatConfig

TransportAddress = tuple[str, int]
"""An (IP address, port) pair, as asyncio and the socket module spell it."""

MAX_STEPS_PER_INSTANT = 10_000
"""Guard against an engine that keeps asking for a timer in the past without making progress."""


class SimulationError(IcerelayError):
    """The simulation was set up wrongly, or an engine misbehaved (e.g. an endless timer loop)."""


class DatagramLike(Protocol):
    """What an engine's ``datagrams_to_send`` returns: payload plus source and destination.

    :class:`icerelay.net.Datagram` is one (its ``source`` must name the host's address here:
    a host may have several); the ICE agent's datagrams, with ``(ip, port)`` tuples, are another.
    """

    @property
    def data(self) -> bytes: ...

    @property
    def source(self) -> TransportAddress | Address | None: ...

    @property
    def destination(self) -> TransportAddress | Address: ...


class Endpoint(Protocol):
    """A sans-I/O engine as DESIGN.md defines it (the subset the simulator drives)."""

    def receive(
        self, data: bytes, source: TransportAddress, destination: TransportAddress, now: float
    ) -> None: ...

    def datagrams_to_send(self, now: float) -> Sequence[DatagramLike]: ...

    def next_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


@dataclass(frozen=True)
class Packet:
    """A UDP datagram in flight, with the addresses as they are on the wire at that point."""

    data: bytes
    source: TransportAddress
    destination: TransportAddress


@dataclass(frozen=True)
class Link:
    """The access link between a node and its realm; both directions behave the same.

    ``delay`` is one-way, in seconds. ``loss`` is the probability (0..1) that a packet crossing the
    link is dropped.
    """

    delay: float = 0.0
    loss: float = 0.0


class Interface:
    """One attachment of a node to a realm: an IP address and a link."""

    def __init__(self, node: Node, realm: Realm, ip: str, link: Link) -> None:
        self.node = node
        self.realm = realm
        self.ip = ip
        self.link = link  # mutable: tests cut or degrade links mid-run

    def __repr__(self) -> str:
        return f"<Interface {self.node.name} {self.ip} in {self.realm.name}>"


class Node:
    """Anything with interfaces that packets are delivered to."""

    def __init__(self, network: Network, name: str) -> None:
        self.network = network
        self.name = name
        self.interfaces: list[Interface] = []

    def receive_packet(self, packet: Packet, interface: Interface) -> None:
        raise NotImplementedError


class Realm:
    """An addressing domain: the public Internet, or the private side of a NAT."""

    def __init__(self, network: Network, name: str) -> None:
        self.network = network
        self.name = name
        self.interfaces: dict[str, Interface] = {}
        self.gateway: Interface | None = None

    def attach(self, node: Node, ip: str, link: Link) -> Interface:
        if ip in self.interfaces:
            raise SimulationError(f"{ip} is already used in realm {self.name}")
        interface = Interface(node, self, ip, link)
        self.interfaces[ip] = interface
        node.interfaces.append(interface)
        return interface

    def route(self, packet: Packet, arrived_from: Interface) -> None:
        """Forward a packet that reached the realm to the interface that owns its destination."""
        target = self.interfaces.get(packet.destination[0])
        if target is None and self.gateway is not None and arrived_from is not self.gateway:
            target = self.gateway
        if target is None:
            self.network.count("dropped-no-route")
            return
        self.network.cross_link(packet, target, inbound=True)


class Host(Node):
    """A machine with one or more addresses that runs at most one sans-I/O engine."""

    def __init__(self, network: Network, name: str) -> None:
        super().__init__(network, name)
        self.endpoint: Endpoint | None = None
        self.on_event: Callable[[Host, Any], None] | None = None
        self.received: list[tuple[float, Packet]] = []  # only when no endpoint is attached

    @property
    def addresses(self) -> list[str]:
        return [interface.ip for interface in self.interfaces]

    def interface(self, ip: str) -> Interface:
        for interface in self.interfaces:
            if interface.ip == ip:
                return interface
        raise SimulationError(f"host {self.name} has no address {ip}")

    def attach(
        self, endpoint: Endpoint, on_event: Callable[[Host, Any], None] | None = None
    ) -> None:
        """Run ``endpoint`` on this host; ``on_event`` gets every event it reports."""
        self.endpoint = endpoint
        self.on_event = on_event

    def send(
        self,
        data: bytes,
        source: TransportAddress | Address | None,
        destination: TransportAddress | Address,
    ) -> None:
        """Put one datagram on the wire from one of this host's addresses."""
        if source is None:
            # The simulator cannot guess which of the host's addresses an engine meant.
            self.network.count("dropped-bad-source")
            return
        packet = Packet(bytes(data), _transport(source), _transport(destination))
        self.network.count("sent")
        for tap in self.network.taps:
            tap(self, packet)
        for interface in self.interfaces:
            if interface.ip == packet.source[0]:
                break
        else:
            # An engine may only send from an address the host has; anything else is a bug there.
            self.network.count("dropped-bad-source")
            return
        if packet.destination[0] in self.addresses:
            # Local delivery (between two ports of the same host) does not touch any link.
            self.network.schedule(0.0, lambda: self.receive_packet(packet, interface))
            return
        self.network.cross_link(packet, interface, inbound=False)

    def receive_packet(self, packet: Packet, interface: Interface) -> None:
        self.network.count("delivered")
        if self.endpoint is None:
            self.received.append((self.network.now, packet))
            return
        self.endpoint.receive(packet.data, packet.source, packet.destination, self.network.now)


def _transport(address: TransportAddress | Address) -> TransportAddress:
    """Accept (host, port) tuples and :class:`icerelay.net.Address`."""
    if isinstance(address, tuple):
        return (str(address[0]), int(address[1]))
    return (address.host, address.port)


class Network:
    """The simulator: virtual clock, event queue, the public realm, and everything attached.

    ``seed`` fixes every random choice (loss, random NAT ports); two runs with the same seed and the
    same calls are identical.
    """

    def __init__(self, seed: int = 0) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.internet = Realm(self, "internet")
        self.realms: list[Realm] = [self.internet]
        self.hosts: list[Host] = []
        self.nats: list[Nat] = []
        self.counters: Counter[str] = Counter()
        self.taps: list[Callable[[Host, Packet], None]] = []
        """Called with every datagram a host puts on the wire (tests, traces, benchmarks)."""
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()

    # --- building -----------------------------------------------------------------------------

    def add_host(
        self, name: str, ip: str | Sequence[str], realm: Realm | None = None, link: Link = Link()
    ) -> Host:
        """A host with one address (or several, all in ``realm``; the Internet by default)."""
        host = Host(self, name)
        for address in [ip] if isinstance(ip, str) else ip:
            (realm or self.internet).attach(host, address, link)
        self.hosts.append(host)
        return host

    def add_nat(
        self,
        name: str,
        external_ip: str,
        config: NatConfig,
        outside: Realm | None = None,
        inside_ip: str = "10.0.0.1",
        link: Link = Link(),
    ) -> Nat:
        """A NAT box with ``external_ip`` in ``outside`` (the Internet by default).

        Its private realm is ``nat.inside``: ``add_host(..., realm=nat.inside)`` puts hosts there.
        """
        from icerelay.netsim.nat import Nat

        nat = Nat(self, name, config)
        nat.outside_interface = (outside or self.internet).attach(nat, external_ip, link)
        inside = Realm(self, f"{name}-inside")
        nat.inside_interface = inside.attach(nat, inside_ip, Link())
        inside.gateway = nat.inside_interface
        nat.inside = inside
        self.realms.append(inside)
        self.nats.append(nat)
        return nat

    # --- packets ------------------------------------------------------------------------------

    def count(self, what: str) -> None:
        self.counters[what] += 1

    def cross_link(self, packet: Packet, interface: Interface, *, inbound: bool) -> None:
        """Carry a packet over ``interface``'s link: towards the node when ``inbound``."""
        link = interface.link
        if link.loss > 0.0 and self.rng.random() < link.loss:
            self.count("dropped-loss")
            return
        if inbound:
            self.schedule(link.delay, lambda: interface.node.receive_packet(packet, interface))
        else:
            self.schedule(link.delay, lambda: interface.realm.route(packet, interface))

    # --- time ---------------------------------------------------------------------------------

    def schedule(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` ``delay`` seconds from now (virtual time)."""
        heapq.heappush(self._queue, (self.now + max(delay, 0.0), next(self._sequence), action))

    def call_later(self, delay: float, action: Callable[[], None]) -> None:
        """Same as :meth:`schedule`; the name a test reads naturally for signalling."""
        self.schedule(delay, action)

    def _next_time(self) -> float | None:
        candidates: list[float] = []
        if self._queue:
            candidates.append(self._queue[0][0])
        for host in self.hosts:
            if host.endpoint is not None:
                timer = host.endpoint.next_timer()
                if timer is not None:
                    candidates.append(max(timer, self.now))
        return min(candidates) if candidates else None

    def _flush(self) -> None:
        """Collect what every engine wants to send and every event it has, until all is quiet."""
        for _ in range(MAX_STEPS_PER_INSTANT):
            busy = False
            for host in self.hosts:
                endpoint = host.endpoint
                if endpoint is None:
                    continue
                for datagram in endpoint.datagrams_to_send(self.now):
                    busy = True
                    if getattr(datagram, "transport", "udp") != "udp":
                        # The simulator carries UDP only; a TCP/TLS relay never connects here.
                        self.count("dropped-not-udp")
                        continue
                    host.send(datagram.data, datagram.source, datagram.destination)
                next_event = getattr(endpoint, "next_event", None)
                if next_event is not None:
                    while (event := next_event()) is not None:
                        busy = True
                        if host.on_event is not None:
                            host.on_event(host, event)
            if not busy:
                return
        raise SimulationError("engines keep producing output at one instant")

    def step(self, until: float) -> bool:
        """Advance to the next thing that happens, if it is no later than ``until``."""
        self._flush()
        at = self._next_time()
        if at is None or at > until:
            return False
        self.now = at
        for _ in range(MAX_STEPS_PER_INSTANT):
            progressed = False
            while self._queue and self._queue[0][0] <= self.now:
                _, _, action = heapq.heappop(self._queue)
                action()
                progressed = True
            for host in self.hosts:
                endpoint = host.endpoint
                if endpoint is None:
                    continue
                timer = endpoint.next_timer()
                if timer is not None and timer <= self.now:
                    endpoint.handle_timer(self.now)
                    progressed = True
            self._flush()
            if not progressed:
                return True
        raise SimulationError(f"an engine keeps asking for a timer at {self.now} without progress")

    def run(self, duration: float) -> None:
        """Run for ``duration`` virtual seconds."""
        until = self.now + duration
        while self.step(until):
            pass
        self.now = until

    def run_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Run until ``condition()`` holds (checked after each step) or ``timeout`` seconds pass."""
        until = self.now + timeout
        self._flush()
        while not condition():
            if not self.step(until):
                self.now = max(self.now, until)
                return condition()
        return True
