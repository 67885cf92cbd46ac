"""Network namespaces for ICE between two sites (built on :mod:`tests.support.netns`).

:func:`build_two_sites` — two private sites, each behind its own Linux NAT, on one 'public'
segment with a STUN/TURN server::

    left 10.1.0.2 ── left-nat 10.1.0.1 | 203.0.113.1 ──┐
                                                        ├─ br0 (public) 203.0.113.10 (server)
    right 10.2.0.2 ── right-nat 10.2.0.1 | 203.0.113.2 ─┘

The NATs are nftables ``masquerade`` (``cone``: endpoint-independent mapping, port-restricted
filtering) or ``masquerade random,fully-random`` (``symmetric``: a new port per destination),
with a home router's input firewall (:func:`router_firewall`).

:func:`build_delayed_pair` — two hosts on two subnets joined by a router that delays every
packet, for a known round-trip time::

    a 10.10.1.2 ── router 10.10.1.1 | 10.10.2.1 ── b 10.10.2.2

The delay is ``tc qdisc netem`` where the kernel has it; kernels built without
CONFIG_NET_SCH_NETEM get a userspace delay line instead (:mod:`.delayline`: policy routing in the
router sends each packet through a TUN device pair, with the delay between the two).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.netns import Lab, Namespace, NatKind, nat_ruleset

ROOT = Path(__file__).resolve().parents[3]
PUBLIC_NET = "203.0.113"
SERVER_IP = f"{PUBLIC_NET}.10"


@dataclass
class Site:
    """One side: the host the agent runs on, and its NAT box."""

    host: Namespace
    nat: Namespace
    address: str
    nat_outside: str


@dataclass
class TwoSites:
    lab: Lab
    left: Site
    right: Site
    public: Namespace
    server_ip: str = SERVER_IP


def silent_default_route(ns: Namespace) -> None:
    """Traffic to unknown addresses vanishes instead of failing with ENETUNREACH (coturn drops a
    whole allocation on that error, e.g. when ICE makes it relay a check to a private address)."""
    ns.run("ip", "link", "add", "sink0", "type", "veth", "peer", "name", "sink1")
    ns.run("ip", "link", "set", "sink0", "up")
    ns.run("ip", "link", "set", "sink1", "up")
    ns.run("ip", "neigh", "add", "192.0.2.254", "lladdr", "02:00:00:00:00:fe", "dev", "sink0",
           "nud", "permanent")  # fmt: skip
    ns.run("ip", "route", "add", "default", "via", "192.0.2.254", "dev", "sink0", "onlink")


_silent_default_route = silent_default_route  # the name other tests already use


def router_firewall(outside_interface: str) -> str:
    """nftables: drop packets from outside that start a new flow to the NAT box itself.

    Home routers do this (WAN input policy drop), and it matters for hole punching: a dropped
    packet leaves no conntrack entry (entries are confirmed only after the input hooks), while a
    packet the box *accepts* (and answers with ICMP port unreachable) leaves an unreplied entry
    whose tuple is exactly the reply tuple the next outbound mapping to that peer wants, so
    masquerade moves that mapping to another port. When a peer's first check reaches a NAT before
    its own agent's first check left it, direct ICE would then fail for as long as checks keep
    the stale entry alive.
    """
    return f"""
table ip icerelay_router_firewall {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{outside_interface}" ct state new drop
    }}
}}
"""


def build_two_sites(lab: Lab, left: NatKind, right: NatKind) -> TwoSites:
    """Two NATed sites and a public segment (see the module documentation)."""
    public = lab.namespace("pub")
    public.run("ip", "link", "add", "br0", "type", "bridge")
    public.run("ip", "address", "add", f"{SERVER_IP}/24", "dev", "br0")
    public.run("ip", "link", "set", "br0", "up")
    silent_default_route(public)
    sites = []
    for index, (name, kind) in enumerate((("left", left), ("right", right)), 1):
        host, nat = lab.namespace(name), lab.namespace(f"{name}nat")
        private = f"10.{index}.0"
        outside_ip = f"{PUBLIC_NET}.{index}"
        lab.link(host, nat, [f"{private}.2/24"], [f"{private}.1/24"])
        outside, public_end = lab.link(nat, public, [f"{outside_ip}/24"], [])
        public.run("ip", "link", "set", public_end, "master", "br0")
        host.run("ip", "route", "add", "default", "via", f"{private}.1")
        nat.sysctl("net.ipv4.ip_forward", "1")
        nat.nft(nat_ruleset(outside, kind))
        nat.nft(router_firewall(outside))
        sites.append(Site(host, nat, f"{private}.2", outside_ip))
    return TwoSites(lab, sites[0], sites[1], public)


@dataclass
class DelayedPair:
    lab: Lab
    a: Namespace
    b: Namespace
    router: Namespace
    a_address: str
    b_address: str
    method: str
    """``netem`` or ``tun-delay-line``: how the delay was made."""


def netem_available(ns: Namespace) -> bool:
    """Whether this kernel has the netem qdisc (tried on the namespace's loopback)."""
    result = ns.run("tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", check=False)
    if result.returncode != 0:
        return False
    ns.run("tc", "qdisc", "del", "dev", "lo", "root", check=False)
    return True


def build_delayed_pair(lab: Lab, rtt_ms: float) -> DelayedPair:
    """Hosts a and b with ``rtt_ms`` of round-trip delay between them (half each way)."""
    a, router, b = lab.namespace("a"), lab.namespace("router"), lab.namespace("b")
    router_a, a_end = lab.link(router, a, ["10.10.1.1/24"], ["10.10.1.2/24"])
    router_b, b_end = lab.link(router, b, ["10.10.2.1/24"], ["10.10.2.2/24"])
    a.run("ip", "route", "add", "default", "via", "10.10.1.1")
    b.run("ip", "route", "add", "default", "via", "10.10.2.1")
    router.sysctl("net.ipv4.ip_forward", "1")
    one_way = rtt_ms / 2
    if netem_available(router):
        for device in (router_a, router_b):
            router.run("tc", "qdisc", "add", "dev", device, "root", "netem", "delay",
                       f"{one_way}ms", "limit", "10000")  # fmt: skip
        method = "netem"
    else:
        process = router.popen(
            sys.executable, "-m", "tests.interop.ice_agents.delayline",
            "--in", "dly_in", "--out", "dly_out", "--delay", str(one_way),
            cwd=str(ROOT), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"delay line did not start: {process.communicate(timeout=5)}")
        for device in ("dly_in", "dly_out"):
            router.run("ip", "link", "set", device, "up")
        # Packets the delay line writes back arrive on dly_out with a source that routes via
        # a veth: strict reverse-path filtering would drop them.
        for conf in ("all", "default", "dly_out", "dly_in"):
            router.sysctl(f"net.ipv4.conf.{conf}.rp_filter", "0")
        # Everything arriving from either host goes into the delay line; what comes out of it
        # (incoming interface dly_out) follows the main table to the right veth.
        for device in (router_a, router_b):
            router.run("ip", "rule", "add", "iif", device, "lookup", "100")
        router.run("ip", "route", "add", "default", "dev", "dly_in", "table", "100")
        method = "tun-delay-line"
    del a_end, b_end
    return DelayedPair(lab, a, b, router, "10.10.1.2", "10.10.2.2", method)
