"""ICE candidates: types, priorities, foundations, redundancy (RFC 8445 section 5.1).

A *candidate* is a transport address (IP and port) at which an agent may receive media. Its
*type* says how it was learned:

- **host**: bound on a local interface;
- **server-reflexive** (``srflx``): the address a NAT gave the host address, learned from a STUN
  server's XOR-MAPPED-ADDRESS;
- **peer-reflexive** (``prflx``): the same kind of address, but learned from a connectivity check
  with the peer (section 7.2.5.3.1 and 7.3.1.3);
- **relayed** (``relay``): an address allocated on a TURN server.

Every candidate has a *base*: the local address from which packets for it are really sent (the
host candidate for srflx and prflx ones; the candidate itself for host and relayed ones).

The *priority* (section 5.1.2.1) orders candidates::

    priority = 2^24 * type preference + 2^8 * local preference + (256 - component ID)

with the recommended type preferences host 126, peer-reflexive 110, server-reflexive 100,
relayed 0. The *foundation* (section 5.1.1.3) groups candidates that are likely to succeed or fail
together: same type, same base IP, same STUN/TURN server, same transport. Checks are unfrozen per
foundation, so one success quickly unlocks the similar pairs in other components.
"""

from __future__ import annotations

import enum
import ipaddress
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from icerelay.errors import IceError, SdpError
from icerelay.sdp.candidate import Candidate as SdpCandidate

TransportAddress = tuple[str, int]
"""An (IP address, port) pair, as asyncio spells it."""

MAX_LOCAL_PREFERENCE = 65535


class CandidateType(enum.Enum):
    """The candidate types of RFC 8445 section 5.1.1, valued by their SDP ``typ`` token."""

    HOST = "host"
    SERVER_REFLEXIVE = "srflx"
    PEER_REFLEXIVE = "prflx"
    RELAYED = "relay"

    @property
    def preference(self) -> int:
        """The recommended type preference (RFC 8445 section 5.1.2.2)."""
        return TYPE_PREFERENCE[self]


TYPE_PREFERENCE: dict[CandidateType, int] = {
    CandidateType.HOST: 126,
    CandidateType.PEER_REFLEXIVE: 110,
    CandidateType.SERVER_REFLEXIVE: 100,
    CandidateType.RELAYED: 0,
}


def candidate_priority(
    candidate_type: CandidateType,
    component: int,
    local_preference: int = MAX_LOCAL_PREFERENCE,
    type_preference: int | None = None,
) -> int:
    """The RFC 8445 section 5.1.2.1 priority.

    ``local_preference`` (0..65535) ranks the agent's own interfaces and servers;
    ``type_preference`` overrides the recommended value for the type (0..126), as a media relay
    does when it wants its relayed candidate ranked differently.
    """
    if not 1 <= component <= 256:
        raise IceError(f"component ID {component} is out of range 1..256")
    if not 0 <= local_preference <= MAX_LOCAL_PREFERENCE:
        raise IceError(f"local preference {local_preference} is out of range 0..65535")
    preference = candidate_type.preference if type_preference is None else type_preference
    if not 0 <= preference <= 126:
        raise IceError(f"type preference {preference} is out of range 0..126")
    return (preference << 24) + (local_preference << 8) + (256 - component)


def compute_foundation(
    candidate_type: CandidateType,
    base_ip: str,
    server: str | None = None,
    transport: str = "udp",
) -> str:
    """A foundation equal for candidates with the same type, base IP, server and transport.

    RFC 8445 section 5.1.1.3 only asks that equal inputs give equal foundations and different
    inputs different ones; a CRC of the inputs is short, stable across runs (useful in logs and
    simulations) and made of ice-chars.
    """
    key = "|".join((candidate_type.value, base_ip, server or "", transport.lower()))
    return f"{zlib.crc32(key.encode()):08x}"


def address_family(ip: str) -> int:
    """4 or 6."""
    try:
        return ipaddress.ip_address(ip).version
    except ValueError as exc:
        raise IceError(f"not an IP address: {ip!r}") from exc


