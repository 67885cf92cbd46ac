"""Reading what a relay needs out of an SDP body, and rewriting it so media flows via the relay.

The rewrite touches only what a relay must change: ``c=`` lines, the ``m=`` port, ``a=rtcp``, ICE
lines and, when asked, the address in ``o=``. Every other line keeps its exact bytes (the SDP model
re-renders only lines that are changed), so codecs, crypto, extension attributes and the peer's
formatting reach the other side untouched.

ICE policy (the MediaProxy ICE design, done to RFC 8445/8839): when the body carries ICE
(``ice-ufrag``, ``ice-pwd`` and candidates) the relay adds itself as a ``typ relay`` candidate, so
the ``c=``/``m=`` default destination -- now the relay -- is one of the candidates (no
``ice-mismatch`` at the far end) and ICE may still find a direct path, in which case the relay
steps aside. Its priority follows :class:`~icerelay.relay.policy.IcePriority`.
"""

from __future__ import annotations

from collections.abc import Sequence

from icerelay.errors import RelayError, SdpError
from icerelay.relay.candidates import candidates_to_add, relay_candidates, relay_foundation
from icerelay.relay.options import RelayOptions
from icerelay.relay.plans import SessionPlan, StreamOffer, StreamPlan, is_unspecified
from icerelay.relay.policy import IceMode, IcePriority
from icerelay.sdp import (
    Candidate,
    Connection,
    Direction,
    IceCredentials,
    Line,
    MediaDescription,
    Origin,
    RemoteCandidate,
    Rtcp,
    SessionDescription,
)
from icerelay.sdp.attributes import DIRECTIONS
from icerelay.sdp.ice import (
    CANDIDATE,
    ICE_PWD,
    ICE_UFRAG,
    REMOTE_CANDIDATES,
    parse_pwd,
    parse_remote_candidates,
    parse_ufrag,
)
from icerelay.sdp.media import RTCP, RTCP_MUX
from icerelay.sdp.section import parse_at

__all__ = [
    "MediaInfo",
    "StreamPlan",
    "apply_plan",
    "carries_ice",
    "describe",
    "relay_candidates",
    "relay_foundation",
    "rewrite",
]

#: The former name of :class:`~icerelay.relay.plans.StreamOffer`.
MediaInfo = StreamOffer


def describe(sdp: SessionDescription) -> list[StreamOffer]:
    """One :class:`StreamOffer` per ``m=`` section, in order."""
    # Each level's lines are read once (the accessors of the SDP model scan a level's lines
    # once per question, a dozen scans per stream); what is found is parsed by the same
    # parsers, through the same per-line cache, as the accessors do.
    session = _Level(sdp.lines)
    session_connection = session.connection()
    session_ufrag, session_pwd = session.ufrag(), session.pwd()
    session_ice = session_ufrag is not None and session_pwd is not None
    infos = []
    for index, media in enumerate(sdp.media):
        level = _Level(media.lines)
        connection = level.connection() or session_connection
        address = connection.address if connection is not None else None
        media_line = media.media_line
        port = media_line.port
        rtcp = level.rtcp()
        mux = level.mux
        if rtcp is not None:
            rtcp_port = rtcp.port
            rtcp_address = rtcp.address if rtcp.address is not None else address
        elif mux:
            rtcp_port, rtcp_address = port, address
        else:
            rtcp_port, rtcp_address = (port + 1 if port else 0), address
        candidates = level.candidates()
        ufrag, pwd = level.ufrag(), level.pwd()
        ufrag = ufrag if ufrag is not None else session_ufrag
        pwd = pwd if pwd is not None else session_pwd
        credentials = None if ufrag is None or pwd is None else IceCredentials(ufrag, pwd)
        has_credentials = session_ice or credentials is not None
        codec = None
        if media_line.formats:
            codec = media.codec_name(media_line.formats[0]) or media_line.formats[0]
        direction = level.direction() or session.direction() or Direction.SENDRECV
        infos.append(
            StreamOffer(
                index=index,
                media=media_line.media,
                proto=media_line.proto,
                address=address,
                port=port,
                rtcp_address=rtcp_address,
                rtcp_port=rtcp_port,
                rtcp_mux=mux,
                direction=direction,
                ice=has_credentials and bool(candidates),
                component_2=any(candidate.component == 2 for candidate in candidates),
                codec=codec,
                remote_candidates=tuple(
                    (item.component, item.address, item.port) for item in level.remote()
                ),
                ice_credentials=credentials,
                candidates=tuple(candidates),
                payload_types=tuple(media_line.formats),
            )
        )
    return infos


# The attributes _Level keeps (any other a= line may only be the direction).
_READ = frozenset({CANDIDATE, ICE_UFRAG, ICE_PWD, RTCP, RTCP_MUX, REMOTE_CANDIDATES})


