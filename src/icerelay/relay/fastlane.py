"""The ng control path's fast lane for simple SDP bodies: read and rewrite on raw lines.

What most proxies send for a call without ICE (a SIP phone's offer, its answer) is a few ASCII
lines, all ending in CRLF, with single spaces between fields: the general model
(:class:`~icerelay.sdp.SessionDescription`, :func:`~.rewrite.describe`, :func:`~.rewrite.rewrite`)
spends most of an offer's CPU building objects for lines a relay never changes. Here such a body
is read once into its lines and the few positions the relay needs (``o=``, the ``c=`` lines, each
``m=`` and ``a=rtcp``), and rewritten by replacing those lines' text.

Anything else takes the general path: a body this module does not recognise as simple gives
None (:func:`read`), and so does a plan it does not handle (:meth:`SimpleSdp.write`). What it
does handle it handles exactly as the general path: the same :class:`StreamOffer` values and the
same output bytes, which ``tests/unit/relay/test_fastlane.py`` checks property by property
against the general model. A body the general parser would refuse is never simple, so its error
still comes from the general path, word for word.
"""

from __future__ import annotations

from collections.abc import Sequence

from icerelay.errors import SdpError
from icerelay.numbers import parse_uint as small_uint
from icerelay.relay.options import RelayOptions
from icerelay.relay.plans import SessionPlan, StreamOffer, is_unspecified
from icerelay.relay.policy import IceMode
from icerelay.sdp.attributes import DIRECTIONS, STATIC_PAYLOAD_TYPES, Direction, Rtcp, RtpMap
from icerelay.sdp.grammar import split_fields
from icerelay.sdp.ice import ICE_ATTRIBUTES

__all__ = ["SimpleSdp", "read"]

# Line types taken as they are (no typed access, not validated by the general parser either);
# v=, o=, c=, m= and a= are looked at below. Upper-case and other letters: general path.
_PLAIN = frozenset("siuepbtrzk")
# Attributes only the general path reads (ICE): such a body is not simple.
_GENERAL = ICE_ATTRIBUTES
_RTCP = "rtcp"
_RTCP_MUX = "rtcp-mux"


