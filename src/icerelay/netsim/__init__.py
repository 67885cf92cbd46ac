"""icerelay.netsim: a deterministic network simulator for sans-I/O engines.

A virtual clock and event queue, hosts with addresses, links with delay and loss, and NAT boxes with
the RFC 4787 behaviours, so that ICE (and STUN, TURN) can be tested across every kind of NAT exactly
and in milliseconds of real time. See :mod:`icerelay.netsim.network` for the model.
"""

from icerelay.netsim.nat import (
    FULL_CONE,
    PORT_RESTRICTED_CONE,
    RESTRICTED_CONE,
    SYMMETRIC,
    Behaviour,
    Binding,
    Nat,
    NatConfig,
    PortAssignment,
)
from icerelay.netsim.network import (
    DatagramLike,
    Endpoint,
    Host,
    Interface,
    Link,
    Network,
    Packet,
    Realm,
    SimulationError,
    TransportAddress,
)
from icerelay.netsim.servers import StunServer, TurnServer

__all__ = [
    "FULL_CONE",
    "PORT_RESTRICTED_CONE",
    "RESTRICTED_CONE",
    "SYMMETRIC",
    "Behaviour",
    "Binding",
    "DatagramLike",
    "Endpoint",
    "Host",
    "Interface",
    "Link",
    "Nat",
    "NatConfig",
    "Network",
    "Packet",
    "PortAssignment",
    "Realm",
    "SimulationError",
    "StunServer",
    "TransportAddress",
    "TurnServer",
]
