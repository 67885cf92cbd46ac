"""One media description: an ``m=`` line and the lines up to the next one (RFC 8866 §5.14)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from icerelay.errors import SdpError
from icerelay.numbers import parse_uint
from icerelay.sdp.attributes import STATIC_PAYLOAD_TYPES, Direction, Rtcp, RtpMap
from icerelay.sdp.candidate import Candidate
from icerelay.sdp.fields import Connection, MediaLine
from icerelay.sdp.grammar import split_fields
from icerelay.sdp.ice import (
    CANDIDATE,
    END_OF_CANDIDATES,
    ICE_MISMATCH,
    ICE_OPTIONS,
    ICE_PWD,
    ICE_UFRAG,
    REMOTE_CANDIDATES,
    IceCredentials,
    RemoteCandidate,
    format_remote_candidates,
    parse_remote_candidates,
)
from icerelay.sdp.lines import Line, attribute_line
from icerelay.sdp.section import Section, parse_at

if TYPE_CHECKING:
    from icerelay.sdp.session import SessionDescription

RTCP = "rtcp"
RTCP_MUX = "rtcp-mux"


class MediaDescription(Section):
    """An ``m=`` section. ``lines[0]`` is always its ``m=`` line.

    Methods that take the :class:`SessionDescription` resolve RFC 8866/8839 inheritance: a
    media-level ``c=``, direction or ICE attribute overrides the session-level one.
    """

    _BEFORE_CONNECTION = frozenset("mi")
    _LEVEL = "media"

    def __init__(self, lines: list[Line]) -> None:
        if not lines or lines[0].type != "m":
            raise SdpError("a media description must start with an m= line")
        super().__init__(lines)

    @classmethod
    def new(cls, media_line: MediaLine) -> MediaDescription:
        """A media description holding only its ``m=`` line."""
        return cls([Line.make("m", media_line.to_sdp())])

    # -- m= -----------------------------------------------------------------------------------

    @property
    def media_line(self) -> MediaLine:
        """The parsed ``m=`` line."""
        line = self.lines[0]
        return parse_at(line, MediaLine.parse, line.value)

    def set_media_line(self, media_line: MediaLine) -> None:
        """Rewrite the ``m=`` line (and only it)."""
        self.lines[0] = self.lines[0].with_value(media_line.to_sdp())

    @property
    def media(self) -> str:
        """The media type: ``audio``, ``video``, ``application``..."""
        return self.media_line.media

    @property
    def port(self) -> int:
        """The ``m=`` port (0: stream rejected or disabled)."""
        return self.media_line.port

    def set_port(self, port: int) -> None:
        """Set the ``m=`` port, keeping media, port count, proto and formats."""
        line = self.media_line
        # A constructor call, not dataclasses.replace (several times dearer; every rewrite).
        self.set_media_line(MediaLine(line.media, port, line.proto, line.formats, line.port_count))

    @property
    def proto(self) -> str:
        """The transport protocol (``RTP/AVP``, ``UDP/TLS/RTP/SAVPF``...)."""
        return self.media_line.proto

    @property
    def formats(self) -> tuple[str, ...]:
        """The format list of the ``m=`` line (payload types for RTP)."""
        return self.media_line.formats

    def set_connection_address(self, address: str, port: int | None = None) -> None:
        """Point this stream at ``address`` (and ``port``): rewrite or add the media-level ``c=``
        (``IN IP4``/``IN IP6`` from the address) and, given a port, the ``m=`` port. The
        session-level ``c=`` and the other streams are left alone."""
        self.set_connection(address)
        if port is not None:
            self.set_port(port)

    # -- c= and direction with session fallback ----------------------------------------------

    def effective_connection(self, session: SessionDescription) -> Connection | None:
        """The media-level ``c=`` if present, else the session-level one."""
        own = self.connection
        return own if own is not None else session.connection

    def direction(self, session: SessionDescription | None = None) -> Direction:
        """The media direction: media level, else session level, else ``sendrecv``."""
        own = self.own_direction
        if own is not None:
            return own
        if session is not None and session.own_direction is not None:
            return session.own_direction
        return Direction.SENDRECV

    # -- rtpmap / fmtp ------------------------------------------------------------------------

    def rtpmaps(self) -> list[RtpMap]:
        """Every ``a=rtpmap`` of this media description, in order."""
        return self._typed("rtpmap", lambda value: RtpMap.parse(value or ""))

    def rtpmap(self, payload_type: int | str) -> RtpMap | None:
        """The ``a=rtpmap`` for ``payload_type``, else the RFC 3551 static assignment, else None."""
        wanted = str(payload_type)
        for line in self.lines:
            if line.attribute_name == "rtpmap" and _first_field(line.attribute_value) == wanted:
                return parse_at(line, RtpMap.parse, line.attribute_value or "")
        # Payload types are 0..127; the length bound also keeps int() away from a hostile
        # 5000-digit "format" (Python refuses to convert those with ValueError).
        number = parse_uint(wanted, max_digits=3)
        return None if number is None else STATIC_PAYLOAD_TYPES.get(number)

    def codec_name(self, payload_type: int | str) -> str | None:
        """The encoding name for ``payload_type`` (``"PCMU"`` for 0 even without an rtpmap)."""
        rtpmap = self.rtpmap(payload_type)
        return rtpmap.encoding_name if rtpmap is not None else None

    def fmtp(self, payload_type: int | str) -> str | None:
        """The format parameters of ``a=fmtp:<payload_type> <parameters>``, or None."""
        wanted = str(payload_type)
        for line in self.lines:
            value = line.attribute_value
            if line.attribute_name == "fmtp" and _first_field(value) == wanted:
                return (value or "").lstrip(" \t")[len(wanted):].strip(" \t")
        return None

    # -- RTCP (RFC 3605, RFC 5761) -------------------------------------------------------------

    @property
    def rtcp(self) -> Rtcp | None:
        """The ``a=rtcp`` attribute, or None (then RTCP goes to the RTP port + 1)."""
        return self._first_typed(RTCP, lambda value: Rtcp.parse(value or ""))

    def set_rtcp(self, rtcp: Rtcp | None) -> None:
        """Rewrite ``a=rtcp`` in place, append it, or remove it (None)."""
        if rtcp is None:
            self.remove_attributes(RTCP)
        else:
            self.replace_attribute(RTCP, rtcp.to_sdp())

    @property
    def rtcp_mux(self) -> bool:
        """True if ``a=rtcp-mux`` (RTP and RTCP on one port, RFC 5761) is present."""
        return self.has_attribute(RTCP_MUX)

    def set_rtcp_mux(self, present: bool) -> None:
        """Add or remove ``a=rtcp-mux``."""
        self._set_flag(RTCP_MUX, present)

    # -- ICE (RFC 8839) -----------------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        """The ``a=candidate`` lines of this media description, in order."""
        return self._typed(CANDIDATE, lambda value: Candidate.parse(value or ""))

    def add_candidates(self, candidates: Iterable[Candidate]) -> None:
        """Insert candidate lines after the existing ones (or, with none yet, before
        ``a=end-of-candidates``, else after the ICE credentials, else at the end)."""
        new = [attribute_line(CANDIDATE, candidate.to_sdp()) for candidate in candidates]
        position = self._last_index_of([CANDIDATE])
        if position is not None:
            position += 1
        else:
            end = next((i for i, line in enumerate(self.lines)
                        if line.attribute_name == END_OF_CANDIDATES), None)
            if end is not None:
                position = end
            else:
                last_ice = self._last_index_of([ICE_UFRAG, ICE_PWD, ICE_OPTIONS])
                position = last_ice + 1 if last_ice is not None else self._end_index()
        self.lines[position:position] = new

    def remove_candidates(self) -> int:
        """Remove every ``a=candidate`` line; returns how many went."""
        return self.remove_attributes(CANDIDATE)

    def ice_credentials(self, session: SessionDescription | None = None) -> IceCredentials | None:
        """ICE ufrag and password for this media: media level overrides session level (each
        attribute on its own, RFC 8839 §5.4). None unless both are found."""
        ufrag = self.ice_ufrag
        pwd = self.ice_pwd
        if session is not None:
            ufrag = ufrag if ufrag is not None else session.ice_ufrag
            pwd = pwd if pwd is not None else session.ice_pwd
        if ufrag is None or pwd is None:
            return None
        return IceCredentials(ufrag, pwd)

    def ice_options(self, session: SessionDescription | None = None) -> tuple[str, ...]:
        """``a=ice-options`` tags: the media-level ones if any, else the session-level ones."""
        own = self.own_ice_options
        if own or session is None:
            return own
        return session.own_ice_options

    def ice_pacing(self, session: SessionDescription | None = None) -> int | None:
        """``a=ice-pacing`` in ms: media level, else session level, else None (RFC 8839 §5.5)."""
        own = self.own_ice_pacing
        if own is not None or session is None:
            return own
        return session.own_ice_pacing

    def end_of_candidates(self, session: SessionDescription | None = None) -> bool:
        """True if ``a=end-of-candidates`` is at media level or session level (RFC 8840)."""
        if self.own_end_of_candidates:
            return True
        return session is not None and session.own_end_of_candidates

    @property
    def ice_mismatch(self) -> bool:
        """True if ``a=ice-mismatch`` is present: the peer's default destination was not among
        the candidates (an ALG rewrote the SDP), so ICE is not used for this stream."""
        return self.has_attribute(ICE_MISMATCH)

    def set_ice_mismatch(self, present: bool) -> None:
        """Add or remove ``a=ice-mismatch``."""
        self._set_flag(ICE_MISMATCH, present)

    @property
    def remote_candidates(self) -> tuple[RemoteCandidate, ...]:
        """The ``a=remote-candidates`` triples (empty if absent)."""
        found = self._first_typed(REMOTE_CANDIDATES, parse_remote_candidates)
        return found if found is not None else ()

    def set_remote_candidates(self, candidates: Iterable[RemoteCandidate]) -> None:
        """Set ``a=remote-candidates`` in place or append it; an empty iterable removes it."""
        triples = tuple(candidates)
        if not triples:
            self.remove_attributes(REMOTE_CANDIDATES)
        else:
            self.replace_attribute(REMOTE_CANDIDATES, format_remote_candidates(triples))

    def validate(self) -> None:
        """Check the ``m=`` line, that no ``v=``/``o=`` hides in this section, then every typed
        attribute (see :meth:`Section.validate`)."""
        line = self.lines[0]
        parse_at(line, MediaLine.parse, line.value)
        for other in self.lines[1:]:
            if other.type in ("v", "o"):
                raise SdpError(f"{other.where}: {other.type}= line inside a media description")
        super().validate()


def _first_field(value: str | None) -> str | None:
    if value is None:
        return None
    fields = split_fields(value)
    return fields[0] if fields else None
