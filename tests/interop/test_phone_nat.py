"""Two `icerelay phone` processes behind two real Linux NATs (network namespaces), with ICE.

::

    a 10.0.1.2 ── natA 10.0.1.1 | 203.0.113.1 ── public 203.0.113.10
                                                          198.51.100.10 ── 198.51.100.1 | natB
    b 10.0.2.2 ── natB 10.0.2.1 (SIP 5060 forwarded to b)

    public runs coturn (STUN + TURN) on 203.0.113.10.

The caller behind natA calls the answerer behind natB, whose SIP port is forwarded (its Contact
is its outside address, Asterisk's ``externaddr``); the media path is ICE's business. Behind two
port-restricted cone NATs ICE connects directly through the server-reflexive candidates; behind two
symmetric NATs (or a cone NAT facing a symmetric one) only a TURN relay can carry the media. The
tests check the call, the path, and the audio each side recorded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from icerelay.endpoint.audio import dominant_frequency, read_wav
from tests.support.netns import Lab, Namespace, NatKind

pytestmark = [pytest.mark.interop, pytest.mark.netns]

PUBLIC_A, PUBLIC_B, SERVER = "203.0.113.1", "198.51.100.1", "203.0.113.10"


def nat_rules(outside: str, kind: NatKind, forward_sip_to: str | None) -> str:
    """Masquerade (cone or symmetric), optionally forward SIP, and drop unsolicited packets.

    Why the drop: a packet that reaches the NAT box itself before the inside host has sent
    its own would otherwise leave an (unreplied) conntrack entry for that address pair, so the
    host's first packet to the same peer is mapped to a *different* port: hole punching fails
    where a home router (which silently drops) lets it work. Dropped packets leave no entry.
    """
    flags = " random,fully-random" if kind == "symmetric" else ""
    forward = ""
    if forward_sip_to is not None:
        forward = f"""
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{outside}" udp dport 5060 dnat to {forward_sip_to}:5060
    }}"""
    return f"""
