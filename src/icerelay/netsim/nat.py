"""NAT boxes with the behaviours RFC 4787 names.

RFC 4787 describes a UDP NAT by a few independent behaviours:

*Mapping* (section 4.1): when an internal endpoint X:x sends to Y:y, the NAT binds X:x to an
external address X':x'. Whether a later packet from X:x to another destination reuses X':x' is the
mapping behaviour: **endpoint-independent** (always reused, whatever the destination),
**address-dependent** (reused for the same destination IP) or **address-and-port-dependent**
(reused only for the same destination IP and port; the classic "symmetric NAT").

*Filtering* (section 5): which inbound packets to X':x' get through: **endpoint-independent**
(any), **address-dependent** (only from IPs X:x has sent to through this mapping) or
**address-and-port-dependent** (only from IP:port pairs X:x has sent to). The classic names: full
cone = EIM + EIF, restricted cone = EIM + ADF, port-restricted cone = EIM + APDF, symmetric = APDM
+ APDF.

*Hairpinning* (section 6): whether X can reach another internal host through that host's external
mapping; the hairpinned packet carries X's *external* mapping as source (REQ-9).

*Binding lifetime* (section 4.3): a mapping expires when unused; outbound traffic refreshes it
(REQ-6); whether inbound traffic does is configurable.

*Port assignment* (section 4.2.1): preserve the internal port when free, or allocate sequentially,
or at random.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from icerelay.netsim.network import Interface, Node, Packet, Realm, TransportAddress

if TYPE_CHECKING:
    from icerelay.netsim.network import Network


class Behaviour(enum.Enum):
    """Dependence of a mapping or a filter on the remote endpoint (RFC 4787 sections 4.1 and 5)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"

    @property
    def short(self) -> str:
        """The usual abbreviation without the M/F suffix: EI, AD or APD."""
        return {"endpoint-independent": "EI", "address-dependent": "AD"}.get(self.value, "APD")


class PortAssignment(enum.Enum):
    """How the NAT picks the external port of a new mapping (RFC 4787 section 4.2.1)."""

    PRESERVE = "preserve"
    SEQUENTIAL = "sequential"
    RANDOM = "random"


@dataclass(frozen=True)
class NatConfig:
    """The behaviour of one NAT box."""

    mapping: Behaviour = Behaviour.ENDPOINT_INDEPENDENT
    filtering: Behaviour = Behaviour.ADDRESS_AND_PORT_DEPENDENT
    hairpinning: bool = True
    binding_lifetime: float = 120.0
    """Seconds a mapping lives after the last packet that refreshes it (RFC 4787 REQ-5: >= 120)."""
    inbound_refresh: bool = False
    """Whether inbound packets refresh a mapping too (RFC 4787 section 4.3 leaves it open)."""
    port_assignment: PortAssignment = PortAssignment.PRESERVE
    first_port: int = 49152
    """Where sequential allocation starts, and the lower bound for random allocation."""

    @property
    def name(self) -> str:
        """A compact label such as ``EIM/APDF``."""
        return f"{self.mapping.short}M/{self.filtering.short}F"


FULL_CONE = NatConfig(Behaviour.ENDPOINT_INDEPENDENT, Behaviour.ENDPOINT_INDEPENDENT)
RESTRICTED_CONE = NatConfig(Behaviour.ENDPOINT_INDEPENDENT, Behaviour.ADDRESS_DEPENDENT)
PORT_RESTRICTED_CONE = NatConfig(
    Behaviour.ENDPOINT_INDEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT
)
SYMMETRIC = NatConfig(Behaviour.ADDRESS_AND_PORT_DEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT)
"""The classic names; derive variants with ``dataclasses.replace(SYMMETRIC, hairpinning=False)``."""


@dataclass
class Binding:
    """One mapping: internal X:x bound to external port x' (the external IP is the NAT's)."""

    internal: TransportAddress
    external_port: int
    key: object
    expires: float
    contacted: set[TransportAddress] = field(default_factory=set)
    """Remote endpoints X:x sent to via this mapping: the filtering state (RFC 4787 section 5)."""

    def admits(self, remote: TransportAddress, filtering: Behaviour) -> bool:
        if filtering is Behaviour.ENDPOINT_INDEPENDENT:
            return True
        if filtering is Behaviour.ADDRESS_DEPENDENT:
            return any(ip == remote[0] for ip, _ in self.contacted)
        return remote in self.contacted


