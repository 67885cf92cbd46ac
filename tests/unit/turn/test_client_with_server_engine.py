"""Our sans-I/O TURN client against our sans-I/O TURN server engine, in virtual time, no sockets.

This is how the ICE agent's simulator runs the client: every deadline is exact, so a whole
30-minute call (refreshes, permission and channel refreshes, nonce expiry) takes milliseconds,
and deterministic loss exercises the retransmissions against a real server implementation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from icerelay.stun import Address
from icerelay.turn.client import (
    Allocation,
    AllocationClosed,
    AllocationRefreshed,
    AllocationSucceeded,
    ChannelBound,
    DataReceived,
    Event,
    State,
)
from icerelay.turn.client.allocation import Transport

try:
    from icerelay.daemon.turn_config import TurnServerConfig
    from icerelay.turn.server.engine import TurnServerEngine
except ImportError as exc:  # pragma: no cover - only while the server is being written
    pytest.skip(f"icerelay.turn.server.engine missing: {exc}", allow_module_level=True)

SERVER = Address("192.0.2.1", 3478)
CLIENT = Address("192.0.2.50", 40000)
PEER = Address("198.51.100.77", 6000)


class _Binder:
    """Every relayed port binds (there are no sockets in this world)."""

    def bind(self, address: tuple[str, int], dont_fragment: bool) -> bool:
        return True

    def release(self, address: tuple[str, int]) -> None:
        pass


@dataclass
class World:
    """Client engine, server engine and an echoing peer on one virtual clock."""

    client: Allocation
    server: TurnServerEngine
    transport: str = "udp"
    loss: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    now: float = 0.0
    events: list[Event] = field(default_factory=list)
    peer_received: list[bytes] = field(default_factory=list)
    relayed: Address | None = None

    def lost(self) -> bool:
        # Loss only on UDP: TCP/TLS streams are reliable.
        return self.transport == "udp" and self.rng.random() < self.loss

    def flush(self) -> None:
        for _ in range(1000):
            moved = False
            for datagram in self.client.datagrams_to_send(self.now):
                moved = True
                if not self.lost():
                    self.server.receive(
                        datagram.data,
                        (CLIENT.host, CLIENT.port),
                        (datagram.destination.host, datagram.destination.port),
                        self.transport,
                        self.now,
                    )
            for data, source, destination, _transport in self.server.datagrams_to_send():
                moved = True
                if self.lost():
                    continue
                if tuple(destination) == (CLIENT.host, CLIENT.port):
                    self.client.receive(data, SERVER, CLIENT, self.now)
                elif tuple(destination) == (PEER.host, PEER.port):
                    self.peer_received.append(data)
                    # The peer echoes to whoever sent it: the relayed address.
                    self.server.receive_relayed(
                        b"echo:" + data, (PEER.host, PEER.port), source, self.now
                    )
            while (event := self.client.next_event()) is not None:
                moved = True
                self.events.append(event)
                if isinstance(event, AllocationSucceeded):
                    self.relayed = event.relayed_address
            if not moved:
                return
        raise AssertionError("no quiescence")

    def run_until(self, target: float) -> None:
        while True:
            deadlines = [t for t in (self.client.next_timer(), self.server.next_timer()) if t]
            deadline = min(deadlines, default=None)
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
            self.flush()
        self.now = target
        self.flush()


def make_world(transport: Transport = "udp", loss: float = 0.0, nonce_lifetime: int = 600) -> World:
    config = TurnServerConfig(
        enabled=True,
        listen=[(SERVER.host, SERVER.port)],
        realm="sim.test",
        users={"alice": "wonderland"},
        relay_ipv4=SERVER.host,
        relay_port_min=50000,
        relay_port_max=50099,
        # Documentation addresses are denied by default (safe defaults); this world needs them.
        allow_peers=["198.51.100.0/24"],
        nonce_lifetime=nonce_lifetime,
        unauthenticated_rate=0,
    )
    server = TurnServerEngine(
        config.settings(), _Binder(), rng=random.Random(5), nonce_key=b"k" * 32
    )
    client = Allocation(
        SERVER,
        "alice",
        "wonderland",
        transport=transport,
        rng=random.Random(2),
    )
    world = World(client, server, transport=transport, loss=loss)
    client.start(0.0)
    world.flush()
    return world


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_thirty_minute_call_in_virtual_time(transport: Transport) -> None:
    world = make_world(transport)
    assert isinstance(world.events[0], AllocationSucceeded)
    for second in range(1, 1801):
        world.run_until(float(second))
        world.client.send_to(b"t=%d" % second, PEER, world.now)
        world.flush()
    client = world.client
    assert client.state is State.ALLOCATED
    # Every packet reached the peer and every echo came back, in order.
    assert world.peer_received == [b"t=%d" % s for s in range(1, 1801)]
    received = [e.data for e in world.events if isinstance(e, DataReceived)]
    assert received == [b"echo:t=%d" % s for s in range(1, 1801)]
    # Refreshed before each expiry (600 s lifetime: at 540, 1080, 1620) ...
    assert len([e for e in world.events if isinstance(e, AllocationRefreshed)]) == 3
    # ... one channel, bound after the first packet and refreshed, carrying the rest both ways.
    assert len([e for e in world.events if isinstance(e, ChannelBound)]) == 1
    assert client.counters.send_indications_sent == 1
    assert client.counters.channel_data_sent == 1799
    assert client.counters.channel_data_received >= 1798
    # The server's nonces last 600 s: later requests met 438 and were retried with a new one.
    assert client.counters.stale_nonces >= 2
    assert client.counters.malformed == client.counters.integrity_failures == 0
    assert world.server.counters["dropped_no_permission"] == 0
    assert world.server.counters["dropped_no_channel"] == 0
    client.close(world.now)
    world.flush()
    assert world.events[-1] == AllocationClosed(confirmed=True)
    assert world.server.allocations == {}


def test_lossy_path_still_allocates_and_relays() -> None:
    world = make_world("udp", loss=0.2)
    world.run_until(60.0)
    assert any(isinstance(e, AllocationSucceeded) for e in world.events)
    for second in range(61, 661):
        world.run_until(float(second))
        world.client.send_to(b"%d" % second, PEER, world.now)
        world.flush()
    world.run_until(700.0)
    assert world.client.state is State.ALLOCATED
    assert world.client.counters.retransmissions > 0
    received = [e for e in world.events if isinstance(e, DataReceived)]
    # 20% loss on each of four hops: about 40% of round trips complete; far more than none.
    assert len(received) > 150
    assert any(isinstance(e, AllocationRefreshed) for e in world.events)


def test_peer_without_permission_is_filtered_by_the_server() -> None:
    world = make_world()
    assert world.relayed is not None
    world.server.receive_relayed(
        b"unsolicited", (PEER.host, PEER.port), (world.relayed.host, world.relayed.port), 0.0
    )
    world.flush()
    assert not any(isinstance(e, DataReceived) for e in world.events)
    world.client.create_permission([PEER], world.now)
    world.flush()
    world.server.receive_relayed(
        b"now allowed", (PEER.host, PEER.port), (world.relayed.host, world.relayed.port), 0.0
    )
    world.flush()
    assert DataReceived(PEER, b"now allowed") in world.events
    assert world.client.counters.data_indications_received == 1
