"""The nftables ruleset of the kernel data plane, and the commands that change its maps.

Pure text: what :mod:`icerelay.dataplane.nftables` hands to libnftables (the table, and element
additions in batches), kept apart so that it can be read (and tested) without a kernel. Reading
one element's counter and deleting elements go through :mod:`.nfnetlink` instead: libnftables
loads every element of the table into its cache before such a command (measured: 1.9 ms per read
and 13 ms per delete with 8,000 streams), netlink does it in microseconds.

Design (verified in network namespaces: loopback and veth parties): stateless header rewriting,
no conntrack, in one table of our own, ``ip icerelay``:

- ``prerouting`` (priority raw): a UDP packet to a relay port whose payload looks like RTP (RFC
  3550 version 2, and a second byte outside 192..223 so that RTCP, RFC 5761 §4, stays with the
  latching policy) is looked up by its full 4-tuple (latched source . relay port) in the map
  ``inbound``, whose elements carry a counter each. A hit sets the packet's mark to the route's
  id, takes it out of connection tracking, and rewrites the destination to the other party's
  latched address. A miss leaves the packet alone: it reaches the relay's socket, where the
  latching policy sees it (STUN, RTCP, strangers, parties not yet latched). Strict source holds
  by construction: only the latched source tuple matches.
- ``postrouting`` (the packet leaves towards a remote party) and ``input`` (the party is on this
  host): a packet with one of our marks gets the relay's own address and port as its source,
  from the id-keyed maps. The source cannot be rewritten in prerouting: a packet arriving with
  one of the host's own addresses as its source is dropped as a martian by the routing code.

Each route (one direction of one stream) takes one id; ids are marks in
``MARK_BASE | id`` (``MARK_MASK`` selects them), so the table leaves other users' marks alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MARK_BASE",
    "MARK_MASK",
    "MAX_ROUTES",
    "OWNER_COMMENT",
    "TABLE",
    "Route",
    "add_routes",
    "delete_table",
    "list_inbound",
    "ruleset",
    "table_owner",
]

#: The table's name: one table of our own, removed whole at start (a stale one) and at stop.
TABLE = "icerelay"
#: The table's comment before the owner's process id.
OWNER_COMMENT = "icerelay pid"
MARK_BASE = 0x1CE00000
MARK_MASK = 0xFFF00000
#: Route ids fit below the mask.
MAX_ROUTES = (~MARK_MASK & 0xFFFFFFFF) + 1

#: (host, port), IPv4 only (the table is ``ip``; IPv6 streams stay in userspace).
Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Route:
    """One direction of one stream in the kernel: packets from :attr:`source` to the relay's
    :attr:`local` port leave from the relay's :attr:`via` port towards :attr:`destination`."""

    id: int
    source: Endpoint
    local: Endpoint
    destination: Endpoint
    via: Endpoint

    @property
    def mark(self) -> int:
        """The packet mark that names this route between the hooks."""
        return MARK_BASE | self.id

    def key(self) -> str:
        """The route's element key in ``inbound``, in nft's syntax."""
        return f"{self.source[0]} . {self.source[1]} . {self.local[0]} . {self.local[1]}"


def ruleset(port_min: int, port_max: int, table: str = TABLE, owner: int = 0) -> str:
    """One transaction that removes a stale table of that name (a relay that crashed) and
    creates the table afresh, with empty maps. ``owner`` (a process id) goes into the table's
    comment, so that a second relay does not take over the table of a running one."""
    match = (
        f"udp dport {port_min}-{port_max} @th,64,2 2 @th,72,8 != 192-223 "
        "meta mark set ip saddr . udp sport . ip daddr . udp dport map @inbound "
        "notrack ip daddr set meta mark map @dst_addr udp dport set meta mark map @dst_port"
    )
    source = (
        f"meta mark & {MARK_MASK:#x} == {MARK_BASE:#x} "
        "ip saddr set meta mark map @src_addr udp sport set meta mark map @src_port"
    )
    return f"""add table ip {table}
delete table ip {table}
table ip {table} {{
  comment "{OWNER_COMMENT} {owner}"
  map inbound {{ type ipv4_addr . inet_service . ipv4_addr . inet_service : mark; counter; }}
  map dst_addr {{ type mark : ipv4_addr; }}
  map dst_port {{ type mark : inet_service; }}
  map src_addr {{ type mark : ipv4_addr; }}
  map src_port {{ type mark : inet_service; }}
  chain prerouting {{
    type filter hook prerouting priority raw; policy accept;
    {match}
  }}
  chain postrouting {{
    type filter hook postrouting priority srcnat; policy accept;
    {source}
  }}
  chain input {{
    type filter hook input priority 100; policy accept;
    {source}
  }}
}}
"""


def table_owner(listing: str) -> int | None:
    """The process id in the comment of a listed table (``list table``), or None."""
    match = re.search(rf'comment "{OWNER_COMMENT} (\d+)"', listing)
    return int(match.group(1)) if match else None


def delete_table(table: str = TABLE) -> str:
    """Remove the table if it exists (one transaction; no error when it does not)."""
    return f"add table ip {table}\ndelete table ip {table}\n"


#: The maps keyed by a route's mark, in the order :func:`add_routes` fills them.
MARK_MAPS = ("dst_addr", "dst_port", "src_addr", "src_port")


def add_routes(routes: Iterable[Route], table: str = TABLE) -> str:
    """Commands adding ``routes``; the id-keyed maps first, so that no packet ever matches
    ``inbound`` before its rewrite is known (all of it is one transaction anyway)."""
    routes = list(routes)
    if not routes:
        return ""
    lines = []
    columns: tuple[list[str | int], ...] = (
        [r.destination[0] for r in routes],
        [r.destination[1] for r in routes],
        [r.via[0] for r in routes],
        [r.via[1] for r in routes],
    )
    for name, values in zip(MARK_MAPS, columns, strict=True):
        elements = ", ".join(f"{r.mark:#x} : {v}" for r, v in zip(routes, values, strict=True))
        lines.append(f"add element ip {table} {name} {{ {elements} }}")
    elements = ", ".join(f"{r.key()} : {r.mark:#x}" for r in routes)
    lines.append(f"add element ip {table} inbound {{ {elements} }}")
    return "\n".join(lines) + "\n"


def list_inbound(table: str = TABLE) -> str:
    """A command listing every ``inbound`` element with its counter."""
    return f"list map ip {table} inbound\n"
