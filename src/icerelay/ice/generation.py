"""What one ICE generation holds, and the checks in flight (RFC 8445 sections 6.1.2, 9).

An ICE restart (section 9) replaces the credentials, the remote candidates and the checklist: a
:class:`Generation` is that set. The agent keeps the current one, and the previous one while
media still uses its selected pairs. A :class:`Check` is one Binding request the agent sent on a
pair (a connectivity check or a consent request), with what its answer must be matched against.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from icerelay.ice.candidate import Candidate, TransportAddress
from icerelay.ice.checklist import CheckList
from icerelay.ice.pair import CandidatePair
from icerelay.stun.credentials import short_term_key
from icerelay.stun.transaction import ClientTransaction

if TYPE_CHECKING:
    from random import Random

ICE_CHARS = string.ascii_letters + string.digits + "+/"
UFRAG_LENGTH = 8  # RFC 8445 section 5.3: at least 24 bits of randomness (4 ice-chars)
PWD_LENGTH = 24  # at least 128 bits (22 ice-chars)


def ice_string(rng: Random, length: int) -> str:
    """A random ice-ufrag or ice-pwd (RFC 8839 section 5.4: ice-chars)."""
    return "".join(rng.choice(ICE_CHARS) for _ in range(length))


@dataclass
class Generation:
    """Everything that an ICE restart replaces: credentials, remote candidates, the checklist.

    Media keeps using the previous generation's selected pairs until the new one has pairs for
    every component (section 9).
    """

    local_ufrag: str
    local_pwd: str
    checklist: CheckList
    remote_ufrag: str | None = None
    remote_pwd: str | None = None
    remote_candidates: list[Candidate] = field(default_factory=list)
    remote_complete: bool = False
    started: bool = False
    selected: dict[int, CandidatePair] = field(default_factory=dict)
    first_valid_at: dict[int, float] = field(default_factory=dict)
    nominate_at: dict[int, float] = field(default_factory=dict)
    announced: dict[int, tuple[CandidatePair, bool]] = field(default_factory=dict)
    # The short-term keys (RFC 8489 section 9.1.1: OpaqueString of the password) are made once
    # per credential set rather than for every check, answer and response. Made on first use so
    # that a password OpaqueString rejects fails where it always did (the first check).
    _local_key: bytes | None = field(default=None, repr=False)
    _remote_key: bytes | None = field(default=None, repr=False)

    def find_remote(self, address: TransportAddress, component: int) -> Candidate | None:
        """The remote candidate (signalled or peer-reflexive) with this address."""
        for candidate in self.remote_candidates:
            if candidate.address == address and candidate.component == component:
                return candidate
        return None

    @property
    def local_key(self) -> bytes:
        """The key of our password: we answer with it, the peer signs its checks with it."""
        if self._local_key is None:
            self._local_key = short_term_key(self.local_pwd)
        return self._local_key

    @property
    def remote_key(self) -> bytes:
        """The key of the peer's password: our checks are signed with it, its answers too."""
        if self._remote_key is None:
            # remote_pwd never changes once set (new credentials mean a new generation).
            self._remote_key = short_term_key(self.remote_pwd or "")
        return self._remote_key


@dataclass
class Check:
    """A Binding request this agent sent on a pair: a check, or a consent request."""

    generation: Generation
    pair: CandidatePair
    transaction: ClientTransaction
    sent_at: float
    controlling: bool
    use_candidate: bool
    priority: int
    consent: bool = False
    cancelled: bool = False
