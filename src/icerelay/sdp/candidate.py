"""The ICE ``candidate`` attribute (RFC 8839 §5.1, RFC 5245 §15.1, RFC 6544 §4.5 for TCP).

::

    candidate:<foundation> <component-id> <transport> <priority> <connection-address> <port>
              typ <cand-type> [raddr <address>] [rport <port>] [tcptype active|passive|so]
              *(<extension-att-name> <extension-att-value>)

Parsing is strict about everything whose meaning matters to connectivity checks (numbers, ranges,
addresses) and lenient about layout: fields may be separated by several blanks, ``raddr``,
``rport`` and ``tcptype`` are recognised wherever they appear after ``typ``, and unknown
``cand-type`` and ``transport`` tokens are kept (RFC 8839 lets both be extended). Transport case is
preserved (``UDP`` from Asterisk, ``udp`` from browsers) and compared case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass

from icerelay.errors import SdpError
from icerelay.sdp.grammar import (
    address_family,
    check_connection_address,
    check_field,
    check_ice_chars,
    check_token,
    parse_port,
    parse_uint,
    split_fields,
)

CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
TCP_TYPES = ("active", "passive", "so")
MAX_PRIORITY = 2**32 - 1
MAX_COMPONENT = 256

# Keywords with their own fields; never stored among the extensions.
_KEYWORDS = ("raddr", "rport", "tcptype")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ICE candidate as carried in SDP.

    :attr:`extensions` holds the extension attributes (``generation 0``, ``network-id 1``,
    ``ufrag abcd``...) as name/value pairs in their order. :meth:`to_sdp` writes ``raddr``,
    ``rport`` and ``tcptype`` first, in that order, then the extensions: the order every known
    stack uses, so that a canonical line round-trips exactly.
    """

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None
    tcptype: str | None = None
    extensions: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """Parse a candidate.

        Accepts the attribute value (``"Ha000128qZ 1 UDP ..."``), the attribute
        (``"candidate:Ha000128qZ ..."``) and the SDP line (``"a=candidate:..."``) as trickle ICE
        (RFC 8840) and browser APIs pass them around. Raises SdpError naming the bad field.
        """
        value = text.strip(" \t\r\n")
        if value.startswith("a="):
            value = value[2:]
        if value.startswith("candidate:"):
            value = value[len("candidate:"):]
        fields = split_fields(value)
        if len(fields) < 8:
            raise SdpError(f"candidate needs at least 8 fields (foundation component transport "
                           f"priority address port typ type), got {len(fields)}")
        foundation = check_ice_chars(fields[0], "candidate foundation", 1, 32)
        component = parse_uint(fields[1], "candidate component-id", MAX_COMPONENT, 1)
        transport = check_token(fields[2], "candidate transport")
        priority = parse_uint(fields[3], "candidate priority", MAX_PRIORITY)
        address = check_connection_address(fields[4], "candidate connection-address")
        port = parse_port(fields[5], "candidate port")
        if fields[6] != "typ":
            raise SdpError(f"candidate: expected 'typ' after the port, got {fields[6]!r}")
        type = check_token(fields[7], "candidate type")

        related_address: str | None = None
        related_port: int | None = None
        tcptype: str | None = None
        extensions: list[tuple[str, str]] = []
        tail = fields[8:]
        if len(tail) % 2:
            raise SdpError(f"candidate: extension attribute {tail[-1]!r} has no value")
        seen: set[str] = set()
        for index in range(0, len(tail), 2):
            name, item = tail[index], tail[index + 1]
            if name in _KEYWORDS:
                # Twice the same keyword: which one would the peer mean?
                if name in seen:
                    raise SdpError(f"candidate: {name} appears twice")
                seen.add(name)
            if name == "raddr":
                related_address = check_connection_address(item, "candidate raddr")
            elif name == "rport":
                related_port = parse_port(item, "candidate rport")
            elif name == "tcptype":
                if item not in TCP_TYPES:
                    raise SdpError(f"candidate tcptype must be active, passive or so, got {item!r}")
                tcptype = item
            else:
                check_token(name, "candidate extension attribute name")
                check_field(item, f"candidate extension {name} value")
                extensions.append((name, item))
        return cls(foundation, component, transport, priority, address, port, type,
                   related_address, related_port, tcptype, tuple(extensions))

    def to_sdp(self) -> str:
        """The attribute value (without ``candidate:``); ``parse(c.to_sdp()) == c``.

        Raises SdpError if a field cannot be written (out of range, blank inside a field...).
        """
        check_ice_chars(self.foundation, "candidate foundation", 1, 32)
        if not 1 <= self.component <= MAX_COMPONENT:
            raise SdpError(f"candidate component-id {self.component} is out of range 1..256")
        check_token(self.transport, "candidate transport")
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise SdpError(f"candidate priority {self.priority} is out of range 0..{MAX_PRIORITY}")
        check_connection_address(self.address, "candidate connection-address")
        _check_port(self.port, "candidate port")
        check_token(self.type, "candidate type")
        parts = [self.foundation, str(self.component), self.transport, str(self.priority),
                 self.address, str(self.port), "typ", self.type]
        if self.related_address is not None:
            check_connection_address(self.related_address, "candidate raddr")
            parts += ["raddr", self.related_address]
        if self.related_port is not None:
            _check_port(self.related_port, "candidate rport")
            parts += ["rport", str(self.related_port)]
        if self.tcptype is not None:
            if self.tcptype not in TCP_TYPES:
                raise SdpError(f"candidate tcptype must be active, passive or so, "
                               f"got {self.tcptype!r}")
            parts += ["tcptype", self.tcptype]
        for name, value in self.extensions:
            if name in _KEYWORDS:
                raise SdpError(f"candidate extension {name!r} must be set through its own field")
            check_token(name, "candidate extension attribute name")
            check_field(value, f"candidate extension {name} value")
            parts += [name, value]
        return " ".join(parts)

    def to_attribute(self) -> str:
        """``candidate:<value>``, the form trickle ICE (RFC 8840) and browsers use."""
        return "candidate:" + self.to_sdp()

    @property
    def is_udp(self) -> bool:
        """True for a UDP candidate (transport compared case-insensitively)."""
        return self.transport.upper() == "UDP"

    @property
    def is_tcp(self) -> bool:
        """True for a TCP candidate (RFC 6544)."""
        return self.transport.upper() == "TCP"

    @property
    def family(self) -> int | None:
        """4 or 6 for an IP address, None for an FQDN (e.g. an mDNS ``.local`` name)."""
        return address_family(self.address)

    def extension(self, name: str) -> str | None:
        """The value of the first extension attribute called ``name`` (e.g. ``generation``)."""
        for key, value in self.extensions:
            if key == name:
                return value
        return None


def _check_port(port: int, field: str) -> None:
    if not 0 <= port <= 65535:
        raise SdpError(f"{field} {port} is out of range 0..65535")
