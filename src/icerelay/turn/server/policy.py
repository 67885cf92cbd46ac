"""Which peers a TURN relay may talk to.

A TURN server relays for authenticated but untrusted users. Without a peer policy, a user can
reach whatever the server can reach: its loopback services, the operator's private networks, the
cloud metadata service at 169.254.169.254 (the classic "TURN as SSRF proxy" attack). So peers are
denied by default in every special-purpose range of the IANA registries (RFC 6890 and its
updates), and an operator opens exactly what a deployment needs with an allow list.

The same IPv4 address can be written in several IPv6 forms that a dual-stack host or a
translator on the path turns back into IPv4: IPv4-mapped (``::ffff:a.b.c.d``), NAT64
(``64:ff9b::/96``, RFC 6052), 6to4 (``2002:AABB:CCDD::/48``, RFC 3056) and Teredo
(``2001:0::/32``, RFC 4380, whose client address is stored bit-inverted). Every IPv4 address
embedded in a peer address is checked too, and the peer is allowed only when *all* of them are.

Order of decisions for each address checked: the operator's deny list wins; then the allow
list opens; then the default deny list closes; anything else is allowed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from icerelay.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Special-purpose ranges (IANA IPv4/IPv6 Special-Purpose Address Registries) that a relay must not
#: reach unless the operator says so. Each comment says why the range is dangerous or useless.
DEFAULT_DENIED_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the server's own sockets on Linux
    "10.0.0.0/8",  # RFC 1918 private
    "100.64.0.0/10",  # RFC 6598 carrier-grade NAT shared space
    "127.0.0.0/8",  # loopback: the server's own services
    "169.254.0.0/16",  # link-local, includes the cloud metadata service 169.254.169.254
    "172.16.0.0/12",  # RFC 1918 private
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # TEST-NET-1 documentation
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "192.168.0.0/16",  # RFC 1918 private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # TEST-NET-2 documentation
    "203.0.113.0/24",  # TEST-NET-3 documentation
    "224.0.0.0/4",  # multicast: one Send would fan out on the server's networks
    "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
    "::/128",  # unspecified
    "::1/128",  # loopback
    "::/96",  # deprecated IPv4-compatible addresses
    "::ffff:0:0/96",  # IPv4-mapped: an IPv6 relay cannot reach them, and they dodge IPv4 filters
    "64:ff9b:1::/48",  # RFC 8215 local-use NAT64: translates into private IPv4 networks
    "100::/64",  # discard-only
    "2001:2::/48",  # benchmarking (Teredo, 2001::/32, is checked by its embedded addresses)
    "2001:10::/28",  # deprecated ORCHID
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation (RFC 9637)
    "5f00::/16",  # SRv6 segment identifiers
    "fc00::/7",  # unique-local (the IPv6 private networks)
    "fe80::/10",  # link-local
    "fec0::/10",  # deprecated site-local
    "ff00::/8",  # multicast
)

_TEREDO = ipaddress.ip_network("2001::/32")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings (a bare address means a single host); raise ConfigError on garbage."""
    parsed: list[IPNetwork] = []
    for text in networks:
        try:
            parsed.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as error:
            raise ConfigError(f"not an IP network: {text!r} ({error})") from None
    return tuple(parsed)


def embedded_addresses(address: IPAddress) -> list[IPAddress]:
    """*address* and every IPv4 address an IPv6 form of it carries (mapped, NAT64, 6to4, Teredo)."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv4Address):
        return found
    mapped = address.ipv4_mapped
    if mapped is not None:
        found.append(mapped)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in _SIX_TO_FOUR:
        found.append(ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF))
    if address in _TEREDO:
        # RFC 4380 §4: bits 32-63 are the Teredo server, the last 32 bits the client's public
        # address with every bit inverted ("obfuscated"); both are real IPv4 destinations.
        found.append(ipaddress.IPv4Address((int(address) >> 64) & 0xFFFFFFFF))
        found.append(ipaddress.IPv4Address((int(address) & 0xFFFFFFFF) ^ 0xFFFFFFFF))
    return found


class PeerPolicy:
    """Decides whether a relay may exchange data with a peer IP address.

    *allow* opens networks that the defaults deny (tests on loopback need ``127.0.0.0/8``);
    *deny* closes more networks and wins over *allow*. Decisions are cached, since the same
    peers come back for every permission refresh.
    """

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = parse_networks(allow)
        self.deny = parse_networks(deny)
        self.default_deny = parse_networks(DEFAULT_DENIED_NETWORKS)
        self._cached = lru_cache(maxsize=4096)(self._decide)

    def is_allowed(self, host: str) -> bool:
        """Whether the relay may send to and receive from *host* (an IP address text)."""
        return self._cached(host)

    def _decide(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return all(self._allowed_one(candidate) for candidate in embedded_addresses(address))

    def _allowed_one(self, address: IPAddress) -> bool:
        if any(address in network for network in self.deny if network.version == address.version):
            return False
        if any(address in network for network in self.allow if network.version == address.version):
            return True
        return not any(
            address in network
            for network in self.default_deny
            if network.version == address.version
        )
