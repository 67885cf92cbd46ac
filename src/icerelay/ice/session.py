"""Several data streams under one ICE agent (RFC 8445 sections 6.1.2, 6.1.4, 7.2.5.3.3).

A SIP call with audio and video has two data streams (two ``m=`` lines). RFC 8445 runs them as
one agent: one set of credentials (usually session-level ``a=ice-ufrag``/``a=ice-pwd``), one role
and tie-breaker, one pacing timer Ta for all checks, and one *checklist set* whose freezing works
across streams: the first checklist unfreezes one pair per foundation, and a success in the audio
stream unfreezes the pairs of the same foundation in the video stream, which then usually succeed
at the first try. A :class:`Session` is that agent, built from one
:class:`~icerelay.ice.agent.Agent` per data stream; every stream keeps its own sockets,
candidates, pairs and selected pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from icerelay.errors import IceError
from icerelay.ice.agent import Agent
from icerelay.ice.candidate import Candidate, TransportAddress
from icerelay.ice.checklist import CheckList
from icerelay.ice.config import AgentConfig
from icerelay.ice.events import ConnectionState, Datagram, Event
from icerelay.ice.gathering import RelayFactory
from icerelay.ice.pacing import Pacer
from icerelay.ice.relay import TurnServer

if TYPE_CHECKING:
    from random import Random


@dataclass(frozen=True)
class StreamEvent:
    """An event of one data stream (its index in the session)."""

    stream: int
    event: Event


class Session:
    """One ICE agent for several data streams; ``streams`` gives each stream's component count.

    The interface is the agent's, with a stream index where it matters (gathering, candidates,
    media); it is a sans-I/O engine too (``receive``, ``datagrams_to_send``, ``next_timer``,
    ``handle_timer``, ``next_event``).
    """

    def __init__(
        self,
        *,
        controlling: bool,
        streams: Sequence[int] = (1,),
        lite: bool = False,
        config: AgentConfig | None = None,
        turn_servers: Sequence[TurnServer] = (),
        relay_factory: RelayFactory | None = None,
        rng: Random,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        tie_breaker: int | None = None,
    ) -> None:
        if not streams:
            raise IceError("a session has at least one data stream")
        self.config = config or AgentConfig()
        self.agents: list[Agent] = []
        for components in streams:
            agent = Agent(
                controlling=controlling,
                components=components,
                lite=lite,
                config=self.config,
                turn_servers=turn_servers,
                relay_factory=relay_factory,
                rng=rng,
                local_ufrag=local_ufrag,
                local_pwd=local_pwd,
                tie_breaker=tie_breaker,
            )
            # The first stream draws the credentials and tie-breaker; the others share them.
            local_ufrag, local_pwd = agent.local_username, agent.local_password
            tie_breaker = agent.tie_breaker
            self.agents.append(agent)
        self.pacer = Pacer(self.config.ta, self.agents)
        for agent in self.agents:
            agent.join(self, self.pacer)
        self._next_stream = 0

    # --- Coordinator (called by the agents) ---------------------------------------------------

    def checklists(self) -> list[CheckList]:
        """The checklist set, in stream order (the order of the m= lines)."""
        return [agent.checklist for agent in self.agents]

    def set_role(self, controlling: bool) -> None:
        for agent in self.agents:
            agent.apply_role(controlling, announce=True)

    # --- properties -------------------------------------------------------------------------

    @property
    def local_username(self) -> str:
        return self.agents[0].local_username

    @property
    def local_password(self) -> str:
        return self.agents[0].local_password

    @property
    def controlling(self) -> bool:
        return self.agents[0].controlling

    @property
    def state(self) -> ConnectionState:
        """The worst state of the streams (all must work for the session to work)."""
        states = [agent.state for agent in self.agents]
        for state in (
            ConnectionState.CLOSED,
            ConnectionState.FAILED,
            ConnectionState.DISCONNECTED,
            ConnectionState.NEW,
            ConnectionState.CHECKING,
            ConnectionState.CONNECTED,
        ):
            if state in states:
                return state
        return ConnectionState.COMPLETED

    def local_candidates(self, stream: int) -> list[Candidate]:
        return self.agents[stream].local_candidates

    # --- application interface --------------------------------------------------------------

    def gather(
        self, addresses: Sequence[Mapping[int, Sequence[TransportAddress]]], now: float
    ) -> None:
        """Gather for every stream: ``addresses[stream]`` is ``{component: [address, ...]}``."""
        if len(addresses) != len(self.agents):
            raise IceError(f"need local addresses for {len(self.agents)} streams")
        for agent, stream_addresses in zip(self.agents, addresses, strict=True):
            agent.gather(stream_addresses, now)

    def set_remote_credentials(
        self, ufrag: str, pwd: str, now: float, *, lite: bool = False
    ) -> None:
        for agent in self.agents:
            agent.set_remote_credentials(ufrag, pwd, now, lite=lite)

    def add_remote_candidate(self, stream: int, candidate: Candidate | None, now: float) -> None:
        self.agents[stream].add_remote_candidate(candidate, now)

    def send(self, stream: int, data: bytes, component: int = 1, *, now: float) -> None:
        self.agents[stream].send(data, component, now=now)

    def restart(self, now: float) -> None:
        """ICE restart of every stream with one new set of credentials."""
        first = self.agents[0]
        first.restart(now)
        for agent in self.agents[1:]:
            agent.restart(now, local_ufrag=first.local_username, local_pwd=first.local_password)

    def close(self, now: float) -> None:
        for agent in self.agents:
            agent.close(now)

    # --- driver interface -------------------------------------------------------------------

    def receive(
        self, data: bytes, source: TransportAddress, destination: TransportAddress, now: float
    ) -> None:
        """Feed a datagram; the stream is the one that owns the socket it arrived on."""
        destination = (str(destination[0]), int(destination[1]))
        for agent in self.agents:
            if agent.owns(destination):
                agent.receive(data, source, destination, now)
                return

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out: list[Datagram] = []
        for agent in self.agents:
            out.extend(agent.datagrams_to_send(now))
        return out

    def next_timer(self) -> float | None:
        timers = [agent.next_timer() for agent in self.agents]
        return min((t for t in timers if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        for agent in self.agents:
            agent.handle_timer(now)

    def next_event(self) -> StreamEvent | None:
        """The next event of any stream, taking the streams in turn."""
        count = len(self.agents)
        for offset in range(count):
            index = (self._next_stream + offset) % count
            event = self.agents[index].next_event()
            if event is not None:
                self._next_stream = (index + 1) % count
                return StreamEvent(index, event)
        return None
