"""Two ICE agents on the simulator, with NATs, a STUN server and signalling between them.

This is the fixture behind the NAT matrix, the simulator tests and the benchmark: it builds the
topology, runs both agents with trickle signalling (each candidate reaches the peer
``signalling_delay`` after it was gathered, as over a SIP or WebSocket channel), and reports how
the session ended::

    result = IceScenario(left_nat=FULL_CONE, right_nat=SYMMETRIC).run()
    result.connected, result.left_local_type, result.time_to_connected

Addresses: the STUN server is 198.51.100.1:3478, the TURN server (``turn=True``; icerelay's own
TURN server engine) 198.51.100.2:3478. A side behind a NAT has host 10.0.0.2 (both
sides: the same private address, as in two home networks) behind 203.0.113.1 (left) or
203.0.113.2 (right); a side without NAT has the public address 192.0.2.1 (left) or 192.0.2.2.
With ``outer_nat`` (a carrier-grade NAT at 203.0.113.100) those become 100.64.0.1 and
100.64.0.2, inside it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from icerelay.ice import (
    Agent,
    AgentConfig,
    CandidateGathered,
    ConnectionState,
    ConnectionStateChanged,
    GatheringComplete,
)
from icerelay.ice import TurnServer as TurnServerAccount
from icerelay.netsim.nat import Nat, NatConfig
from icerelay.netsim.network import Host, Link, Network, Realm
from icerelay.netsim.servers import StunServer, TurnServer

STUN_SERVER = ("198.51.100.1", 3478)
TURN_SERVER = ("198.51.100.2", 3478)
TURN_USER, TURN_PASSWORD = "netsim", "relay-password"
PRIVATE_IP = "10.0.0.2"
NAT_IPS = ("203.0.113.1", "203.0.113.2")
PUBLIC_IPS = ("192.0.2.1", "192.0.2.2")
CGN_IP = "203.0.113.100"
CGN_INSIDE_IPS = ("100.64.0.1", "100.64.0.2")
BASE_PORT = 5000


@dataclass
class SideResult:
    """How one agent ended."""

    state: ConnectionState
    local_type: str | None
    remote_type: str | None
    nominated: bool
    connected_at: float | None
    checks_sent: int


@dataclass
class ScenarioResult:
    """The outcome of one run; ``left``/``right`` per agent."""

    left: SideResult
    right: SideResult
    duration: float

    @property
    def connected(self) -> bool:
        """Both agents have a working pair for every component."""
        good = (ConnectionState.CONNECTED, ConnectionState.COMPLETED)
        return self.left.state in good and self.right.state in good

    @property
    def pair_types(self) -> str:
        """``local/remote`` candidate types of the left agent's selected pair, or ``-``."""
        if not self.connected or self.left.local_type is None:
            return "-"
        return f"{self.left.local_type}/{self.left.remote_type}"

    @property
    def time_to_connected(self) -> float | None:
        """When the later of the two agents became connected."""
        times = [self.left.connected_at, self.right.connected_at]
        if any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)


@dataclass
class _Side:
    host: Host
    agent: Agent
    events: list[tuple[float, Any]] = field(default_factory=list)
    connected_at: float | None = None