class SimpleSdp:
    """A simple body's lines, where its ``o=`` and ``c=`` lines are, and each stream."""

    __slots__ = ("_lines", "_media", "_origin", "_rtcp", "_session_connection", "offers")

    def __init__(
        self,
        lines: list[str],
        origin: int,
        session_connection: int | None,
        media: list[tuple[int, int | None, list[str]]],
        rtcp: list[tuple[int, Rtcp] | None],
        offers: list[StreamOffer],
    ) -> None:
        self._lines = lines
        self._origin = origin
        self._session_connection = session_connection
        #: Per stream: index of its m= line, of its c= line (or None), the m= fields.
        self._media = media
        #: Per stream: its a=rtcp line (index and value), or None.
        self._rtcp = rtcp
        #: What :func:`~.rewrite.describe` makes of the body.
        self.offers = offers

    def write(self, plan: SessionPlan, options: RelayOptions) -> bytes | None:
        """The body rewritten as :func:`~.rewrite.apply_plan` would, or None when the plan
        needs what only the general path does (ICE=force or force-relay, a new ``c=``)."""
        if plan.ice is not IceMode.DEFAULT and plan.ice is not IceMode.REMOVE:
            # FORCE adds ICE lines, FORCE_RELAY keeps the defaults; REMOVE has nothing to remove.
            return None
        streams = plan.streams
        media = self._media
        if len(streams) != len(media):
            return None
        planned = [(where, stream) for where, stream in zip(media, streams, strict=True) if stream]
        lines = self._lines
        if not planned:
            return _join(lines)
        for _, stream in planned:
            if not _is_field(stream.address) or not 0 <= stream.rtp_port <= 65535:
                return None
        out = list(lines)
        relay_address = planned[0][1].address
        session_connection = self._session_connection
        inherits = any(connection is None for (_, connection, _), _ in planned)
        if session_connection is not None and (inherits or options.replace_session_connection):
            _relay_connection(out, session_connection, relay_address)
        elif session_connection is None and inherits:
            return None  # no c= for a stream: the general path adds one
        if options.replace_origin:
            fields = lines[self._origin][2:].split(" ")
            fields[4] = "IP6" if ":" in relay_address else "IP4"
            fields[5] = relay_address
            out[self._origin] = "o=" + " ".join(fields)
        for (m_line, connection, fields), stream in planned:
            if connection is not None:
                _relay_connection(out, connection, stream.address)
            out[m_line] = f"m={fields[0]} {stream.rtp_port} " + " ".join(fields[2:])
        for index, wanted in enumerate(streams):
            found = self._rtcp[index]
            if wanted is None or found is None:
                continue
            where, rtcp = found
            # RTCP on the RTP port (RFC 5761) stays so, unless mux is taken away.
            on_rtp_port = rtcp.port == int(media[index][2][1]) and wanted.rtcp_mux is not False
            port = wanted.rtp_port if on_rtp_port else wanted.rtcp_port
            if rtcp.address is not None and not is_unspecified(rtcp.address):
                family = "IP6" if ":" in wanted.address else "IP4"
                rtcp = Rtcp(port, rtcp.nettype or "IN", family, wanted.address)
            else:
                rtcp = Rtcp(port, rtcp.nettype, rtcp.addrtype, rtcp.address)
            try:
                out[where] = "a=rtcp:" + rtcp.to_sdp()
            except SdpError:
                return None  # the general path says what is wrong
        # a=rtcp-mux taken away or added (at the end of its section), last section first so
        # that the positions of the earlier ones hold.
        ends = [m_line for m_line, _, _ in media[1:]] + [len(lines)]
        for index in reversed(range(len(media))):
            wanted = streams[index]
            mux = None if wanted is None else wanted.rtcp_mux
            if mux is None:
                continue
            start, end = media[index][0], ends[index]
            if not mux:
                out[start:end] = [line for line in out[start:end] if not _is_mux(line)]
            elif not any(_is_mux(line) for line in out[start:end]):
                out.insert(end, "a=rtcp-mux")
        return _join(out)


def read(body: bytes) -> SimpleSdp | None:
    """``body`` read for the fast lane, or None: not simple (the general path takes it)."""
    if not body.isascii() or not body.endswith(b"\r\n"):
        return None
    text = body.decode("ascii")
    crlf = text.count("\r\n")
    if crlf != text.count("\n") or crlf != text.count("\r") or "\t" in text or "\0" in text:
        return None
    lines = text.split("\r\n")
    lines.pop()  # the empty piece after the last CRLF
    if lines[0] != "v=0":
        return None
    origin: int | None = None
    session_connection: int | None = None
    media: list[tuple[int, int | None, list[str]]] = []
    # Per level: its c= line, direction, rtcp-mux, rtpmap lines (session level is levels[0]).
    levels: list[_Level] = [_Level()]
    level = levels[0]
    for index in range(1, len(lines)):
        line = lines[index]
        if len(line) < 3 or line[1] != "=" or line[-1] == " ":
            return None
        kind = line[0]
        if kind == "a":
            value = line[2:]
            name = value.partition(":")[0]
            if not name or name in _GENERAL:
                return None
            if value in DIRECTIONS:
                if level.direction is not None:
                    return None  # two directions: the general parser's error
                level.direction = Direction(value)
            elif name == _RTCP_MUX:
                level.mux = True
            elif name == _RTCP:
                if level.rtcp is not None or not media or not value.startswith("rtcp:"):
                    return None  # a second one, one at session level, or one without a value
                try:
                    level.rtcp = (index, Rtcp.parse(value[5:]))
                except SdpError:
                    return None
            elif name == "rtpmap":
                level.rtpmaps.append(line[9:] if len(line) > 8 and line[8] == ":" else None)
        elif kind in _PLAIN:
            continue
        elif kind == "m":
            fields = _fields(line, 3)
            if fields is None or not _is_port(fields[1]):
                return None
            level = _Level()
            levels.append(level)
            media.append((index, None, fields))
        elif kind == "c":
            fields = _fields(line, 3)
            if (
                fields is None
                or len(fields) != 3
                or fields[1] not in ("IP4", "IP6")
                or "/" in fields[2]
                or level.connection is not None
            ):
                return None
            level.connection = fields[2]
            if media:
                m_line, _, m_fields = media[-1]
                media[-1] = (m_line, index, m_fields)
            else:
                session_connection = index
        elif kind == "o":
            fields = _fields(line, 6)
            if fields is None or len(fields) != 6 or media or origin is not None:
                return None
            origin = index
        else:
            return None  # v= again, an upper-case or unknown type: general path
    if origin is None:
        return None
    session = levels[0]
    offers = []
    for number, ((_, _, fields), level) in enumerate(zip(media, levels[1:], strict=True)):
        codec: str | None = None
        formats = tuple(fields[3:])
        if formats:
            try:
                codec = level.codec(formats[0]) or formats[0]
            except SdpError:
                return None  # a malformed rtpmap: the general path names it
        address = level.connection if level.connection is not None else session.connection
        port = int(fields[1])
        mux = level.mux
        if level.rtcp is not None:
            rtcp = level.rtcp[1]
            rtcp_port = rtcp.port
            rtcp_address = rtcp.address if rtcp.address is not None else address
        else:
            rtcp_port, rtcp_address = (port if mux else (port + 1 if port else 0)), address
        offers.append(
            StreamOffer(
                index=number,
                media=fields[0],
                proto=fields[2],
                address=address,
                port=port,
                rtcp_address=rtcp_address,
                rtcp_port=rtcp_port,
                rtcp_mux=mux,
                direction=level.direction or session.direction or Direction.SENDRECV,
                ice=False,
                component_2=False,
                codec=codec,
                remote_candidates=(),
                payload_types=formats,
            )
        )
    rtcp_lines = [level.rtcp for level in levels[1:]]
    return SimpleSdp(lines, origin, session_connection, media, rtcp_lines, offers)