@dataclass(frozen=True)
class Candidate:
    """One ICE candidate, local or remote.

    ``base`` is set for local candidates only (see the module documentation). ``related_address``
    and ``related_port`` are the SDP ``raddr``/``rport``: the base for srflx and prflx candidates,
    the mapped address for relayed ones; they are informational for the peer.
    """

    foundation: str
    component: int
    transport: str
    priority: int
    host: str
    port: int
    type: CandidateType
    related_address: str | None = None
    related_port: int | None = None
    base: TransportAddress | None = None

    @property
    def address(self) -> TransportAddress:
        """The candidate's transport address."""
        return (self.host, self.port)

    @property
    def family(self) -> int:
        return address_family(self.host)

    def to_sdp(self) -> SdpCandidate:
        """The candidate as :mod:`icerelay.sdp` models the ``a=candidate`` attribute."""
        return SdpCandidate(
            foundation=self.foundation,
            component=self.component,
            transport=self.transport.upper(),
            priority=self.priority,
            address=self.host,
            port=self.port,
            type=self.type.value,
            related_address=self.related_address,
            related_port=self.related_port,
        )

    def to_attribute(self) -> str:
        """The ``candidate:...`` attribute text, as trickle ICE (RFC 8840) carries it."""
        return self.to_sdp().to_attribute()

    @classmethod
    def from_sdp(cls, candidate: SdpCandidate | str) -> Candidate:
        """A remote candidate from SDP (a parsed attribute, or its text in any usual form).

        Raises IceError for candidates this agent cannot use: non-UDP transports, unknown types,
        and FQDN (e.g. mDNS ``.local``) addresses.
        """
        if isinstance(candidate, str):
            try:
                candidate = SdpCandidate.parse(candidate)
            except SdpError as exc:
                raise IceError(f"bad candidate: {exc}") from exc
        if not candidate.is_udp:
            raise IceError(f"only UDP candidates are supported, not {candidate.transport}")
        try:
            candidate_type = CandidateType(candidate.type)
        except ValueError as exc:
            raise IceError(f"unknown candidate type {candidate.type!r}") from exc
        if candidate.family is None:
            raise IceError(f"candidate address {candidate.address!r} is not an IP address")
        return cls(
            foundation=candidate.foundation,
            component=candidate.component,
            transport="udp",
            priority=candidate.priority,
            host=str(ipaddress.ip_address(candidate.address)),
            port=candidate.port,
            type=candidate_type,
            related_address=candidate.related_address,
            related_port=candidate.related_port,
        )

    def __str__(self) -> str:
        return f"{self.type.value} {self.host}:{self.port}/{self.component}"


def make_local_candidate(
    candidate_type: CandidateType,
    address: TransportAddress,
    base: TransportAddress,
    component: int,
    *,
    local_preference: int = MAX_LOCAL_PREFERENCE,
    server: str | None = None,
    priority: int | None = None,
    related: TransportAddress | None = None,
) -> Candidate:
    """A local candidate with its RFC 8445 priority and foundation computed.

    ``server`` is the STUN or TURN server's IP for srflx and relayed candidates (part of the
    foundation). ``priority`` overrides the computed value (peer-reflexive candidates take the
    PRIORITY the agent sent in its check, section 7.2.5.3.1). ``related`` is the SDP raddr/rport:
    by default the base for reflexive candidates; for a relayed candidate (whose base is the
    relayed address itself) pass the mapped address the TURN server reported.
    """
    if related is None and candidate_type in (
        CandidateType.SERVER_REFLEXIVE,
        CandidateType.PEER_REFLEXIVE,
    ):
        related = base
    # The foundation keys on the local interface the candidate comes from; a relayed candidate's
    # base is the relay itself, so its related address stands in for the interface.
    foundation_ip = base[0]
    if candidate_type is CandidateType.RELAYED and related is not None:
        foundation_ip = related[0]
    return Candidate(
        foundation=compute_foundation(candidate_type, foundation_ip, server),
        component=component,
        transport="udp",
        priority=(
            priority
            if priority is not None
            else candidate_priority(candidate_type, component, local_preference)
        ),
        host=address[0],
        port=address[1],
        type=candidate_type,
        related_address=related[0] if related else None,
        related_port=related[1] if related else None,
        base=base,
    )


def is_redundant(candidate: Candidate, others: Iterable[Candidate]) -> bool:
    """RFC 8445 section 5.1.3: same transport address and same base as one of ``others`` that has
    at least the same priority.

    A server-reflexive candidate equal to its host candidate (no NAT) is the usual case; two STUN
    servers reporting the same mapping is the other.
    """
    return any(
        other.address == candidate.address
        and other.base == candidate.base
        and other.component == candidate.component
        and other.priority >= candidate.priority
        for other in others
        if other is not candidate
    )


def prune_redundant(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Remove redundant candidates, keeping the highest-priority one of each group, in order."""
    ordered = list(candidates)
    kept: list[Candidate] = []
    for candidate in sorted(ordered, key=lambda c: -c.priority):
        if not is_redundant(candidate, kept):
            kept.append(candidate)
    return [candidate for candidate in ordered if candidate in kept]
