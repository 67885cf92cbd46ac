"""icerelay's own STUN and TURN server engines, attached to simulator hosts.

The simulator runs the real engines, not stand-ins: :class:`StunServer` wraps the Binding engine of
``icerelay stun`` (:class:`icerelay.stun.binding.BindingEngine`), :class:`TurnServer` the TURN
server engine (:class:`icerelay.turn.server.engine.TurnServerEngine`). Both send the shared
:class:`icerelay.net.Datagram`, which the simulator accepts as it is; the adapters only translate
received ``(ip, port)`` tuples (what the simulator delivers, for the ICE agent's sake) and, for
TURN, stand in for the sockets of relayed addresses: in the simulator every port of the host's IP
is already "bound".
"""

from __future__ import annotations

import random

from icerelay.net import Address, Datagram
from icerelay.netsim.network import TransportAddress
from icerelay.stun.binding import BindingEngine
from icerelay.turn.server.engine import TurnServerEngine
from icerelay.turn.server.settings import TurnServerSettings


class StunServer:
    """A STUN server (RFC 8489 Binding) on a simulator host."""

    def __init__(self, engine: BindingEngine | None = None) -> None:
        self.engine = engine or BindingEngine(software="icerelay-netsim")

    def receive(
        self, data: bytes, source: TransportAddress, destination: TransportAddress, now: float
    ) -> None:
        self.engine.receive(data, Address(*source), Address(*destination), now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        # The Binding engine names the local address of every answer: the simulator needs it.
        return self.engine.datagrams_to_send(now)

    def next_timer(self) -> float | None:
        return self.engine.next_timer()

    def handle_timer(self, now: float) -> None:
        self.engine.handle_timer(now)


class _SimulatedBinder:
    """Relayed "sockets": on a simulator host any port of its IP can be bound."""

    def __init__(self) -> None:
        self.bound: set[tuple[str, int]] = set()

    def bind(self, address: tuple[str, int], dont_fragment: bool) -> bool:
        if address in self.bound:
            return False
        self.bound.add(address)
        return True

    def release(self, address: tuple[str, int]) -> None:
        self.bound.discard(address)


class TurnServer:
    """A TURN server (RFC 8656, UDP) on a simulator host listening at ``listen``.

    ``users`` are static long-term credentials. Peers in the documentation and private ranges the
    simulator uses are allowed (a real server denies them by default); ``allow_peers`` narrower
    than everything puts the server's default deny list back in force for the rest (e.g. the
    documentation ranges only: private host candidates are refused, as by a real server).
    """

    def __init__(
        self,
        listen: TransportAddress,
        users: dict[str, str],
        *,
        realm: str = "netsim",
        settings: TurnServerSettings | None = None,
        allow_peers: tuple[str, ...] = ("0.0.0.0/0",),
        seed: int = 0,
    ) -> None:
        self.listen = listen
        self.binder = _SimulatedBinder()
        self.engine = TurnServerEngine(
            settings
            or TurnServerSettings(
                listen=(listen,),
                realm=realm,
                users=users,
                relay_ipv4=listen[0],
                relay_port_min=50000,
                relay_port_max=50999,
                allow_peers=allow_peers,
                unauthenticated_rate=0,
            ),
            self.binder,
            # The simulator is deterministic: seeded port order, tokens, transaction ids.
            rng=random.Random(seed),
            nonce_key=b"netsim-nonce-key-0123456789abcdef",
        )

    def receive(
        self, data: bytes, source: TransportAddress, destination: TransportAddress, now: float
    ) -> None:
        if destination == self.listen:
            self.engine.receive(data, source, destination, "udp", now)
        else:
            self.engine.receive_relayed(data, source, destination, now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        return [
            Datagram(data, Address(*source), Address(*destination), transport)
            for data, source, destination, transport in self.engine.datagrams_to_send()
        ]

    def next_timer(self) -> float | None:
        return self.engine.next_timer()

    def handle_timer(self, now: float) -> None:
        self.engine.handle_timer(now)
