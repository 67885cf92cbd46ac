"""Typed values of the media attributes icerelay reads: direction, rtpmap/fmtp, rtcp, rtcp-mux.

RFC 8866 §6 (direction, rtpmap, fmtp), RFC 3551 (static payload types), RFC 3605 (``a=rtcp``),
RFC 5761 (``a=rtcp-mux``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from icerelay.errors import SdpError
from icerelay.sdp.grammar import check_field, parse_port, parse_uint, split_fields


@dataclass(frozen=True, slots=True)
class Attribute:
    """A generic ``a=<name>`` (flag, :attr:`value` None) or ``a=<name>:<value>`` attribute."""

    name: str
    value: str | None = None


class Direction(StrEnum):
    """The media direction attributes (RFC 8866 §6.7); ``sendrecv`` is the default."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"


DIRECTIONS = frozenset(direction.value for direction in Direction)


@dataclass(frozen=True, slots=True)
class Rtcp:
    """``a=rtcp:<port> [<nettype> <addrtype> <connection-address>]`` (RFC 3605).

    Tells the peer where to send RTCP when it is not on RTP port + 1 (typically behind a NAT);
    without an address the ``c=`` address applies.
    """

    port: int
    nettype: str | None = None
    addrtype: str | None = None
    address: str | None = None

    @classmethod
    def parse(cls, value: str) -> Rtcp:
        """Parse the value of an ``a=rtcp`` attribute."""
        fields = split_fields(value)
        if len(fields) not in (1, 4):
            raise SdpError(f"a=rtcp needs a port, optionally followed by nettype addrtype "
                           f"address; got {len(fields)} fields")
        port = parse_port(fields[0], "a=rtcp port")
        if len(fields) == 1:
            return cls(port)
        return cls(port, fields[1], fields[2], fields[3])

    def to_sdp(self) -> str:
        """The value of the ``a=rtcp`` attribute."""
        if not 0 <= self.port <= 65535:
            raise SdpError(f"a=rtcp port {self.port} is out of range 0..65535")
        parts = (self.nettype, self.addrtype, self.address)
        if all(part is None for part in parts):
            return str(self.port)
        if any(part is None for part in parts):
            raise SdpError("a=rtcp needs all of nettype, addrtype and address, or none")
        checked = [check_field(str(part), "a=rtcp address field") for part in parts]
        return " ".join((str(self.port), *checked))


@dataclass(frozen=True, slots=True)
class RtpMap:
    """``a=rtpmap:<payload type> <encoding name>/<clock rate>[/<encoding parameters>]``."""

    payload_type: int
    encoding_name: str
    clock_rate: int
    encoding_parameters: str | None = None

    @classmethod
    def parse(cls, value: str) -> RtpMap:
        """Parse the value of an ``a=rtpmap`` attribute."""
        fields = split_fields(value)
        if len(fields) != 2:
            raise SdpError(f"a=rtpmap needs '<payload type> <encoding>/<rate>', got {value!r}")
        payload_type = parse_uint(fields[0], "a=rtpmap payload type", 127)
        name, *rest = fields[1].split("/")
        if not name or not rest or len(rest) > 2:
            raise SdpError(f"a=rtpmap encoding must be '<name>/<rate>[/<parameters>]', "
                           f"got {fields[1]!r}")
        rate = parse_uint(rest[0], "a=rtpmap clock rate", 2**32 - 1, 1)
        return cls(payload_type, name, rate, rest[1] if len(rest) == 2 else None)

    def to_sdp(self) -> str:
        """The value of the ``a=rtpmap`` attribute."""
        check_field(self.encoding_name, "a=rtpmap encoding name")
        text = f"{self.payload_type} {self.encoding_name}/{self.clock_rate}"
        if self.encoding_parameters is not None:
            text += f"/{self.encoding_parameters}"
        return text


def _static(payload_type: int, name: str, rate: int, channels: str | None = None) -> RtpMap:
    return RtpMap(payload_type, name, rate, channels)


# RFC 3551 §6, Table 4 and 5: payload types a peer may use without an a=rtpmap line.
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    rtpmap.payload_type: rtpmap
    for rtpmap in (
        _static(0, "PCMU", 8000), _static(3, "GSM", 8000), _static(4, "G723", 8000),
        _static(5, "DVI4", 8000), _static(6, "DVI4", 16000), _static(7, "LPC", 8000),
        _static(8, "PCMA", 8000), _static(9, "G722", 8000), _static(10, "L16", 44100, "2"),
        _static(11, "L16", 44100), _static(12, "QCELP", 8000), _static(13, "CN", 8000),
        _static(14, "MPA", 90000), _static(15, "G728", 8000), _static(16, "DVI4", 11025),
        _static(17, "DVI4", 22050), _static(18, "G729", 8000), _static(25, "CelB", 90000),
        _static(26, "JPEG", 90000), _static(28, "nv", 90000), _static(31, "H261", 90000),
        _static(32, "MPV", 90000), _static(33, "MP2T", 90000), _static(34, "H263", 90000),
    )
}
