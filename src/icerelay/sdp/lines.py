"""The physical lines of an SDP body, kept exactly as they came (RFC 8866 §5).

An SDP body is a sequence of ``<type>=<value>`` lines. To rewrite an SDP without disturbing anything
we did not mean to change (a relay must hand a phone back its own bytes), each :class:`Line` keeps
its raw text and its own line ending; only a line built or changed through the API is rendered from
its type and value.

Leniency, decided once here for the whole package:

* lines end with CRLF or LF, freely mixed (RFC 8866 §5 allows LF on input); a CR anywhere else is
  rejected because its meaning (line break or data?) is ambiguous;
* the last line may lack a line ending;
* trailing spaces and tabs are kept in the raw text but are not part of the value;
* blank (empty or whitespace-only) lines are kept and otherwise ignored (SIP stacks often append
  one);
* a line must start with a single ASCII letter followed by ``=``; leading spaces or a missing ``=``
  are rejected (we could not tell which field was meant). Unknown letters are kept and ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from icerelay.errors import SdpError

CRLF = "\r\n"
LF = "\n"

# Characters a value must never contain: they would split or end the line (SDP injection).
# A regex: one search per rewritten line is cheaper than a generator over the characters.
_FORBIDDEN_IN_VALUE = re.compile("[\r\n\0]")


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made building
# lines a tenth of an ng offer's cost. Lines are still never changed after they are built (edits
# make new ones, see with_value), and hash like frozen ones.
@dataclass(slots=True, unsafe_hash=True, init=False)
class Line:
    """One SDP line.

    ``type`` is the type letter (``"v"``, ``"o"``, ``"a"`` ...) or ``""`` for a blank line;
    ``value`` is the text after ``=`` without trailing spaces or tabs. ``raw`` is the original text
    (without the line ending) of a line that was parsed and not changed, or ``None`` for a line the
    caller built or changed: then :attr:`text` renders it as ``type=value``. ``eol`` is the line's
    own ending (``"\\r\\n"``, ``"\\n"`` or ``""`` for a last line without one) or ``None`` for
    "the document's". ``number`` is the 1-based line number in the parsed text (0 for a new
    line) and takes no part in equality.
    """

    type: str
    value: str
    raw: str | None = None
    eol: str | None = None
    number: int = field(default=0, compare=False)
    #: For an ``a=`` line the attribute name (the text before the first ``:``), else None: cut
    #: once, because a relay's rewrite looks every line's name up about ten times per SDP
    #: (profiled: the most called function of an ng offer). Same as :attr:`attribute_name`.
    name: str | None = field(default=None, init=False, compare=False, repr=False)
    #: What parsers made of this line's value, by (parser, value): validation, the relay's
    #: description of an SDP and its rewrite each parse the same m=, c=, a=rtpmap lines; the
    #: results are immutable values (frozen dataclasses, tuples, str, int), so they are shared.
    parsed: dict[object, object] | None = field(
        default=None, init=False, compare=False, repr=False
    )

    # Written out rather than generated with a __post_init__: one call per line instead of two
    # (a line is built for every line of every SDP the relay reads).
    def __init__(
        self,
        type: str,
        value: str,
        raw: str | None = None,
        eol: str | None = None,
        number: int = 0,
    ) -> None:
        self.type = type
        self.value = value
        self.raw = raw
        self.eol = eol
        self.number = number
        self.name = value.partition(":")[0] if type == "a" else None
        self.parsed = None

    @classmethod
    def make(cls, type: str, value: str) -> Line:
        """Build a new line (rendered as ``type=value`` in the document's line ending)."""
        if len(type) != 1 or not (type.isascii() and type.isalpha()):
            raise SdpError(f"line type must be one ASCII letter, got {type!r}")
        _check_value(value)
        return cls(type, value)

    @property
    def text(self) -> str:
        """The line's text without its ending: the raw text if unchanged, else ``type=value``."""
        if self.raw is not None:
            return self.raw
        return f"{self.type}={self.value}" if self.type else ""

    @property
    def is_blank(self) -> bool:
        """True for an empty or whitespace-only line."""
        return self.type == ""

    @property
    def attribute_name(self) -> str | None:
        """For an ``a=`` line, the attribute name (the text before the first ``:``); else None."""
        return self.name

    @property
    def attribute_value(self) -> str | None:
        """For an ``a=name:value`` line, ``value``; None for a flag (``a=name``) or another type."""
        if self.type != "a":
            return None
        _, colon, value = self.value.partition(":")
        return value if colon else None

    def with_value(self, value: str) -> Line:
        """This line with a new value: it will be re-rendered, keeping its place and line ending."""
        _check_value(value)
        # Not dataclasses.replace: that costs ~5 us per call, this a constructor call.
        return Line(self.type, value, None, self.eol, self.number)

    @property
    def where(self) -> str:
        """``"line N"`` for error messages (``"new line"`` for one built through the API)."""
        return f"line {self.number}" if self.number else "new line"


def attribute_line(name: str, value: str | None = None) -> Line:
    """Build a new ``a=name`` or ``a=name:value`` line."""
    if not name or ":" in name or any(c in name for c in " \t"):
        raise SdpError(f"attribute name {name!r} is empty or contains ':' or a blank")
    return Line.make("a", name if value is None else f"{name}:{value}")


def _check_value(value: str) -> None:
    if _FORBIDDEN_IN_VALUE.search(value):
        raise SdpError(f"a line value must not contain CR, LF or NUL: {value!r}")


def split_lines(text: str) -> list[Line]:
    """Cut ``text`` into :class:`Line` objects; SdpError (with the line number) on a bad line."""
    if not text:
        raise SdpError("empty SDP")
    crlf = text.count("\r\n")
    if crlf and crlf == text.count("\n") and crlf == text.count("\r"):
        return _split_crlf(text)
    pieces = text.split("\n")
    # Text ending in LF leaves an empty last piece: that is no line. Otherwise the last piece is a
    # final line without an ending.
    last = pieces.pop()
    lines: list[Line] = []
    append = lines.append
    number = 0
    for number, piece in enumerate(pieces, start=1):
        if piece[-1:] == "\r":
            content, eol = piece[:-1], CRLF
        else:
            content, eol = piece, LF
        # The usual line (``x=value``, no stray CR, no trailing blank) is built here, anything
        # else by _parse_line, which says what is wrong with it.
        if (
            len(content) > 2
            and content[1] == "="
            and content[0] in _LETTERS
            and content[-1] not in _TRAILING
            and "\r" not in content
        ):
            append(Line(content[0], content[2:], content, eol, number))
        else:
            append(_parse_line(content, eol, number))
    if last:
        append(_parse_line(last, "", number + 1))
    return lines


def _split_crlf(text: str) -> list[Line]:
    """:func:`split_lines` for a body whose every line ends in CRLF (no LF or CR elsewhere),
    which is what SIP stacks send: no line ending to tell apart, no stray CR to look for."""
    pieces = text.split(CRLF)
    last = pieces.pop()
    lines: list[Line] = []
    append = lines.append
    number = 0
    for number, content in enumerate(pieces, start=1):
        if (
            len(content) > 2
            and content[1] == "="
            and content[0] in _LETTERS
            and content[-1] not in _TRAILING
        ):
            append(Line(content[0], content[2:], content, CRLF, number))
        else:
            append(_parse_line(content, CRLF, number))
    if last:
        append(_parse_line(last, "", number + 1))
    return lines


def text_line_ending(text: str) -> str:
    """:func:`dominant_line_ending` of the lines ``text`` splits into, counted on the text."""
    crlf = text.count("\r\n")
    return LF if text.count("\n") - crlf > crlf else CRLF


_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TRAILING = frozenset(" \t")


def _parse_line(content: str, eol: str, number: int) -> Line:
    if "\r" in content:
        raise SdpError(f"line {number}: carriage return not followed by line feed")
    value = content.rstrip(" \t")
    if not value:
        return Line("", "", content, eol, number)
    if len(value) < 2 or value[1] != "=":
        raise SdpError(f"line {number}: expected '<letter>=<value>', got {_excerpt(content)}")
    type = value[0]
    if not (type.isascii() and type.isalpha()):
        raise SdpError(f"line {number}: line type must be an ASCII letter, got {type!r}")
    return Line(type, value[2:], content, eol, number)


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def dominant_line_ending(lines: Iterable[Line]) -> str:
    """The line ending most lines use (CRLF on a tie or when none has one): used for new lines."""
    counts = Counter(line.eol for line in lines if line.eol)
    if counts[LF] > counts[CRLF]:
        return LF
    return CRLF


def render(lines: list[Line], default_eol: str, final_newline: bool = True) -> str:
    """Join lines back into text: raw lines byte for byte, changed lines in ``default_eol``.

    Whether the text ends with a line ending is a property of the document (``final_newline``),
    not of whichever line happens to be last after an edit: a body that came without one keeps
    coming without one (unless the last line is empty), and a line that lost its place as the last
    one gets ``default_eol`` so that no line can be glued onto it.
    """
    parts: list[str] = []
    append = parts.append
    for line in lines:
        raw = line.raw
        if raw is not None:
            append(raw)
        else:
            append(f"{line.type}={line.value}" if line.type else "")
        append(line.eol or default_eol)
    if not final_newline and parts and parts[-2]:
        # An empty line keeps its ending even when it became the last one: without it the
        # line would vanish (the text would end with the previous line's ending).
        parts[-1] = ""
    return "".join(parts)