class Nat(Node):
    """A NAT box between its private realm (``inside``) and an outer realm.

    Built by :meth:`icerelay.netsim.Network.add_nat`; ``bindings`` can be inspected by tests.
    """

    inside: Realm
    inside_interface: Interface
    outside_interface: Interface

    def __init__(self, network: Network, name: str, config: NatConfig) -> None:
        super().__init__(network, name)
        self.config = config
        self._by_key: dict[tuple[TransportAddress, object], Binding] = {}
        self._by_port: dict[int, Binding] = {}
        self._next_port = itertools.count(config.first_port)

    @property
    def external_ip(self) -> str:
        return self.outside_interface.ip

    @property
    def bindings(self) -> list[Binding]:
        """The mappings alive now."""
        now = self.network.now
        return [binding for binding in self._by_port.values() if binding.expires > now]

    # --- mapping ------------------------------------------------------------------------------

    def _mapping_key(self, destination: TransportAddress) -> object:
        mapping = self.config.mapping
        if mapping is Behaviour.ENDPOINT_INDEPENDENT:
            return None
        if mapping is Behaviour.ADDRESS_DEPENDENT:
            return destination[0]
        return destination

    def _expire(self, binding: Binding) -> None:
        self._by_key.pop((binding.internal, binding.key), None)
        self._by_port.pop(binding.external_port, None)

    def _live(self, binding: Binding | None) -> Binding | None:
        if binding is not None and binding.expires <= self.network.now:
            self._expire(binding)
            return None
        return binding

    def _port_in_use(self, port: int) -> bool:
        return self._live(self._by_port.get(port)) is not None

    def _allocate_port(self, internal_port: int) -> int:
        assignment = self.config.port_assignment
        if assignment is PortAssignment.PRESERVE and not self._port_in_use(internal_port):
            return internal_port
        if assignment is PortAssignment.RANDOM:
            while True:
                port = self.network.rng.randint(self.config.first_port, 65535)
                if not self._port_in_use(port):
                    return port
        candidates: Iterable[int]
        if assignment is PortAssignment.PRESERVE:
            # Port taken by another mapping: the next free one above it, as many NATs do.
            candidates = itertools.chain(
                range(internal_port + 1, 65536), range(1024, internal_port)
            )
        else:
            candidates = (port for port in self._next_port if port < 65536)
        for port in candidates:
            if not self._port_in_use(port):
                return port
        raise RuntimeError(f"NAT {self.name} ran out of ports")

    def outbound_binding(
        self, internal: TransportAddress, destination: TransportAddress
    ) -> Binding:
        """Find or create the mapping for X:x sending to ``destination``, and refresh it."""
        key = self._mapping_key(destination)
        binding = self._live(self._by_key.get((internal, key)))
        if binding is None:
            binding = Binding(internal, self._allocate_port(internal[1]), key, 0.0)
            self._by_key[(internal, key)] = binding
            self._by_port[binding.external_port] = binding
        binding.expires = self.network.now + self.config.binding_lifetime
        binding.contacted.add(destination)
        return binding

    # --- forwarding ---------------------------------------------------------------------------

    def receive_packet(self, packet: Packet, interface: Interface) -> None:
        if interface is self.inside_interface:
            self._from_inside(packet)
        else:
            self._from_outside(packet)

    def _from_inside(self, packet: Packet) -> None:
        binding = self.outbound_binding(packet.source, packet.destination)
        external = (self.external_ip, binding.external_port)
        translated = Packet(packet.data, external, packet.destination)
        if packet.destination[0] == self.external_ip:
            if not self.config.hairpinning:
                self.network.count("dropped-no-hairpin")
                return
            self.network.count("hairpinned")
            self._from_outside(translated)
            return
        self.network.cross_link(translated, self.outside_interface, inbound=False)

    def _from_outside(self, packet: Packet) -> None:
        binding = self._live(self._by_port.get(packet.destination[1]))
        if binding is None:
            self.network.count("dropped-no-mapping")
            return
        if not binding.admits(packet.source, self.config.filtering):
            self.network.count("dropped-filtered")
            return
        if self.config.inbound_refresh:
            binding.expires = self.network.now + self.config.binding_lifetime
        translated = Packet(packet.data, packet.source, binding.internal)
        self.network.cross_link(translated, self.inside_interface, inbound=False)
