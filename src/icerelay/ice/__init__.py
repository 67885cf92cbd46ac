"""icerelay.ice: Interactive Connectivity Establishment (RFC 8445, RFC 5245 peers), sans I/O.

:class:`Agent` is the engine for one data stream (see :mod:`icerelay.ice.agent`), :class:`Session`
several streams under one agent; the modules split the protocol the way RFC 8445 does:
:mod:`.candidate` (section 5.1), :mod:`.pair` and :mod:`.checklist` (section 6.1.2),
:mod:`.gathering` (section 5.1.1), :mod:`.relay` (the TURN seam), :mod:`.events`, :mod:`.config`.
Around it: :mod:`.signalling` (SDP offer/answer), :mod:`.rtpconf` (Asterisk's rtp.conf). The
asyncio driver and aioice's API are I/O shells: :mod:`icerelay.aio.ice`, :mod:`icerelay.aio.aioice`.
"""

from icerelay.ice.agent import Agent
from icerelay.ice.candidate import (
    TYPE_PREFERENCE,
    Candidate,
    CandidateType,
    TransportAddress,
    candidate_priority,
    compute_foundation,
    make_local_candidate,
    prune_redundant,
)
from icerelay.ice.checklist import CheckList, CheckListState
from icerelay.ice.config import AgentConfig, Nomination
from icerelay.ice.events import (
    CandidateGathered,
    CandidatePairStateChanged,
    ConnectionState,
    ConnectionStateChanged,
    Datagram,
    DataReceived,
    Event,
    GatheringComplete,
    RoleChanged,
    SelectedPairChanged,
)
from icerelay.ice.pair import CandidatePair, PairInfo, PairState, pair_priority
from icerelay.ice.relay import RelayProvider, TurnRelay, TurnServer
from icerelay.ice.session import Session, StreamEvent

__all__ = [
    "TYPE_PREFERENCE",
    "Agent",
    "AgentConfig",
    "Candidate",
    "CandidateGathered",
    "CandidatePair",
    "CandidatePairStateChanged",
    "CandidateType",
    "CheckList",
    "CheckListState",
    "ConnectionState",
    "ConnectionStateChanged",
    "DataReceived",
    "Datagram",
    "Event",
    "GatheringComplete",
    "Nomination",
    "PairInfo",
    "PairState",
    "RelayProvider",
    "RoleChanged",
    "SelectedPairChanged",
    "Session",
    "StreamEvent",
    "TransportAddress",
    "TurnRelay",
    "TurnServer",
    "candidate_priority",
    "compute_foundation",
    "make_local_candidate",
    "pair_priority",
    "prune_redundant",
]