class IceScenario:
    """Build the network and the two agents; :meth:`run` runs the session.

    ``turn_allow_peers`` is the TURN server's allow list: everything by default; the simulated
    public ranges only bring back a real server's default deny list for the private ones (so
    host candidates like 10.0.0.2 are refused as peers).
    """

    def __init__(
        self,
        *,
        left_nat: NatConfig | None = None,
        right_nat: NatConfig | None = None,
        same_nat: bool = False,
        outer_nat: NatConfig | None = None,
        seed: int = 0,
        components: int = 1,
        rtt: float = 0.02,
        loss: float = 0.0,
        signalling_delay: float = 0.05,
        left_config: AgentConfig | None = None,
        right_config: AgentConfig | None = None,
        left_controlling: bool = True,
        right_controlling: bool = False,
        right_lite: bool = False,
        use_stun: bool = True,
        turn: bool = False,
        turn_allow_peers: tuple[str, ...] = ("0.0.0.0/0",),
    ) -> None:
        self.network = Network(seed)
        self.signalling_delay = signalling_delay
        stun_host = self.network.add_host("stun", STUN_SERVER[0])
        stun_host.attach(StunServer())
        stun_servers = (STUN_SERVER,) if use_stun else ()
        turn_servers: tuple[TurnServerAccount, ...] = ()
        if turn:
            turn_host = self.network.add_host("turn", TURN_SERVER[0])
            turn_host.attach(
                TurnServer(TURN_SERVER, {TURN_USER: TURN_PASSWORD}, allow_peers=turn_allow_peers)
            )
            turn_servers = (TurnServerAccount(TURN_SERVER, TURN_USER, TURN_PASSWORD),)
        # ``loss`` is end to end, one way: split over the two access links it crosses.
        link = Link(delay=rtt / 4, loss=1.0 - (1.0 - loss) ** 0.5)
        shared: Nat | None = None
        if same_nat and left_nat is not None:
            # Both hosts in one private network behind one NAT: they reach each other directly.
            shared = self.network.add_nat("nat", NAT_IPS[0], left_nat)
        outer: Nat | None = None
        if outer_nat is not None:
            # Carrier-grade NAT: both sides (and their own NATs) behind one more NAT. STUN shows
            # its address for both, so a direct path needs it to hairpin (RFC 4787 section 6).
            outer = self.network.add_nat("cgn", CGN_IP, outer_nat, inside_ip="100.64.0.254")
        sides: list[_Side] = []
        for index, (nat_config, controlling, config) in enumerate(
            (
                (left_nat, left_controlling, left_config),
                (right_nat, right_controlling, right_config),
            )
        ):
            name = ("left", "right")[index]
            realm: Realm | None = outer.inside if outer is not None else None
            ip = CGN_INSIDE_IPS[index] if outer is not None else PUBLIC_IPS[index]
            if shared is not None:
                realm, ip = shared.inside, f"10.0.0.{2 + index}"
            elif nat_config is not None:
                external = CGN_INSIDE_IPS[index] if outer is not None else NAT_IPS[index]
                nat = self.network.add_nat(f"{name}-nat", external, nat_config, outside=realm)
                realm, ip = nat.inside, PRIVATE_IP
            host = self.network.add_host(name, ip, realm=realm, link=link)
            base_config = config or AgentConfig()
            if use_stun and not base_config.stun_servers:
                base_config = _with_stun(base_config, stun_servers)
            lite = right_lite and index == 1
            agent = Agent(
                controlling=controlling,
                components=components,
                lite=lite,
                config=base_config,
                turn_servers=turn_servers,
                rng=random.Random(seed * 1000 + index),
            )
            side = _Side(host, agent)
            host.attach(agent, self._make_handler(side, index))
            sides.append(side)
        self.left, self.right = sides
        self._sides = sides
        self.components = components

    @property
    def left_agent(self) -> Agent:
        return self.left.agent

    @property
    def right_agent(self) -> Agent:
        return self.right.agent

    def _make_handler(self, side: _Side, index: int) -> Any:
        def handle(host: Host, event: object) -> None:
            side.events.append((self.network.now, event))
            peer = self._sides[1 - index]
            if isinstance(event, CandidateGathered):
                candidate = event.candidate
                self.network.call_later(
                    self.signalling_delay,
                    lambda: peer.agent.add_remote_candidate(candidate, self.network.now),
                )
            elif isinstance(event, GatheringComplete):
                self.network.call_later(
                    self.signalling_delay,
                    lambda: peer.agent.add_remote_candidate(None, self.network.now),
                )
            elif (
                isinstance(event, ConnectionStateChanged)
                and event.state in (ConnectionState.CONNECTED, ConnectionState.COMPLETED)
                and side.connected_at is None
            ):
                side.connected_at = self.network.now

        return handle

    def start(self) -> None:
        """Gather on both sides and exchange credentials (after the signalling delay)."""
        now = self.network.now
        for index, side in enumerate(self._sides):
            ip = side.host.addresses[0]
            addresses = {c: [(ip, BASE_PORT + c - 1)] for c in range(1, self.components + 1)}
            side.agent.gather(addresses, now)
            peer = self._sides[1 - index]
            ufrag, pwd = side.agent.local_username, side.agent.local_password
            lite = side.agent.lite

            def give(
                peer: _Side = peer, ufrag: str = ufrag, pwd: str = pwd, lite: bool = lite
            ) -> None:
                peer.agent.set_remote_credentials(ufrag, pwd, self.network.now, lite=lite)

            self.network.call_later(self.signalling_delay, give)

    def restart(self) -> None:
        """ICE restart initiated by the left agent, signalled like an updated offer/answer."""
        now = self.network.now
        for side in self._sides:
            side.agent.restart(now)
        for index, side in enumerate(self._sides):
            peer = self._sides[1 - index]
            ufrag, pwd = side.agent.local_username, side.agent.local_password

            def give(peer: _Side = peer, ufrag: str = ufrag, pwd: str = pwd) -> None:
                peer.agent.set_remote_credentials(ufrag, pwd, self.network.now)

            self.network.call_later(self.signalling_delay, give)

    def states(self, side: str = "left") -> list[tuple[float, ConnectionState]]:
        """(time, state) of every ConnectionStateChanged one agent reported."""
        chosen = self.left if side == "left" else self.right
        return [(t, e.state) for t, e in chosen.events if isinstance(e, ConnectionStateChanged)]

    def both(self, *states: ConnectionState) -> bool:
        return all(side.agent.state in states for side in self._sides)

    def run(self, timeout: float = 60.0, *, until_completed: bool = True) -> ScenarioResult:
        """Start (if not started) and run until both agents are done or ``timeout`` passes."""
        if not self.left.agent.gatherer.started:
            self.start()
        done_states = (
            (ConnectionState.COMPLETED,)
            if until_completed
            else (ConnectionState.CONNECTED, ConnectionState.COMPLETED)
        )
        final = (ConnectionState.FAILED, ConnectionState.CLOSED)

        def finished() -> bool:
            states = [side.agent.state for side in self._sides]
            return all(s in done_states for s in states) or any(s in final for s in states)

        started = self.network.now
        self.network.run_until(finished, timeout)
        if any(side.agent.state in final for side in self._sides):
            # Let the other side notice too (it fails on its own checks or consent).
            self.network.run_until(
                lambda: all(side.agent.state in final for side in self._sides), timeout
            )
        return self.result(self.network.now - started)

    def result(self, duration: float = 0.0) -> ScenarioResult:
        results = []
        for side in self._sides:
            pair = side.agent.selected_pair(1)
            results.append(
                SideResult(
                    state=side.agent.state,
                    local_type=pair.local.type.value if pair else None,
                    remote_type=pair.remote.type.value if pair else None,
                    nominated=bool(pair and pair.nominated),
                    connected_at=side.connected_at,
                    checks_sent=side.agent.checks_sent,
                )
            )
        return ScenarioResult(results[0], results[1], duration)


def _with_stun(config: AgentConfig, servers: tuple[tuple[str, int], ...]) -> AgentConfig:
    return replace(config, stun_servers=servers)
