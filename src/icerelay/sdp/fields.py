"""Typed values of the ``o=``, ``c=`` and ``m=`` lines (RFC 8866 §5.2, §5.7, §5.14)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from icerelay.errors import SdpError
from icerelay.sdp.grammar import address_family, check_field, parse_port, parse_uint, split_fields


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>``.

    ``session_id`` and ``session_version`` are kept as the digit strings the peer wrote (leading
    zeros and numbers beyond 64 bits survive a round trip); :meth:`next_version` increments the
    version for a re-offer as RFC 3264 §8 requires. Any token is accepted in every field: phones put
    odd things in the username, and the meaning of the line is still clear as long as it has six
    fields.
    """

    username: str
    session_id: str
    session_version: str
    nettype: str
    addrtype: str
    address: str

    @classmethod
    def parse(cls, value: str) -> Origin:
        """Parse the value of an ``o=`` line."""
        fields = split_fields(value)
        if len(fields) != 6:
            raise SdpError(f"o= needs 6 fields (username sess-id sess-version nettype addrtype "
                           f"address), got {len(fields)}")
        return cls(*fields)

    def to_sdp(self) -> str:
        """The value of the ``o=`` line."""
        fields = (self.username, self.session_id, self.session_version, self.nettype,
                  self.addrtype, self.address)
        text = _joined(fields)
        if text is not None:
            return text
        for name in ("username", "session_id", "session_version", "nettype", "addrtype",
                     "address"):
            check_field(getattr(self, name), f"o= {name}")
        return (f"{self.username} {self.session_id} {self.session_version} {self.nettype} "
                f"{self.addrtype} {self.address}")

    def next_version(self) -> Origin:
        """This origin with ``session_version`` incremented (it must be a decimal number)."""
        # RFC 8866 puts no bound on the digits; 10**40 only keeps a hostile value cheap.
        version = parse_uint(self.session_version, "o= sess-version", 10**40)
        return Origin(self.username, self.session_id, str(version + 1), self.nettype,
                      self.addrtype, self.address)


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=<nettype> <addrtype> <connection-address>`` at session or media level.

    For multicast the address may carry ``/<ttl>`` (IPv4 only) and ``/<number of addresses>``;
    those are split out into :attr:`ttl` and :attr:`count`.
    """

    nettype: str
    addrtype: str
    address: str
    ttl: int | None = None
    count: int | None = None

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """``IN IP6 <address>`` for an IPv6 literal, else ``IN IP4 <address>``."""
        return cls("IN", "IP6" if address_family(address) == 6 else "IP4", address)

    @classmethod
    def parse(cls, value: str) -> Connection:
        """Parse the value of a ``c=`` line."""
        fields = split_fields(value)
        if len(fields) != 3:
            raise SdpError(f"c= needs 3 fields (nettype addrtype address), got {len(fields)}")
        nettype, addrtype, address = fields
        base, *suffixes = address.split("/")
        if not base:
            raise SdpError(f"c= address is empty in {address!r}")
        ttl = count = None
        if addrtype.upper() == "IP6":
            if len(suffixes) > 1:
                raise SdpError(f"c= IP6 address {address!r} has more than one '/' suffix")
            if suffixes:
                count = parse_uint(suffixes[0], "c= number of addresses", 2**32, 1)
        elif addrtype.upper() == "IP4":
            if len(suffixes) > 2:
                raise SdpError(f"c= IP4 address {address!r} has more than two '/' suffixes")
            if suffixes:
                ttl = parse_uint(suffixes[0], "c= TTL", 255)
            if len(suffixes) == 2:
                count = parse_uint(suffixes[1], "c= number of addresses", 2**32, 1)
        else:
            # Unknown address type: we cannot know what a '/' means there, so keep it verbatim.
            base = address
        return cls(nettype, addrtype, base, ttl, count)

    def to_sdp(self) -> str:
        """The value of the ``c=`` line."""
        if self.ttl is None and self.count is None:
            text = _joined((self.nettype, self.addrtype, self.address))
            if text is not None:
                return text
        check_field(self.nettype, "c= nettype")
        check_field(self.addrtype, "c= addrtype")
        check_field(self.address, "c= address")
        address = self.address
        if self.ttl is not None:
            address += f"/{self.ttl}"
        if self.count is not None:
            address += f"/{self.count}"
        return f"{self.nettype} {self.addrtype} {address}"


@dataclass(frozen=True, slots=True)
class MediaLine:
    """``m=<media> <port>[/<number of ports>] <proto> <fmt> ...``.

    A port of 0 rejects or disables the stream (RFC 3264 §6). An ``m=`` line without formats is
    accepted (some stacks send one for a rejected stream) although RFC 8866 asks for one or more.
    """

    media: str
    port: int
    proto: str
    formats: tuple[str, ...] = ()
    port_count: int | None = None

    @classmethod
    def parse(cls, value: str) -> MediaLine:
        """Parse the value of an ``m=`` line."""
        fields = split_fields(value)
        if len(fields) < 3:
            raise SdpError(f"m= needs at least 3 fields (media port proto), got {len(fields)}")
        media, port_text, proto, *formats = fields
        port_part, slash, count_part = port_text.partition("/")
        port = parse_port(port_part, "m= port")
        count = parse_uint(count_part, "m= number of ports", 65535, 1) if slash else None
        return cls(media, port, proto, tuple(formats), count)

    def to_sdp(self) -> str:
        """The value of the ``m=`` line."""
        if self.port_count is None and 0 <= self.port <= 65535:
            text = _joined((self.media, str(self.port), self.proto, *self.formats))
            if text is not None:
                return text
        check_field(self.media, "m= media")
        check_field(self.proto, "m= proto")
        for fmt in self.formats:
            check_field(fmt, "m= format")
        if not 0 <= self.port <= 65535:
            raise SdpError(f"m= port {self.port} is out of range 0..65535")
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join((self.media, port, self.proto, *self.formats))


# What no field may hold besides the space that separates fields (see check_field).
_BREAKS = re.compile("[\t\r\n\0]")


def _joined(fields: tuple[str, ...]) -> str | None:
    """The fields joined by single spaces when each is a valid field (non-empty, no blank, CR,
    LF or NUL), else None (the caller's field-by-field check then says which is wrong). One
    join and one search instead of a check per field: lines are rendered on every rewrite."""
    if "" in fields:
        return None
    text = " ".join(fields)
    if text.count(" ") != len(fields) - 1 or _BREAKS.search(text):
        return None
    return text