class _Level:
    """The lines of one SDP level that :func:`describe` reads, found in one pass (the first of
    each, as the model's accessors take them; every candidate)."""

    __slots__ = (
        "_candidates",
        "_connection",
        "_direction",
        "_pwd",
        "_remote",
        "_rtcp",
        "_ufrag",
        "mux",
    )

    def __init__(self, lines: list[Line]) -> None:
        connection = direction = ufrag = pwd = rtcp = remote = None
        mux = False
        candidates: list[Line] = []
        for line in lines:
            name = line.name
            if name is None:  # not an a= line
                if connection is None and line.type == "c":
                    connection = line
                continue
            if name not in _READ:
                if direction is None and line.value in DIRECTIONS:
                    direction = line
            elif name == CANDIDATE:
                candidates.append(line)
            elif name == ICE_UFRAG:
                ufrag = ufrag or line
            elif name == ICE_PWD:
                pwd = pwd or line
            elif name == RTCP:
                rtcp = rtcp or line
            elif name == RTCP_MUX:
                mux = True
            else:
                remote = remote or line
        self._connection, self._direction = connection, direction
        self._ufrag, self._pwd, self._rtcp, self._remote = ufrag, pwd, rtcp, remote
        self.mux, self._candidates = mux, candidates

    def connection(self) -> Connection | None:
        line = self._connection
        return None if line is None else parse_at(line, Connection.parse, line.value)

    def direction(self) -> Direction | None:
        return None if self._direction is None else Direction(self._direction.value)

    def ufrag(self) -> str | None:
        line = self._ufrag
        return None if line is None else parse_at(line, parse_ufrag, line.attribute_value)

    def pwd(self) -> str | None:
        line = self._pwd
        return None if line is None else parse_at(line, parse_pwd, line.attribute_value)

    def rtcp(self) -> Rtcp | None:
        line = self._rtcp
        return None if line is None else parse_at(line, Rtcp.parse, line.attribute_value or "")

    def remote(self) -> tuple[RemoteCandidate, ...]:
        line = self._remote
        if line is None:
            return ()
        return parse_at(line, parse_remote_candidates, line.attribute_value)

    def candidates(self) -> list[Candidate]:
        return [
            parse_at(line, Candidate.parse, line.attribute_value or "")
            for line in self._candidates
        ]


def carries_ice(sdp: SessionDescription, media: MediaDescription) -> bool:
    """True if ``media`` has ICE credentials (own or session level) and at least one candidate."""
    return media.ice_credentials(sdp) is not None and bool(media.candidates())


def rewrite(
    sdp: SessionDescription,
    plans: Sequence[StreamPlan | None],
    *,
    ice: IceMode = IceMode.DEFAULT,
    priority: IcePriority = IcePriority.LOW,
    replace_origin: bool = False,
    replace_session_connection: bool = False,
    in_place: bool = False,
    carried_ice: Sequence[bool] | None = None,
) -> SessionDescription:
    """Return a copy of ``sdp`` in which every stream with a plan goes through the relay
    (``in_place``: rewrite ``sdp`` itself and return it, for a caller that parsed it only to
    rewrite it). ``carried_ice``: per section, whether it carries ICE (:attr:`StreamOffer.ice`
    of its :func:`describe`, when the caller has it), else read from ``sdp``.

    ``plans[i]`` belongs to ``sdp.media[i]``; None leaves that section as it is (a rejected
    stream, or one whose ICE went direct). ``c=0.0.0.0`` (RFC 2543 hold) stays as it is, because
    it tells the far side not to send; only the port changes.
    """
    if len(plans) != len(sdp.media):
        raise RelayError(f"{len(plans)} stream plans for {len(sdp.media)} media sections")
    if carried_ice is None:
        originals = _originals(sdp, plans)
    else:
        originals = [ice for ice, plan in zip(carried_ice, plans, strict=True) if plan]
    out = sdp if in_place else sdp.copy()
    planned = [(media, plan) for media, plan in zip(out.media, plans, strict=True) if plan]
    if not planned:
        return out
    relay_address = planned[0][1].address
    keep_defaults = ice is IceMode.FORCE_RELAY

    if not keep_defaults:
        session_connection = out.connection
        inherits = any(media.connection is None for media, _ in planned)
        if session_connection is not None and (inherits or replace_session_connection):
            if not is_unspecified(session_connection.address):
                out.set_connection(_connection_like(session_connection, relay_address))
        elif session_connection is None and inherits:
            # No c= anywhere for this stream (a broken body): give it one at media level.
            for media, plan in planned:
                if media.connection is None:
                    media.set_connection(plan.address)

    if replace_origin and not keep_defaults:
        origin = out.origin
        if origin is not None:
            family = "IP6" if ":" in relay_address else "IP4"
            # A constructor call, not dataclasses.replace (~5 us on every offer and answer).
            out.set_origin(
                Origin(
                    origin.username,
                    origin.session_id,
                    origin.session_version,
                    origin.nettype,
                    family,
                    relay_address,
                )
            )

    if ice is IceMode.REMOVE or ice is IceMode.FORCE:
        out.remove_ice()
    if ice is IceMode.FORCE:
        out.set_ice_lite(True)

    for (media, plan), original in zip(planned, originals, strict=True):
        _rewrite_media(media, plan, original, ice, priority)
    return out