table ip phone_nat {{{forward}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{outside}" ct state new drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{outside}" masquerade{flags}
    }}
}}
"""


def build(lab: Lab, kind: NatKind, kind_b: NatKind | None = None) -> tuple[
        Namespace, Namespace, Namespace]:
    a, nat_a, public = lab.namespace("a"), lab.namespace("nata"), lab.namespace("pub")
    b, nat_b = lab.namespace("b"), lab.namespace("natb")
    lab.link(a, nat_a, ["10.0.1.2/24"], ["10.0.1.1/24"])
    lab.link(b, nat_b, ["10.0.2.2/24"], ["10.0.2.1/24"])
    out_a, _ = lab.link(nat_a, public, [f"{PUBLIC_A}/24"], [f"{SERVER}/24"])
    out_b, _ = lab.link(nat_b, public, [f"{PUBLIC_B}/24"], ["198.51.100.10/24"])
    a.run("ip", "route", "add", "default", "via", "10.0.1.1")
    b.run("ip", "route", "add", "default", "via", "10.0.2.1")
    nat_a.run("ip", "route", "add", "default", "via", SERVER)
    nat_b.run("ip", "route", "add", "default", "via", "198.51.100.10")
    for ns in (nat_a, nat_b, public):
        ns.sysctl("net.ipv4.ip_forward", "1")
    nat_a.nft(nat_rules(out_a, kind, None))
    nat_b.nft(nat_rules(out_b, kind_b or kind, "10.0.2.2"))
    silent_default_route(public)
    return a, b, public


def silent_default_route(ns: Namespace) -> None:
    """Traffic to unknown addresses (the phones' private host candidates) vanishes silently.

    Why: coturn 4.6.1 drops the whole allocation when a relayed send fails with ENETUNREACH
    (PEERS.md), and ICE checks *will* try the peer's private host candidate through the relay.
    A veth pair with a gateway whose MAC nobody owns: frames leave and are never answered.
    """
    ns.run("ip", "link", "add", "void0", "type", "veth", "peer", "name", "void1")
    ns.run("ip", "link", "set", "void0", "up")
    ns.run("ip", "link", "set", "void1", "up")
    ns.run("ip", "neigh", "add", "192.0.2.254", "lladdr", "02:00:00:00:00:fe", "dev", "void0",
           "nud", "permanent")
    ns.run("ip", "route", "add", "default", "via", "192.0.2.254", "dev", "void0", "onlink")


def run_call(lab: Lab, kind: NatKind, coturn_factory: Callable[..., Any], tmp_path: Path,
             *, turn: bool, kind_b: NatKind | None = None
             ) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    a, b, public = build(lab, kind, kind_b)
    server = coturn_factory(listening_ips=(SERVER,), users=[("phone", "secret")],
                            namespace=public)
    ice = ["--ice", "--stun", f"{SERVER}:{server.port}", "--json", "--timeout", "20"]
    if turn:
        ice += ["--turn", f"{SERVER}:{server.port}", "--turn-user", "phone",
                "--turn-password", "secret"]
    phone = [sys.executable, "-m", "icerelay", "phone"]
    answerer = b.popen(*phone, "--listen", "10.0.2.2:5060", "--answer", "--wait", "30",
                       "--external-address", PUBLIC_B, "--tone", "1000", "--duration", "20",
                       "--record", str(tmp_path / "b.wav"), *ice)
    assert answerer.stderr is not None
    assert answerer.stderr.readline().startswith("SIP on udp:10.0.2.2:5060")
    caller = a.run(*phone, f"sip:bob@{PUBLIC_B}:5060", "--listen", "10.0.1.2:5060",
                   "--tone", "440", "--duration", "2", "--record", str(tmp_path / "a.wav"),
                   *ice, check=False, timeout=60)
    out, err = answerer.communicate(timeout=30)
    assert caller.returncode == 0, caller.stdout + caller.stderr
    assert answerer.returncode == 0, out + err
    return (json.loads(caller.stdout.strip().splitlines()[-1]),
            json.loads(out.strip().splitlines()[-1]), caller.stdout, out)


def check_audio(tmp_path: Path) -> None:
    heard_by_a = read_wav(tmp_path / "a.wav")
    heard_by_b = read_wav(tmp_path / "b.wav")
    assert dominant_frequency(heard_by_a[1600:3200]) == pytest.approx(1000, abs=10)
    assert dominant_frequency(heard_by_b[1600:3200]) == pytest.approx(440, abs=10)


def test_cone_nats_connect_directly_via_server_reflexive(
        netns_lab: Lab, coturn_factory: Callable[..., Any], tmp_path: Path) -> None:
    result_a, result_b, _, _ = run_call(netns_lab, "cone", coturn_factory, tmp_path, turn=False)
    assert result_a["media_both_ways"] and result_b["media_both_ways"]
    assert result_a["ice_state"] == "completed"
    pair = result_a["ice_pair"]
    # The far end is the other NAT's mapping (srflx, or prflx if its check came first): direct.
    assert f"{PUBLIC_B}:" in pair and "relay" not in pair, pair
    assert result_b["reinvites"] == 1  # the caller's updated offer arrived and was answered
    check_audio(tmp_path)


def test_symmetric_nats_need_the_relay(
        netns_lab: Lab, coturn_factory: Callable[..., Any], tmp_path: Path) -> None:
    result_a, result_b, _, _ = run_call(netns_lab, "symmetric", coturn_factory, tmp_path,
                                        turn=True)
    assert result_a["media_both_ways"] and result_b["media_both_ways"]
    pair_a, pair_b = result_a["ice_pair"], result_b["ice_pair"]
    assert "relay" in pair_a + pair_b and f"{SERVER}:" in pair_a + pair_b, (pair_a, pair_b)
    check_audio(tmp_path)


def test_cone_against_symmetric_needs_the_relay_too(
        netns_lab: Lab, coturn_factory: Callable[..., Any], tmp_path: Path) -> None:
    # A port-restricted cone cannot be reached from a symmetric NAT's unpredictable mapping.
    result_a, result_b, _, _ = run_call(netns_lab, "cone", coturn_factory, tmp_path, turn=True,
                                        kind_b="symmetric")
    assert result_a["media_both_ways"] and result_b["media_both_ways"]
    assert "relay" in result_a["ice_pair"] + result_b["ice_pair"]
    check_audio(tmp_path)
