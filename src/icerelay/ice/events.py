"""What the ICE agent reports (``Agent.next_event()``), and what it asks to send.

Events are small frozen dataclasses, in the style of aioquic's ``events.py``: the driver (asyncio,
the simulator, a benchmark) reads them after every call into the agent and reacts: signals new
candidates to the peer, starts media when connected, tears down on failure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from icerelay.ice.candidate import Candidate, TransportAddress
from icerelay.ice.pair import PairInfo, PairState


class ConnectionState(enum.Enum):
    """The agent's overall state, as applications see it (the WebRTC names).

    - ``new``: nothing checked yet;
    - ``checking``: connectivity checks are running, no component has a usable pair yet;
    - ``connected``: every component has a valid pair, so media can flow (RFC 8445 allows sending
      on a valid pair before nomination); checks may continue;
    - ``completed``: every component has a nominated (selected) pair and checking stopped;
    - ``disconnected``: consent (RFC 7675) has not been refreshed for a while; may recover;
    - ``failed``: every pair failed, or consent expired; media must stop;
    - ``closed``: the application closed the agent.
    """

    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    COMPLETED = "completed"
    DISCONNECTED = "disconnected"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class Datagram:
    """What the driver must send from ``source`` (a local socket) to ``destination``.

    ``transport`` is "udp" for everything but the traffic of a TURN relay reached over TCP or
    TLS: then ``data`` is a piece of the byte stream to write on the connection the driver keeps
    for (``source``, ``destination``, ``transport``), opening it on first use; what that
    connection returns goes to ``Agent.receive(data, destination, source, now, transport=...)``
    and its end to ``Agent.connection_lost(...)``.
    """

    data: bytes
    source: TransportAddress
    destination: TransportAddress
    transport: str = "udp"


@dataclass(frozen=True)
class CandidateGathered:
    """A local candidate is ready: signal it to the peer (trickle ICE, RFC 8838)."""

    candidate: Candidate


@dataclass(frozen=True)
class GatheringComplete:
    """No more local candidates will come: signal end-of-candidates."""


@dataclass(frozen=True)
class CandidatePairStateChanged:
    """A checklist pair changed state (Succeeded and Failed are the interesting ones)."""

    pair: PairInfo

    @property
    def state(self) -> PairState:
        return self.pair.state


@dataclass(frozen=True)
class SelectedPairChanged:
    """Media for ``component`` now goes over this pair.

    ``nominated`` is False while the agent uses the best valid pair ahead of nomination, True once
    the pair is the selected pair of RFC 8445 section 8.
    """

    component: int
    pair: PairInfo
    nominated: bool


@dataclass(frozen=True)
class RoleChanged:
    """The agent switched role after a role conflict (RFC 8445 section 7.3.1.1 / 7.2.5.1)."""

    controlling: bool


@dataclass(frozen=True)
class ConnectionStateChanged:
    state: ConnectionState


@dataclass(frozen=True)
class DataReceived:
    """A non-STUN datagram (RTP, RTCP, DTLS...) arrived for a component."""

    component: int
    data: bytes
    source: TransportAddress


Event = (
    CandidateGathered
    | GatheringComplete
    | CandidatePairStateChanged
    | SelectedPairChanged
    | RoleChanged
    | ConnectionStateChanged
    | DataReceived
)