class _Level:
    __slots__ = ("connection", "direction", "mux", "rtcp", "rtpmaps")

    def __init__(self) -> None:
        self.connection: str | None = None
        #: The a=rtcp line: its index and value.
        self.rtcp: tuple[int, Rtcp] | None = None
        self.direction: Direction | None = None
        self.mux = False
        #: The values of the level's a=rtpmap lines (None: an a=rtpmap without a value).
        self.rtpmaps: list[str | None] = []

    def codec(self, payload_type: str) -> str | None:
        """:meth:`MediaDescription.codec_name`: the first a=rtpmap for ``payload_type``, else
        the static assignment."""
        for value in self.rtpmaps:
            if value is not None:
                found = split_fields(value)
                if found and found[0] == payload_type:
                    return RtpMap.parse(value).encoding_name
        number = small_uint(payload_type, max_digits=3)
        static = None if number is None else STATIC_PAYLOAD_TYPES.get(number)
        return None if static is None else static.encoding_name


def _fields(line: str, least: int) -> list[str] | None:
    """The fields of an o=, c= or m= line when single spaces separate them, else None."""
    value = line[2:]
    if value[0] == " " or "  " in value:
        return None
    fields = value.split(" ")
    return fields if len(fields) >= least else None


def _is_port(text: str) -> bool:
    # Digits without a leading zero (the general path would render "01234" as "1234" too,
    # but the offers and the output are simpler to keep equal this way), no "/<count>".
    return (
        0 < len(text) <= 5
        and text.isdigit()
        and (text == "0" or text[0] != "0")
        and int(text) <= 65535
    )


def _is_mux(line: str) -> bool:
    return line[0] == "a" and line[2:].partition(":")[0] == _RTCP_MUX


def _is_field(text: str) -> bool:
    return bool(text) and not any(c in text for c in " \t\r\n\0")


def _relay_connection(lines: list[str], index: int, address: str) -> None:
    """The c= line at ``index`` pointed at ``address`` (unless it says 0.0.0.0 or ::, hold)."""
    nettype, _, current = lines[index][2:].split(" ")
    if not is_unspecified(current):
        lines[index] = f"c={nettype} {'IP6' if ':' in address else 'IP4'} {address}"


def _join(lines: Sequence[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
