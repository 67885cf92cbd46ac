"""ICE in SDP offer/answer (RFC 8839; RFC 5245 section 15 for older peers; trickle RFC 8840).

Two directions, one media description (``m=`` section) at a time:

- :func:`write_ice` puts an agent's side into an offer or answer: ``a=ice-ufrag``/``a=ice-pwd``,
  one ``a=candidate`` per local candidate (RTP's first, then RTCP's, as Asterisk and RFC 5245
  examples order them), the *default candidate* in ``m=``/``c=`` (and ``a=rtcp`` for RTCP),
  ``a=ice-options:trickle``, ``a=end-of-candidates`` once gathering is complete, ``a=ice-lite`` at
  session level for a lite agent, and, in the controlling agent's updated offer after ICE
  completed, ``a=remote-candidates`` (RFC 8839 section 4.4.1.2.2).
- :func:`apply_remote_ice` feeds the peer's description to the agent: credentials (media level
  overrides session level), lite, candidates (unusable ones, such as TCP or mDNS names, are
  skipped), end-of-candidates, and a restart when the peer's credentials changed. It also detects
  *ice-mismatch*: a default destination that is none of the candidates means something in the path
  (a SIP ALG) rewrote ``c=``/``m=`` and ICE must not run for the stream (RFC 8839 section 4.4.2.2).

The *default candidate* (RFC 8445 section 5.1.4) is where a peer without ICE sends media: before
ICE completes, the candidate most likely to work (relayed, then server-reflexive, then host);
after, the local candidate of the selected pair.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from icerelay.errors import IceError
from icerelay.ice.agent import Agent
from icerelay.ice.candidate import Candidate, CandidateType
from icerelay.ice.events import ConnectionState
from icerelay.sdp import (
    Connection,
    IceCredentials,
    MediaDescription,
    RemoteCandidate,
    Rtcp,
    SessionDescription,
)

DEFAULT_PREFERENCE: tuple[CandidateType, ...] = (
    CandidateType.RELAYED,
    CandidateType.SERVER_REFLEXIVE,
    CandidateType.HOST,
)
"""Most likely to work first (RFC 8445 section 5.1.4)."""

TRICKLE = "trickle"
ICE_PACING = "ice-pacing"
DEFAULT_TA_MS = 50  # RFC 8445 section 14.2: a=ice-pacing is only written when Ta differs


def default_candidate(
    agent: Agent,
    component: int = 1,
    preference: Sequence[CandidateType] = DEFAULT_PREFERENCE,
) -> Candidate | None:
    """The candidate to put in ``m=``/``c=`` (component 1) or ``a=rtcp`` (component 2)."""
    pair = agent.selected_pair(component)
    if pair is not None and pair.nominated:
        return pair.local
    local = [c for c in agent.local_candidates if c.component == component]
    for candidate_type in preference:
        of_type = [c for c in local if c.type is candidate_type]
        if of_type:
            return max(of_type, key=lambda c: c.priority)
    return None


def write_ice(
    agent: Agent,
    media: MediaDescription,
    session: SessionDescription | None = None,
    *,
    trickle: bool = True,
    preference: Sequence[CandidateType] = DEFAULT_PREFERENCE,
) -> None:
    """Describe the agent in ``media`` (and ``session`` for ``a=ice-lite``); see the module doc.

    Candidates already in ``media`` are replaced. Call it again after more candidates were
    gathered (a full re-offer) or after completion (the controlling agent's updated offer).
    """
    media.set_ice_credentials(IceCredentials(agent.local_username, agent.local_password))
    if trickle:
        media.set_ice_options([TRICKLE])
    media.remove_candidates()
    ordered = sorted(agent.local_candidates, key=lambda c: c.component)  # stable: gather order
    media.add_candidates(candidate.to_sdp() for candidate in ordered)
    rtp = default_candidate(agent, 1, preference)
    if rtp is not None:
        media.set_port(rtp.port)
        media.set_connection(Connection.for_address(rtp.host))
    if len(agent.components) == 2:
        rtcp = default_candidate(agent, 2, preference)
        implied = (
            rtp is not None
            and rtcp is not None
            and ((rtcp.host, rtcp.port) == (rtp.host, rtp.port + 1))
        )
        # a=rtcp (RFC 3605) only when RTCP is not where the peer would look anyway: RTP + 1.
        if rtcp is None or implied:
            media.set_rtcp(None)
        else:
            media.set_rtcp(Rtcp(rtcp.port, "IN", f"IP{rtcp.family}", rtcp.host))
        media.set_rtcp_mux(False)
    else:
        media.set_rtcp_mux(True)
    media.set_end_of_candidates(agent.gatherer.complete)
    ta = round(agent.config.ta * 1000)
    if ta != DEFAULT_TA_MS:
        media.replace_attribute(ICE_PACING, str(ta))
    else:
        media.remove_attributes(ICE_PACING)
    if session is not None:
        session.set_ice_lite(agent.lite)
    if agent.controlling and agent.state is ConnectionState.COMPLETED:
        triples = []
        for component in agent.components:
            pair = agent.selected_pair(component)
            if pair is not None:
                triples.append(RemoteCandidate(component, pair.remote.host, pair.remote.port))
        media.set_remote_candidates(triples)
    else:
        media.set_remote_candidates(())


@dataclass(frozen=True)
class RemoteIce:
    """What :func:`apply_remote_ice` read from the peer's media description."""

    credentials: IceCredentials | None
    lite: bool
    candidates: tuple[Candidate, ...]
    skipped: int
    """Candidates this agent cannot use (TCP, FQDN/mDNS, unknown types)."""
    end_of_candidates: bool
    mismatch: bool
    """The default destination is not among the candidates: do not use ICE for this stream."""
    restarted: bool
    """The peer changed its credentials: the agent was restarted (RFC 8445 section 9)."""
    remote_candidates: tuple[RemoteCandidate, ...]

    @property
    def uses_ice(self) -> bool:
        """The peer does ICE for this stream (credentials present, no mismatch)."""
        return self.credentials is not None and not self.mismatch


def read_remote_ice(
    media: MediaDescription, session: SessionDescription | None = None
) -> tuple[IceCredentials | None, list[Candidate], int]:
    """The peer's credentials, usable candidates, and how many candidates were skipped."""
    credentials = media.ice_credentials(session)
    usable: list[Candidate] = []
    skipped = 0
    for sdp_candidate in media.candidates():
        try:
            usable.append(Candidate.from_sdp(sdp_candidate))
        except IceError:
            skipped += 1
    return credentials, usable, skipped


def default_destination_matches(
    media: MediaDescription, session: SessionDescription | None, candidates: Sequence[Candidate]
) -> bool:
    """RFC 8839 section 4.4.2.2: is ``c=``/``m=`` one of the RTP candidates (when any)?

    Trickle offers may carry no candidate and the placeholder ``IN IP4 0.0.0.0`` port 9
    (RFC 8840 section 4.2): that is not a mismatch.
    """
    connection = media.effective_connection(session) if session is not None else None
    if connection is None:
        connection = media.connection
    if connection is None or media.port == 0:
        return True
    address = connection.address
    try:
        if ipaddress.ip_address(address).is_unspecified:
            return True
    except ValueError:
        return True  # an FQDN: nothing to compare against
    rtp = [c for c in candidates if c.component == 1]
    if not rtp:
        return True
    return any(
        c.port == media.port and ipaddress.ip_address(c.host) == ipaddress.ip_address(address)
        for c in rtp
    )


def apply_remote_ice(
    agent: Agent,
    media: MediaDescription,
    session: SessionDescription | None,
    now: float,
) -> RemoteIce:
    """Give the agent the peer's ICE description of ``media``; see the module documentation.

    Nothing is given to the agent when the peer does not do ICE for the stream (no credentials)
    or on ice-mismatch; the caller then answers with ``a=ice-mismatch`` (mismatch) or without ICE.
    """
    credentials, candidates, skipped = read_remote_ice(media, session)
    lite = session.ice_lite if session is not None else False
    end = media.end_of_candidates(session)
    mismatch = credentials is not None and not default_destination_matches(
        media, session, candidates
    )
    restarted = False
    if credentials is not None and not mismatch:
        known = agent.remote_credentials
        if known is not None and known != (credentials.ufrag, credentials.pwd):
            agent.restart(now)
            restarted = True
        agent.set_remote_credentials(credentials.ufrag, credentials.pwd, now, lite=lite)
        pacing = media.ice_pacing(session)
        if pacing is not None:
            agent.apply_remote_pacing(pacing)
        for candidate in candidates:
            agent.add_remote_candidate(candidate, now)
        if end:
            agent.add_remote_candidate(None, now)
    return RemoteIce(
        credentials=credentials,
        lite=lite,
        candidates=tuple(candidates),
        skipped=skipped,
        end_of_candidates=end,
        mismatch=mismatch,
        restarted=restarted,
        remote_candidates=media.remote_candidates,
    )
