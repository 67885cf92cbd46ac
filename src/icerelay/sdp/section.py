"""What the session level and each media description have in common: a list of lines with
``a=`` attributes, an optional ``c=`` line and the ICE attributes allowed at both levels.

Every mutation edits exactly the lines it is about and leaves every other :class:`Line` object (and
so its bytes) untouched; positions of existing lines never change except by the insertion or
removal the caller asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ClassVar, TypeVar

from icerelay.errors import SdpError
from icerelay.sdp.attributes import DIRECTIONS, Attribute, Direction, Rtcp
from icerelay.sdp.candidate import Candidate
from icerelay.sdp.fields import Connection, Origin
from icerelay.sdp.ice import (
    CANDIDATE,
    END_OF_CANDIDATES,
    ICE_ATTRIBUTES,
    ICE_OPTIONS,
    ICE_PACING,
    ICE_PWD,
    ICE_UFRAG,
    REMOTE_CANDIDATES,
    IceCredentials,
    parse_ice_options,
    parse_ice_pacing,
    parse_pwd,
    parse_remote_candidates,
    parse_ufrag,
)
from icerelay.sdp.lines import Line, attribute_line

T = TypeVar("T")
A = TypeVar("A")


def _parse_rtcp(value: str | None) -> Rtcp:
    return Rtcp.parse(value or "")


def _parse_candidate(value: str | None) -> Candidate:
    if value is None:
        raise SdpError("candidate needs a value")
    return Candidate.parse(value)


# Attributes whose values are checked when an SDP is parsed, so that a malformed one is reported
# once with its line number instead of surprising the ICE agent or the relay later.
_VALUE_PARSERS: dict[str, Callable[[str | None], object]] = {
    CANDIDATE: _parse_candidate,
    REMOTE_CANDIDATES: parse_remote_candidates,
    ICE_UFRAG: parse_ufrag,
    ICE_PWD: parse_pwd,
    ICE_OPTIONS: parse_ice_options,
    ICE_PACING: parse_ice_pacing,
    "rtcp": _parse_rtcp,
}
# Attributes that may appear once per level: two different values would be ambiguous.
_SINGLE = frozenset({ICE_UFRAG, ICE_PWD, ICE_PACING, "rtcp"})


class Section:
    """The lines of one level of an SDP (session level or one media description)."""

    # Line types that RFC 8866 puts before c= at this level; a new c= line goes after them.
    _BEFORE_CONNECTION: ClassVar[frozenset[str]] = frozenset()
    # "session" or "media", for error messages.
    _LEVEL: ClassVar[str] = "session"

    def __init__(self, lines: list[Line]) -> None:
        self.lines = lines

    # -- generic attributes -------------------------------------------------------------------

    def attributes(self) -> list[Attribute]:
        """Every ``a=`` attribute of this level, in order."""
        return [_attribute(line) for line in self.lines if line.type == "a"]

    def get_attribute(self, name: str) -> Attribute | None:
        """The first attribute called ``name`` (names are case-sensitive), or None."""
        for line in self.lines:
            if line.name == name:
                return _attribute(line)
        return None

    def get_attributes(self, name: str) -> list[Attribute]:
        """All attributes called ``name``, in order."""
        return [_attribute(line) for line in self.lines if line.name == name]

    def has_attribute(self, name: str) -> bool:
        """True if at least one attribute is called ``name``."""
        return any(line.name == name for line in self.lines)

    def add_attribute(self, name: str, value: str | None = None) -> None:
        """Append ``a=name[:value]`` after the last line of this level (before trailing blanks)."""
        self.lines.insert(self._end_index(), attribute_line(name, value))

    def remove_attributes(self, name: str) -> int:
        """Remove every attribute called ``name``; returns how many lines went."""
        before = len(self.lines)
        self.lines[:] = [line for line in self.lines if line.name != name]
        return before - len(self.lines)

    def replace_attribute(self, name: str, value: str | None = None) -> None:
        """Set attribute ``name`` to ``value``: the first such line is rewritten in place, any
        others are removed; with none present, the attribute is added as by add_attribute."""
        new = attribute_line(name, value)
        indexes = [i for i, line in enumerate(self.lines) if line.name == name]
        if not indexes:
            self.lines.insert(self._end_index(), new)
            return
        first = indexes[0]
        self.lines[first] = self.lines[first].with_value(new.value)
        for index in reversed(indexes[1:]):
            del self.lines[index]

    def _set_flag(self, name: str, present: bool) -> None:
        if not present:
            self.remove_attributes(name)
        elif not self.has_attribute(name):
            self.add_attribute(name)

    def _end_index(self) -> int:
        index = len(self.lines)
        while index > 1 and self.lines[index - 1].is_blank:
            index -= 1
        return index

    def _last_index_of(self, names: Iterable[str]) -> int | None:
        wanted = set(names)
        found = None
        for index, line in enumerate(self.lines):
            if line.name in wanted:
                found = index
        return found

    def _typed(self, name: str, parser: Callable[[str | None], T]) -> list[T]:
        """Parse every attribute called ``name``; errors name the line."""
        values = []
        for line in self.lines:
            if line.name == name:
                values.append(parse_at(line, parser, line.attribute_value))
        return values

    def _first_typed(self, name: str, parser: Callable[[str | None], T]) -> T | None:
        for line in self.lines:
            if line.name == name:
                return parse_at(line, parser, line.attribute_value)
        return None

    # -- c= -----------------------------------------------------------------------------------

    @property
    def connection(self) -> Connection | None:
        """The ``c=`` line of this level, or None."""
        for line in self.lines:
            if line.type == "c":
                return parse_at(line, Connection.parse, line.value)
        return None

    def set_connection(self, connection: Connection | str | None) -> None:
        """Replace this level's ``c=`` line in place, add one where RFC 8866 puts it, or remove it
        (None). A string is taken as an address (``IN IP4`` or ``IN IP6`` chosen by its form)."""
        if isinstance(connection, str):
            connection = Connection.for_address(connection)
        for index, line in enumerate(self.lines):
            if line.type == "c":
                if connection is None:
                    del self.lines[index]
                else:
                    self.lines[index] = line.with_value(connection.to_sdp())
                return
        if connection is None:
            return
        position = 0
        for index, line in enumerate(self.lines):
            if line.type in self._BEFORE_CONNECTION:
                position = index + 1
        self.lines.insert(position, Line.make("c", connection.to_sdp()))

    # -- direction ----------------------------------------------------------------------------

    @property
    def own_direction(self) -> Direction | None:
        """The direction attribute at this level, or None."""
        for line in self.lines:
            if line.type == "a" and line.value in DIRECTIONS:
                return Direction(line.value)
        return None

    def set_direction(self, direction: Direction | None) -> None:
        """Set this level's direction attribute in place (or append it); None removes it."""
        for index, line in enumerate(self.lines):
            if line.type == "a" and line.value in DIRECTIONS:
                if direction is None:
                    del self.lines[index]
                else:
                    self.lines[index] = line.with_value(Direction(direction).value)
                return
        if direction is not None:
            self.add_attribute(Direction(direction).value)

    # -- ICE attributes allowed at both levels (RFC 8839 §5) -----------------------------------

    @property
    def ice_ufrag(self) -> str | None:
        """``a=ice-ufrag`` at this level only."""
        return self._first_typed(ICE_UFRAG, parse_ufrag)

    @property
    def ice_pwd(self) -> str | None:
        """``a=ice-pwd`` at this level only."""
        return self._first_typed(ICE_PWD, parse_pwd)

    @property
    def own_ice_options(self) -> tuple[str, ...]:
        """The ``a=ice-options`` tags at this level (several lines are concatenated)."""
        return tuple(tag for tags in self._typed(ICE_OPTIONS, parse_ice_options) for tag in tags)

    @property
    def own_ice_pacing(self) -> int | None:
        """``a=ice-pacing`` (milliseconds) at this level only."""
        return self._first_typed(ICE_PACING, parse_ice_pacing)

    @property
    def own_end_of_candidates(self) -> bool:
        """True if ``a=end-of-candidates`` (RFC 8840) is at this level."""
        return self.has_attribute(END_OF_CANDIDATES)

    def set_ice_credentials(self, credentials: IceCredentials | None) -> None:
        """Set ``a=ice-ufrag`` and ``a=ice-pwd`` at this level (checked against RFC 8839) in
        place, or append them; None removes both."""
        if credentials is None:
            self.remove_attributes(ICE_UFRAG)
            self.remove_attributes(ICE_PWD)
            return
        credentials.check()
        self.replace_attribute(ICE_UFRAG, credentials.ufrag)
        self.replace_attribute(ICE_PWD, credentials.pwd)

    def set_ice_options(self, options: Iterable[str]) -> None:
        """Set ``a=ice-options`` at this level to ``options`` (empty removes it)."""
        tags = " ".join(options)
        if not tags:
            self.remove_attributes(ICE_OPTIONS)
            return
        parse_ice_options(tags)
        self.replace_attribute(ICE_OPTIONS, tags)

    def set_end_of_candidates(self, present: bool) -> None:
        """Add or remove ``a=end-of-candidates`` at this level."""
        self._set_flag(END_OF_CANDIDATES, present)

    def remove_ice(self) -> int:
        """Remove every ICE attribute of RFC 8839/8840 at this level; returns how many lines went.

        For a relay that strips ICE (rtpengine's ``ICE=remove``): nothing else moves.
        """
        before = len(self.lines)
        self.lines[:] = [line for line in self.lines if line.name not in ICE_ATTRIBUTES]
        return before - len(self.lines)

    # -- validation at parse time -------------------------------------------------------------

    def validate(self) -> None:
        """Check every line this package gives typed access to; raise SdpError with its number.

        :meth:`SessionDescription.parse` calls it for every level; call it again after editing
        :attr:`lines` by hand.
        """
        level = self._LEVEL
        seen: dict[str, Line] = {}
        direction: Line | None = None
        for line in self.lines:
            if line.type in ("o", "c"):
                if line.type in seen:
                    raise SdpError(f"{line.where}: second {line.type}= line at {level} level "
                                   f"(first at {seen[line.type].where})")
                seen[line.type] = line
                if line.type == "o":
                    parse_at(line, Origin.parse, line.value)
                else:
                    parse_at(line, Connection.parse, line.value)
            elif line.type == "a":
                name = line.name
                if not name:
                    raise SdpError(f"{line.where}: attribute without a name")
                if name in _SINGLE:
                    if name in seen:
                        raise SdpError(f"{line.where}: second a={name} at {level} level "
                                       f"(first at {seen[name].where})")
                    seen[name] = line
                if line.value in DIRECTIONS:
                    if direction is not None:
                        raise SdpError(f"{line.where}: second direction attribute a={line.value} "
                                       f"at {level} level (a={direction.value} at "
                                       f"{direction.where})")
                    direction = line
                parser = _VALUE_PARSERS.get(name)
                if parser is not None:
                    parse_at(line, parser, line.attribute_value)


def _attribute(line: Line) -> Attribute:
    return Attribute(line.attribute_name or "", line.attribute_value)


def parse_at(line: Line, parse: Callable[[A], T], value: A) -> T:
    """Run ``parse(value)`` and prefix any SdpError with the line number and its type.

    A line's parsed values are kept on it (:attr:`Line.parsed`): the same line is parsed by
    validation and again by every reader of that attribute.
    """
    cache = line.parsed
    key = (parse, value)
    if cache is not None:
        hit = cache.get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
    try:
        result = parse(value)
    except SdpError as error:
        prefix = f"a={line.attribute_name}" if line.type == "a" else f"{line.type}="
        raise SdpError(f"{line.where}: {prefix}: {error}") from None
    if cache is None:
        line.parsed = {key: result}
    else:
        cache[key] = result
    return result


_MISSING = object()
