"""Tunables of the ICE agent, with the RFC defaults and the reasons for the others."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from icerelay.errors import ConfigError
from icerelay.ice.candidate import TransportAddress


class Nomination(enum.Enum):
    """How the controlling agent nominates (RFC 8445 section 8.1.1; RFC 5245 section 8.1.1.2).

    - ``regular``: check first, then repeat the check of the chosen valid pair with USE-CANDIDATE
      (the only mode RFC 8445 keeps);
    - ``aggressive``: USE-CANDIDATE in every check, so the first pair to succeed is selected at
      once; what many RFC 5245 agents do, and what their peers must be able to follow.
    """

    REGULAR = "regular"
    AGGRESSIVE = "aggressive"


@dataclass(frozen=True)
class AgentConfig:
    """Everything about an agent that is not per session."""

    ta: float = 0.05
    """Pacing interval between new checks (RFC 8445 section 14.2: 50 ms by default, 5 ms min)."""

    nomination: Nomination = Nomination.REGULAR

    stun_servers: tuple[TransportAddress, ...] = ()
    """STUN servers to learn server-reflexive candidates from (IP, port)."""

    check_rto: float = 0.5
    """First retransmission timeout of a connectivity check (RFC 8445 section 14.3: 500 ms)."""

    check_rc: int = 7
    """Requests per check (RFC 8489 Rc); with Rm = 16 a dead pair fails after 39.5 s."""

    gather_rto: float = 0.25
    """STUN servers answer at once or not at all: a short RTO finds the mapping sooner on a
    lossy link."""

    gather_rc: int = 6
    """Requests per STUN server (at 0, 0.25, 0.75, 1.75, 3.75, 7.75 s; given up at 11.75 s).
    Candidates are used the moment they arrive, so a long tail costs nothing but a later
    end-of-candidates, while giving up early loses the srflx candidate on a lossy link (and with
    it, behind port-restricted NATs, the whole component)."""

    nomination_wait: float = 0.25
    """How long the controlling agent waits for a better pair before nominating the best valid
    pair, at least (twice the RTT of that pair is used when longer). A better pair that is still
    being checked would need this long to beat it; waiting longer only delays completion."""

    consent_interval: float = 5.0
    """RFC 7675 section 5.1: consent requests every 5 s, randomized to 0.8-1.2 times that."""

    consent_rc: int = 4
    """Sends per consent request (retransmitted at the check RTO: 0, 0.5, 1.5, 3.5 s), so that
    consent survives a lossy path; the next request starts a new transaction anyway."""

    consent_timeout: float = 30.0
    """RFC 7675 section 5.1: consent expires 30 s after the last response: the agent fails."""

    disconnected_timeout: float = 12.5
    """No consent response for this long (about two missed requests) reports ``disconnected``."""

    keepalive_interval: float = 15.0
    """RFC 8445 section 11 (Tr): a Binding indication when nothing else was sent for this long."""

    consent_freshness: bool = True
    """Send RFC 7675 consent requests on the pairs in use (full agents)."""

    nomination_timeout: float = 10.0
    """A controlled agent's ``connect()`` fails when the controlling agent has not nominated a
    pair this long after the first valid pair (a peer that never nominates, e.g. because our
    checks to it do not authenticate, must not look connected)."""

    relay_only: bool = False
    """Use relayed candidates only (WebRTC's ``iceTransportPolicy: "relay"``): the local
    addresses are used only to reach the TURN servers, never announced or checked from, so the
    peer never learns them."""

    max_pairs: int = 100
    """Checklist size limit (RFC 8445 section 6.1.2.5)."""

    max_peer_reflexive: int = 8
    """Peer-reflexive remote candidates learned per component. Between two NATs that map per
    destination but filter nothing (APDM + EIF), every triggered check opens a new mapping that
    the peer learns as yet another prflx candidate and checks back through yet another one; the
    cap ends that chain before it fills the checklist and pushes out the relayed pairs."""

    software: str | None = None
    """SOFTWARE attribute for checks, if any."""

    host_mappings: tuple[tuple[str, str, bool], ...] = ()
    """1:1 NAT (Asterisk's ``[ice_host_candidates]``): ``(local IP, advertised IP,
    include_local)``. A host socket on the local IP is advertised as a host candidate at the
    advertised IP (same port, same base); the plain local candidate is kept only with
    ``include_local``."""

    stun_base_allowed: Callable[[str], bool] | None = None
    """Which host addresses may send STUN Binding requests to gather server-reflexive candidates
    (Asterisk's ``stun_deny``/``stun_permit``); None allows all. Host candidates stay either way."""

    def __post_init__(self) -> None:
        if self.ta < 0.005:
            raise ConfigError("Ta must be at least 5 ms (RFC 8445 section 14.2)")
        if self.check_rto <= 0 or self.gather_rto <= 0:
            raise ConfigError("retransmission timeouts must be positive")
        if self.check_rc < 1 or self.gather_rc < 1:
            raise ConfigError("a check or a gathering request is sent at least once")
        if not 0 < self.disconnected_timeout <= self.consent_timeout:
            raise ConfigError("disconnected_timeout must be positive and <= consent_timeout")
        if self.max_pairs < 1:
            raise ConfigError("max_pairs must be at least 1")
