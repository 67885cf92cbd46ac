"""Hypothesis strategies for SDP-ish documents and candidates (shared by the property tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from icerelay.sdp import Candidate, Connection, Origin, Rtcp

ICE_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
TOKEN_ALPHABET = ICE_ALPHABET.replace("/", "") + "!#$%&'*-.^_`{|}~"

ice_chars = st.text(ICE_ALPHABET, min_size=1, max_size=32)
tokens = st.text(TOKEN_ALPHABET, min_size=1, max_size=12)
ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda address: address.compressed)
# Host names start with a letter: a name of digits and dots is read as a (bad) IPv4 address.
fqdn = st.builds(
    lambda first, rest, labels: ".".join([first + rest, *labels]),
    st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", max_size=8),
    st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=6)
             .filter(lambda label: label[0] != "-" and label[-1] != "-"), max_size=2),
)
decimal = st.integers(0, 10**20).map(str)
addresses = st.one_of(ipv4, ipv6, fqdn)
# Values of lines we do not interpret: anything but line breaks (and NUL, which we refuse to write).
free_text = st.text(st.characters(exclude_characters="\r\n\0", exclude_categories=["Cs"]),
                    max_size=30)
blanks = st.sampled_from(["", "", "", " ", "\t", "  \t"])
endings = st.sampled_from(["\r\n", "\n"])

RESERVED_EXTENSIONS = {"raddr", "rport", "tcptype"}


# Strategies are built once here: building them inside a composite on every draw costs more
# than drawing from them.
_extension_names = tokens.filter(lambda name: name not in RESERVED_EXTENSIONS)
_extension_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                            min_size=1, max_size=10)
candidates = st.builds(
    Candidate,
    foundation=ice_chars,
    component=st.integers(1, 256),
    transport=st.sampled_from(["UDP", "udp", "TCP", "tcp", "Udp", "dccp"]),
    priority=st.integers(0, 2**32 - 1),
    address=addresses,
    port=ports,
    type=st.sampled_from(["host", "srflx", "prflx", "relay", "other"]),
    related_address=st.none() | addresses,
    related_port=st.none() | ports,
    tcptype=st.none() | st.sampled_from(["active", "passive", "so"]),
    extensions=st.lists(st.tuples(_extension_names, _extension_values), max_size=4).map(tuple),
)
"""Any candidate our grammar accepts (written in the canonical field order)."""


@dataclass
class Section:
    """What a generated section contains, to check typed access against."""

    lines: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    connection: Connection | None = None
    port: int | None = None
    rtcp: Rtcp | None = None


@dataclass
class Document:
    """A generated SDP text and what it is made of."""

    text: str
    origin: Origin | None
    session: Section
    media: list[Section]


generic_names = tokens.filter(lambda name: name not in {
    "candidate", "remote-candidates", "ice-ufrag", "ice-pwd", "ice-options", "ice-pacing",
    "rtcp", "sendrecv", "sendonly", "recvonly", "inactive"})


_connections = st.none() | st.builds(Connection.for_address, addresses)
_letters = st.sampled_from("bikpeuztrxyzBQ")
_directions = st.sampled_from(["sendrecv", "sendonly", "inactive"])
_origins = st.none() | st.builds(Origin, tokens, decimal, decimal, st.just("IN"),
                                 st.sampled_from(["IP4", "IP6"]), addresses)
_rtcps = st.builds(Rtcp, ports) | st.builds(
    lambda port, address: Rtcp(port, "IN", "IP4", address), ports, ipv4)
_formats = st.lists(st.integers(0, 127).map(str), max_size=4)
_candidate_lists = st.lists(candidates, max_size=4)


@st.composite
def _common_lines(draw: st.DrawFn, section: Section) -> None:
    connection = draw(_connections)
    if connection is not None:
        section.connection = connection
        section.lines.append("c=" + connection.to_sdp())
    for _ in range(draw(st.integers(0, 4))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            section.lines.append(f"a={draw(generic_names)}")
        elif choice == 1:
            section.lines.append(f"a={draw(generic_names)}:{draw(free_text)}")
        elif choice == 2:
            letter = draw(_letters)
            section.lines.append(f"{letter}={draw(free_text)}")
        else:
            section.lines.append("")
    if draw(st.booleans()):
        section.lines.append(f"a={draw(_directions)}")


@st.composite
def documents(draw: st.DrawFn) -> Document:
    """An SDP-ish document with random endings, trailing blanks, unknown lines and blank lines."""
    session = Section(lines=["v=0"])
    origin = draw(_origins)
    if origin is not None:
        session.lines.append("o=" + origin.to_sdp())
    session.lines.append("s=" + draw(free_text))
    draw(_common_lines(session))
    if draw(st.booleans()):
        session.lines.append(f"a=ice-ufrag:{draw(ice_chars)}")
    media_sections = []
    for _ in range(draw(st.integers(0, 3))):
        media = Section()
        media.port = draw(ports)
        formats = " ".join(draw(_formats))
        media.lines.append(f"m=audio {media.port} RTP/AVP {formats}".rstrip())
        draw(_common_lines(media))
        if draw(st.booleans()):
            media.rtcp = draw(_rtcps)
            media.lines.append("a=rtcp:" + media.rtcp.to_sdp())
        media.candidates = draw(_candidate_lists)
        media.lines += ["a=candidate:" + c.to_sdp() for c in media.candidates]
        media_sections.append(media)

    all_lines = session.lines + [line for media in media_sections for line in media.lines]
    parts = []
    for line in all_lines:
        # A blank line may carry only blanks; any line may carry trailing blanks.
        parts.append(line + draw(blanks) + draw(endings))
    if draw(st.booleans()):
        # No final line ending (only safe to drop when the last line is not empty).
        last = parts[-1].rstrip("\r\n")
        if last.strip(" \t"):
            parts[-1] = last
    return Document("".join(parts), origin, session, media_sections)
