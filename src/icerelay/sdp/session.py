"""A whole SDP body: session-level lines and the media descriptions (RFC 8866 §5)."""

from __future__ import annotations

from collections.abc import Iterator

from icerelay.errors import SdpError
from icerelay.sdp.fields import Connection, Origin
from icerelay.sdp.ice import ICE_LITE, IceCredentials
from icerelay.sdp.lines import Line, render, split_lines, text_line_ending
from icerelay.sdp.media import MediaDescription
from icerelay.sdp.section import Section, parse_at


class SessionDescription(Section):
    """A parsed SDP that serializes back byte for byte unless changed.

    ``lines`` are the session-level lines (``v=`` up to the first ``m=``); :attr:`media` holds one
    :class:`MediaDescription` per ``m=`` line. Lines added or changed through the API are written
    in :attr:`line_ending`, the ending most of the input's lines use (CRLF for a new document);
    :attr:`final_newline` is False for a body whose last line had no ending, and stays so.

    Two descriptions are equal when they serialize to the same text.
    """

    _BEFORE_CONNECTION = frozenset("vosiuep")

    def __init__(self, lines: list[Line], media: list[MediaDescription] | None = None,
                 line_ending: str = "\r\n", from_bytes: bool = False,
                 final_newline: bool = True) -> None:
        super().__init__(lines)
        self.media: list[MediaDescription] = media if media is not None else []
        self.line_ending = line_ending
        self.from_bytes = from_bytes
        self.final_newline = final_newline

    @classmethod
    def new(cls, origin: Origin, session_name: str = "-", connection: Connection | None = None,
            timing: str = "0 0", line_ending: str = "\r\n") -> SessionDescription:
        """A new SDP with ``v=0``, ``o=``, ``s=``, optional ``c=`` and ``t=`` (RFC 8866 order);
        add media descriptions with :meth:`add_media` and :meth:`MediaDescription.new`."""
        lines = [Line.make("v", "0"), Line.make("o", origin.to_sdp()),
                 Line.make("s", session_name)]
        if connection is not None:
            lines.append(Line.make("c", connection.to_sdp()))
        lines.append(Line.make("t", timing))
        return cls(lines, line_ending=line_ending)

    @classmethod
    def parse(cls, data: str | bytes, *, fragment: bool = False) -> SessionDescription:
        """Parse an SDP body given as text or as bytes (strict UTF-8).

        With ``fragment=True`` the body is an RFC 8840 ``application/trickle-ice-sdpfrag``: the
        same lines without the leading ``v=0`` (typically ``a=ice-ufrag``, ``a=ice-pwd``, then per
        stream ``m=``, ``a=mid`` and ``a=candidate`` lines).

        Raises SdpError with the line number and reason for anything malformed; see
        :mod:`icerelay.sdp.lines` for what is tolerated.
        """
        from_bytes = isinstance(data, bytes | bytearray | memoryview)
        if isinstance(data, str):
            text = data
        elif not from_bytes:
            raise TypeError(f"an SDP body is str or bytes, not {type(data).__name__}")
        else:
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError as error:
                raise SdpError(f"SDP is not valid UTF-8 (byte {error.start}: {error.reason})") \
                    from None
        lines = split_lines(text)
        first = lines[0]
        if not fragment:
            if first.type != "v":
                raise SdpError(f"line 1: an SDP must start with v=, got {first.text[:40]!r}")
            if first.value != "0":
                raise SdpError(f"line 1: unsupported SDP version {first.value[:20]!r} (only v=0)")
        sections: list[list[Line]] = [[]]
        for line in lines:
            if line.type == "m":
                sections.append([])
            elif line.type == "v" and (line is not first or first.value != "0"):
                raise SdpError(f"{line.where}: unexpected v= line (two SDP bodies run together?)")
            sections[-1].append(line)
        session = cls(sections[0], [MediaDescription(section) for section in sections[1:]],
                      text_line_ending(text), from_bytes, final_newline=lines[-1].eol != "")
        session.validate()
        for media in session.media:
            media.validate()
        return session

    # -- serialization ------------------------------------------------------------------------

    def all_lines(self) -> Iterator[Line]:
        """Every line of the document, session level first, in order."""
        yield from self.lines
        for media in self.media:
            yield from media.lines

    def to_text(self) -> str:
        """The SDP as text: unchanged lines exactly as parsed, changed ones re-rendered."""
        lines = list(self.lines)
        for media in self.media:
            lines += media.lines
        return render(lines, self.line_ending, self.final_newline)

    def to_bytes(self) -> bytes:
        """The SDP as UTF-8 bytes."""
        return self.to_text().encode("utf-8")

    def serialize(self) -> str | bytes:
        """Bytes if the SDP was parsed from bytes, else text."""
        return self.to_bytes() if self.from_bytes else self.to_text()

    def __str__(self) -> str:
        return self.to_text()

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionDescription):
            return NotImplemented
        return self.to_text() == other.to_text()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"SessionDescription({self.to_text()!r})"

    def copy(self) -> SessionDescription:
        """An independent copy (lines are immutable, so only the lists are copied)."""
        return SessionDescription(
            list(self.lines), [MediaDescription(list(media.lines)) for media in self.media],
            self.line_ending, self.from_bytes, self.final_newline)

    # -- session-level fields -----------------------------------------------------------------

    @property
    def origin(self) -> Origin | None:
        """The ``o=`` line (None only for a sloppy SDP without one)."""
        for line in self.lines:
            if line.type == "o":
                return parse_at(line, Origin.parse, line.value)
        return None

    def set_origin(self, origin: Origin) -> None:
        """Rewrite the ``o=`` line in place (or insert it after ``v=``)."""
        for index, line in enumerate(self.lines):
            if line.type == "o":
                self.lines[index] = line.with_value(origin.to_sdp())
                return
        self.lines.insert(1, Line.make("o", origin.to_sdp()))

    @property
    def session_name(self) -> str | None:
        """The ``s=`` text, or None if absent."""
        return next((line.value for line in self.lines if line.type == "s"), None)

    # -- session-level ICE --------------------------------------------------------------------

    @property
    def ice_lite(self) -> bool:
        """True if the peer is an ICE lite implementation (``a=ice-lite``, RFC 8839 §5.3).

        RFC 8839 puts it at session level; a media-level one is honoured too because some
        gateways write it there and its meaning is unmistakable.
        """
        return self.has_attribute(ICE_LITE) or any(m.has_attribute(ICE_LITE) for m in self.media)

    def set_ice_lite(self, present: bool) -> None:
        """Add or remove session-level ``a=ice-lite`` (removing also clears media-level ones)."""
        self._set_flag(ICE_LITE, present)
        if not present:
            for media in self.media:
                media.remove_attributes(ICE_LITE)

    @property
    def ice_credentials(self) -> IceCredentials | None:
        """Session-level ufrag and password (see MediaDescription.ice_credentials for a stream)."""
        ufrag, pwd = self.ice_ufrag, self.ice_pwd
        if ufrag is None or pwd is None:
            return None
        return IceCredentials(ufrag, pwd)

    @property
    def ice_options(self) -> tuple[str, ...]:
        """Session-level ``a=ice-options`` tags."""
        return self.own_ice_options

    def remove_all_ice(self) -> int:
        """Remove every ICE attribute at session level and in every media description."""
        return self.remove_ice() + sum(media.remove_ice() for media in self.media)

    def add_media(self, media: MediaDescription) -> None:
        """Append a media description (its lines keep their own endings, if any)."""
        if media.lines and media.lines[0].type != "m":
            raise SdpError("a media description must start with an m= line")
        self.media.append(media)


def parse(data: str | bytes, *, fragment: bool = False) -> SessionDescription:
    """Parse an SDP body (shorthand for :meth:`SessionDescription.parse`)."""
    return SessionDescription.parse(data, fragment=fragment)