def apply_plan(
    sdp: SessionDescription,
    plan: SessionPlan,
    options: RelayOptions,
    *,
    in_place: bool = False,
    offers: Sequence[StreamOffer] | None = None,
) -> bytes:
    """The SDP to forward: ``sdp`` rewritten as the engine's ``plan`` says; RelayError if not.
    ``in_place`` and ``offers`` (what :func:`describe` made of ``sdp``): see :func:`rewrite`."""
    try:
        out = rewrite(
            sdp,
            plan.streams,
            ice=plan.ice,
            priority=plan.priority,
            replace_origin=options.replace_origin,
            replace_session_connection=options.replace_session_connection,
            in_place=in_place,
            carried_ice=None if offers is None else [offer.ice for offer in offers],
        )
    except SdpError as error:
        raise RelayError(f"cannot rewrite the SDP: {error}") from None
    return out.to_bytes()


def _originals(sdp: SessionDescription, plans: Sequence[StreamPlan | None]) -> list[bool]:
    """Per planned section: did the original carry ICE (needed after session lines are gone).
    :func:`carries_ice`, reading each level's lines once."""
    session = _Level(sdp.lines)
    session_ufrag, session_pwd = session.ufrag(), session.pwd()
    found = []
    for media, plan in zip(sdp.media, plans, strict=True):
        if plan:
            level = _Level(media.lines)
            ufrag, pwd = level.ufrag(), level.pwd()
            found.append(
                (ufrag if ufrag is not None else session_ufrag) is not None
                and (pwd if pwd is not None else session_pwd) is not None
                and bool(level.candidates())
            )
    return found


def _rewrite_media(
    media: MediaDescription,
    plan: StreamPlan,
    had_ice: bool,
    ice: IceMode,
    priority: IcePriority,
) -> None:
    component_2 = any(candidate.component == 2 for candidate in media.candidates())
    if ice is IceMode.FORCE_RELAY:
        # The peer's defaults stay; only its own relayed candidates make way for the relay's.
        if had_ice:
            kept = [candidate for candidate in media.candidates() if candidate.type != "relay"]
            media.remove_candidates()
            media.add_candidates(kept)
            media.add_candidates(_added(plan, ice, priority, had_ice, component_2, media))
        return

    connection = media.connection
    if connection is not None and not is_unspecified(connection.address):
        media.set_connection(_connection_like(connection, plan.address))
    original_port = media.port
    media.set_port(plan.rtp_port)
    if plan.rtcp_mux is not None:
        media.set_rtcp_mux(plan.rtcp_mux)
    rtcp = media.rtcp
    if rtcp is not None:
        # a=rtcp equal to the m= port means RTCP rides on the RTP port (RFC 5761); keep it so,
        # unless multiplexing is being taken away towards this party.
        on_rtp_port = rtcp.port == original_port and plan.rtcp_mux is not False
        port = plan.rtp_port if on_rtp_port else plan.rtcp_port
        if rtcp.address is not None and not is_unspecified(rtcp.address):
            family = "IP6" if ":" in plan.address else "IP4"
            media.set_rtcp(Rtcp(port, rtcp.nettype or "IN", family, plan.address))
        else:
            media.set_rtcp(Rtcp(port, rtcp.nettype, rtcp.addrtype, rtcp.address))

    if ice is IceMode.REMOVE:
        media.remove_ice()
    elif ice is IceMode.FORCE:
        media.remove_ice()
        if plan.ice_credentials is None:
            raise RelayError("ICE=force needs the relay's own ICE credentials")
        media.set_ice_credentials(plan.ice_credentials)
        media.add_candidates(_added(plan, ice, priority, had_ice, component_2, media))
    elif had_ice:
        media.add_candidates(_added(plan, ice, priority, had_ice, component_2, media))


def _added(
    plan: StreamPlan,
    ice: IceMode,
    priority: IcePriority,
    had_ice: bool,
    component_2: bool,
    media: MediaDescription,
) -> tuple[Candidate, ...]:
    """The plan's candidates, or (a plan made without the engine) the policy's for this SDP."""
    if plan.candidates is not None:
        return plan.candidates
    return candidates_to_add(
        plan, ice, priority, carries_ice=had_ice, component_2=component_2, rtcp_mux=media.rtcp_mux
    )


def _connection_like(connection: Connection, address: str) -> Connection:
    family = "IP6" if ":" in address else "IP4"
    return Connection(connection.nettype, family, address)
