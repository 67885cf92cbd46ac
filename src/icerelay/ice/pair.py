"""Candidate pairs and their states (RFC 8445 sections 6.1.2.2-6.1.2.6).

A *candidate pair* is a local and a remote candidate of the same component. Each pair in a
checklist moves through the states of section 6.1.2.6:

- **Frozen**: not checked yet, and not allowed to be until a pair with the same foundation
  succeeds (or nothing else with that foundation is being checked);
- **Waiting**: may be checked when its turn comes;
- **In-Progress**: a check was sent and no answer has arrived yet;
- **Succeeded**: a check produced a successful, symmetric response;
- **Failed**: the check timed out, got an unrecoverable error, or was not symmetric.

A successful check yields a *valid pair* (section 7.2.5.3.2): the local candidate whose address
equals the XOR-MAPPED-ADDRESS of the response, with the pair's remote candidate. It is often the
checked pair itself, but behind a NAT it pairs a server- or peer-reflexive local candidate.
A valid pair that has been *nominated* (section 8.1.1) is what media uses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from icerelay.ice.candidate import Candidate, TransportAddress


class PairState(enum.Enum):
    """The candidate pair states of RFC 8445 section 6.1.2.6."""

    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def pair_priority(controlling_priority: int, controlled_priority: int) -> int:
    """RFC 8445 section 6.1.2.3: ``2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0)``.

    G is the priority of the controlling agent's candidate, D the controlled agent's; both agents
    compute the same value for the same pair, so they order their checklists alike.
    """
    g, d = controlling_priority, controlled_priority
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


@dataclass(frozen=True)
class PairInfo:
    """An immutable snapshot of a pair for events and logs."""

    local: Candidate
    remote: Candidate
    state: PairState
    nominated: bool

    @property
    def component(self) -> int:
        return self.local.component


class CandidatePair:
    """A local and a remote candidate, with the check state the agent keeps for them.

    ``local`` is the candidate whose *base* sends the checks (a host or relayed candidate in the
    checklist; a reflexive one in a valid pair). Mutable: the agent updates the state, flags and
    priority as checks run and roles change.
    """

    __slots__ = (
        "consent_expires",
        "generating",
        "last_consent",
        "local",
        "nominate_on_success",
        "nominated",
        "priority",
        "remote",
        "rtt",
        "state",
        "use_candidate",
        "valid",
    )

    def __init__(self, local: Candidate, remote: Candidate, controlling: bool) -> None:
        self.local = local
        self.remote = remote
        self.state = PairState.FROZEN
        self.priority = 0
        self.update_priority(controlling)
        self.nominated = False
        self.valid = False
        # The controlling agent sends a check with USE-CANDIDATE on this pair (regular nomination).
        self.use_candidate = False
        # The controlled agent got USE-CANDIDATE before its own check on this pair succeeded
        # (section 7.3.1.5): the pair is nominated as soon as that check succeeds.
        self.nominate_on_success = False
        # For a valid pair: the checklist pair whose check produced it (section 7.2.5.3.2).
        self.generating: CandidatePair | None = None
        self.rtt: float | None = None
        self.last_consent: float | None = None
        self.consent_expires: float | None = None

    @property
    def component(self) -> int:
        return self.local.component

    @property
    def foundation(self) -> tuple[str, str]:
        """The pair foundation: the local and remote candidate foundations together."""
        return (self.local.foundation, self.remote.foundation)

    @property
    def base(self) -> TransportAddress:
        """The local address checks and media for this pair are sent from."""
        return self.local.base or self.local.address

    @property
    def key(self) -> tuple[TransportAddress, TransportAddress]:
        """(local base, remote address): what identifies a pair on the wire."""
        return (self.base, self.remote.address)

    def update_priority(self, controlling: bool) -> None:
        """Recompute the priority after a role change (section 7.2.5.1)."""
        if controlling:
            self.priority = pair_priority(self.local.priority, self.remote.priority)
        else:
            self.priority = pair_priority(self.remote.priority, self.local.priority)

    def info(self) -> PairInfo:
        return PairInfo(self.local, self.remote, self.state, self.nominated)

    def __repr__(self) -> str:
        flags = " nominated" if self.nominated else ""
        return f"<CandidatePair {self.local} -> {self.remote} {self.state.value}{flags}>"
