"""Real phones through Kamailio and the relay: the relay steps aside when ICE goes direct.

Network namespaces built by the test (names carry "stepaside", so parallel runs never clash)::

    caller ─[NAT]─ 198.51.100.0/24 ─┐
                                     pub: Kamailio + icerelay serve (relay, STUN) on 100.64.0.100
    callee ─[NAT]─ 203.0.113.0/24 ──┘     pub routes between the two networks

- ``flat``: no NATs; the phones' host candidates reach each other.
- ``cone``: the caller behind a port-restricted cone NAT (nftables ``masquerade``), the callee
  public: the caller's checks to the callee open its NAT, the direct pair works. (With both
  phones behind such NATs baresip's one-pair-at-a-time checks found the srflx pair only now and
  then: its retransmissions rarely overlap the other side's, which the filtering needs.)
- ``cone2``: both phones behind port-restricted cone NATs. Whether baresip finds the direct
  pair depends on timing; either outcome must be consistent: stepped aside and media direct, or
  the relay kept and carrying everything (stepping aside while baresip was still checking its
  second component once broke such a call; see ``ice_checking_wait``).
- ``symmetric``: both behind symmetric NATs (``masquerade random,fully-random``): no direct pair
  works, only the relay's candidate; media must cross the relay both ways all call long. The
  callee's NAT forwards SIP (only) to it, as a home router would; no STUN server (a symmetric
  NAT's server-reflexive candidates work with nobody), which also keeps baresip's serial ICE
  short (2.2 s per failing pair and component).

Phones: baresip 1.0 (Debian) and ``icerelay phone``, each as caller and as callee. With a direct
path the relay must free the stream's ports within a few seconds of ICE completing (whether or
not a re-INVITE comes: baresip sends none when its default candidate did not change), and the
record says ``ice-direct-path``. The relay logs how long its pair had been unused when it freed
the ports (``relay_idle``): an upper bound of the time from ICE completion to ports freed, printed
by the test (run with ``-s`` to see it) and collected in the report of issue 11.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import baresip as baresip_support
from tests.support import kamailio as kamailio_support
from tests.support import netns

pytestmark = [pytest.mark.interop, pytest.mark.netns]

SERVICE = "100.64.0.100"
NG_PORT, SIP_PORT, STUN_PORT, PORT_MIN = 2223, 5060, 3478, 40000
SETTLE = float(os.environ.get("STEPASIDE_SETTLE", "3.0"))
#: Seconds of call; long enough for ICE, the settle time and some media after it.
CALL = int(os.environ.get("STEPASIDE_CALL", "12"))
#: Seconds baresip's serial ICE may take before media starts: 2.2 s per failing pair, and with
#: both phones behind cone NATs it tries host, srflx then relay for both components.
ICE_TIME = {"cone2": 11}
#: Calls long enough for media after that.
CALL_FOR = {"cone2": 17}


SIP_FORWARD = """
table ip stepaside_sip {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{outside}" udp dport {port} dnat to {phone}:{port}
    }}
}}
"""


@dataclass
class Side:
    ns: netns.Namespace
    address: str  # the phone's own address
    public: str  # where the other side sees it (the NAT's outside address, or its own)


def build(lab: netns.Lab, network: str) -> tuple[netns.Namespace, Side, Side]:
    """The picture of the module docstring for ``network`` (flat, cone or symmetric)."""
    pub = lab.namespace("pub")
    pub.run("ip", "address", "add", f"{SERVICE}/32", "dev", "lo")
    pub.sysctl("net.ipv4.ip_forward", "1")
    sides = []
    for role, net, private in (("a", "198.51.100", "10.0.1"), ("b", "203.0.113", "10.0.2")):
        phone = lab.namespace(role)
        if network == "flat" or (network == "cone" and role == "b"):
            lab.link(phone, pub, [f"{net}.20/24"], [f"{net}.10/24"])
            phone.run("ip", "route", "add", "default", "via", f"{net}.10")
            sides.append(Side(phone, f"{net}.20", f"{net}.20"))
            continue
        nat = lab.namespace(f"n{role}")
        lab.link(phone, nat, [f"{private}.2/24"], [f"{private}.1/24"])
        outside, _ = lab.link(nat, pub, [f"{net}.1/24"], [f"{net}.10/24"])
        phone.run("ip", "route", "add", "default", "via", f"{private}.1")
        nat.run("ip", "route", "add", "default", "via", f"{net}.10")
        nat.sysctl("net.ipv4.ip_forward", "1")
        nat.nft(netns.nat_ruleset(outside, "symmetric" if network == "symmetric" else "cone"))
        if role == "b":
            # The callee takes calls: SIP (only) is forwarded to it, as a home router would.
            nat.nft(SIP_FORWARD.format(outside=outside, phone=f"{private}.2", port=SIP_PORT))
        sides.append(Side(phone, f"{private}.2", f"{net}.1"))
    return pub, sides[0], sides[1]


def start_relay(pub: netns.Namespace, tmp_path: Path) -> subprocess.Popen[str]:
    log = (tmp_path / "relay.log").open("w")
    relay = pub.popen(
        sys.executable, "-m", "icerelay", "serve",
        "--stun-listen", f"{SERVICE}:{STUN_PORT}", "--stun-transports", "udp",
        "--set", f"relay.ng_listen={SERVICE}:{NG_PORT}",
        "--set", f"relay.address_ipv4={SERVICE}",
        "--set", f"relay.port_min={PORT_MIN}", "--set", f"relay.port_max={PORT_MIN + 99}",
        "--set", "relay.mediaproxy_socket=",
        "--set", f"relay.accounting=sqlite:///{tmp_path / 'sessions.sqlite3'}",
        "--set", "relay.delete_delay=0.2", "--set", f"relay.ice_settle={SETTLE}",
        "--log-format", "json",
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for_text(tmp_path / "relay.log", '"relay.started"', 15)
    return relay


def start_kamailio(pub: netns.Namespace, tmp_path: Path) -> None:
    binary = kamailio_support.binary()
    assert binary is not None
    workdir = tmp_path / "kamailio"
    workdir.mkdir()
    config = kamailio_support.render_config(
        sip_host=SERVICE, sip_port=SIP_PORT, ng_host=SERVICE, ng_port=NG_PORT
    )
    # Phones behind NATs: answer where their requests really come from, and send in-dialog
    # requests to where their INVITE or 200 OK came from (the Contact names a private address).
    config = config.replace(
        'loadmodule "rtpengine.so"', 'loadmodule "rtpengine.so"\nloadmodule "nathelper.so"', 1
    )
    config = config.replace("request_route {\n", "request_route {\n    force_rport();\n", 1)
    config = config.replace(
        '    if (is_method("INVITE")) {\n        record_route();',
        '    if (is_method("INVITE")) {\n        fix_nated_contact();\n        record_route();',
        1,
    )
    reply_route = "onreply_route[MEDIA_REPLY] {\n"
    config = config.replace(reply_route, reply_route + "    fix_nated_contact();\n", 1)
    assert config.count("fix_nated_contact") == 2
    (workdir / "kamailio.cfg").write_text(config)
    pub.popen(
        *kamailio_support.command(binary, workdir / "kamailio.cfg", workdir),
        stdout=(workdir / "kamailio.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for_text(workdir / "kamailio.log", "found, support for it enabled", 15)


def wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, path.read_text(errors="replace")[-3000:]
        time.sleep(0.05)


def icerelay_phone(
    side: Side, *, user: str, target: str | None, seconds: int, stun: str | None
) -> list[str]:
    argv = [sys.executable, "-m", "icerelay", "phone"]
    if target is not None:
        argv += [target, "--duration", str(seconds), "--timeout", "20"]
    else:
        argv += ["--answer", "--wait", "30", "--duration", str(seconds + 10)]
    return [
        *argv, "--listen", f"{side.address}:{SIP_PORT}", "--proxy", f"{SERVICE}:{SIP_PORT}",
        "--user", user, "--ice", "--json", "--debug", *(["--stun", stun] if stun else []),
    ]  # fmt: skip


def start_phone(
    kind: str,
    side: Side,
    tmp_path: Path,
    *,
    role: str,
    target: str | None,
    stun: bool,
    call: int,
) -> subprocess.Popen[str]:
    user = "alice" if role == "caller" else "bob"
    server = f"{SERVICE}:{STUN_PORT}" if stun else None
    log = (tmp_path / f"{role}.log").open("w")
    if kind == "baresip":
        directory = baresip_support.write_config(
            tmp_path / f"{role}-baresip", user=user, address=side.address, port=SIP_PORT,
            proxy=f"{SERVICE}:{SIP_PORT}", stun=server,
            tone=440 if role == "caller" else 880,
        )  # fmt: skip
        argv = baresip_support.command(
            directory, quit_after=call + (0 if role == "caller" else 15), dial=target
        )
    else:
        argv = icerelay_phone(side, user=user, target=target, seconds=call, stun=server)
        if kind == "icerelay-mux":
            # RFC 5761 §5.1.3: the offer keeps RTCP candidates; baresip (rtcp_mux no) answers
            # without mux, and both components are used.
            argv.append("--rtcp-mux")
    return side.ns.popen(*argv, stdout=log, stderr=subprocess.STDOUT)


COMBINATIONS = [
    (caller, callee, network)
    for network in ("flat", "cone", "symmetric")
    for caller, callee in (
        ("baresip", "baresip"),
        ("baresip", "icerelay"),
        ("icerelay", "baresip"),
    )
] + [("baresip", "baresip", "cone2")]
# On the flat network the icerelay phone offers --rtcp-mux to baresip, which does not multiplex:
# the RTCP fallback of the offer (RFC 5761 §5.1.3) is what the call uses.
COMBINATIONS[COMBINATIONS.index(("icerelay", "baresip", "flat"))] = (
    "icerelay-mux",
    "baresip",
    "flat",
)


@pytest.mark.skipif(baresip_support.BINARY is None, reason="baresip is not installed (Debian)")
@pytest.mark.skipif(
    kamailio_support.unavailable_reason() is not None,
    reason=str(kamailio_support.unavailable_reason()),
)
@pytest.mark.parametrize(("caller_kind", "callee_kind", "network"), COMBINATIONS)
def test_real_phones_through_kamailio_and_the_relay(
    tmp_path: Path, caller_kind: str, callee_kind: str, network: str
) -> None:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with netns.Lab(prefix="stepaside") as lab:
        pub, a, b = build(lab, network)
        relay = start_relay(pub, tmp_path)
        start_kamailio(pub, tmp_path)
        stun = network != "symmetric"
        call = CALL_FOR.get(network, CALL)
        callee = start_phone(
            callee_kind, b, tmp_path, role="callee", target=None, stun=stun, call=call
        )
        time.sleep(0.5)
        caller = start_phone(
            caller_kind,
            a,
            tmp_path,
            role="caller",
            target=f"sip:bob@{b.public}:{SIP_PORT}",
            stun=stun,
            call=call,
        )
        try:
            caller.wait(call + 20)
            # An icerelay callee ends on the BYE; a baresip one only at its -t: its numbers
            # are written when the call ends, so it can go a moment after the BYE.
            deadline = time.monotonic() + 5
            while callee.poll() is None and time.monotonic() < deadline:
                if callee_kind == "baresip" and "packets:" in read(tmp_path / "callee.log"):
                    break
                time.sleep(0.1)
        except subprocess.TimeoutExpired:
            pass
        finally:
            time.sleep(0.5)  # the BYE's delete has a 0.2 s grace period
            os.killpg(relay.pid, signal.SIGTERM)
            relay.wait(10)
        logs = "\n".join(
            f"--- {name}\n" + read(tmp_path / name)[-5000:]
            for name in ("caller.log", "callee.log", "relay.log")
        )
        media = {
            "caller": phone_media(caller_kind, read(tmp_path / "caller.log")),
            "callee": phone_media(callee_kind, read(tmp_path / "callee.log")),
        }
        check(tmp_path, network, media, logs, f"{caller_kind}->{callee_kind} {network}")


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def phone_media(kind: str, log: str) -> tuple[int, int]:
    """(packets sent, packets received) as the phone itself counted them."""
    if kind == "baresip":
        # rtp_stats: "audio  Transmit: Receive:" then "packets:  TX  RX" when the call ends.
        lines = [line.split() for line in log.splitlines() if line.startswith("packets:")]
        return (int(lines[-1][1]), int(lines[-1][2])) if lines else (0, 0)
    results = [line for line in log.splitlines() if line.startswith("{")]
    if not results:
        return (0, 0)
    statistics = json.loads(results[-1]).get("statistics") or {}
    return int(statistics.get("packets_sent", 0)), int(statistics.get("packets_received", 0))


def check(
    tmp_path: Path, network: str, media: dict[str, tuple[int, int]], logs: str, name: str
) -> None:
    with sqlite3.connect(tmp_path / "sessions.sqlite3") as connection:
        rows = connection.execute(
            "SELECT packets_from_caller, packets_from_callee, end_reason FROM streams"
        ).fetchall()
    assert len(rows) == 1, logs
    ((from_caller, from_callee, end_reason),) = rows
    # Both phones heard each other for the call but its first seconds (baresip's serial ICE
    # takes up to 5 s here, and it sends no media before ICE completes), whichever path media
    # took.
    least = 50 * (CALL_FOR.get(network, CALL) - ICE_TIME.get(network, 7))
    for role, (sent, received) in media.items():
        assert sent > least and received > least, (role, media, rows, logs)
    ended = [
        json.loads(line)
        for line in read(tmp_path / "relay.log").splitlines()
        if '"relay.stream_ended"' in line
    ]
    if network == "symmetric" or (network == "cone2" and end_reason is None):
        # No direct pair works (or ICE did not find it): the relay carried the whole call.
        assert end_reason is None and not ended, logs
        assert from_caller >= 0.9 * media["caller"][0], (rows, media, logs)
        assert from_callee >= 0.9 * media["callee"][0], (rows, media, logs)
        note(f"{name}: relayed both ways ({from_caller}/{from_callee} packets), phones {media}")
        return
    assert end_reason == "ice-direct-path", (rows, logs)
    # What crossed the relay before ICE completed is a small part of the call.
    assert from_caller + from_callee < (media["caller"][0] + media["callee"][0]) / 4, (rows, media)
    (event,) = ended
    idle = float(event["relay_idle"])
    # The relay freed the ports at once on a re-INVITE naming the direct pair (icerelay phone
    # as caller), else within the settle time (3 s) plus a poll of it after the last use of
    # its pair: ICE completed (on another pair) no later than that last use.
    assert 0.0 <= idle <= SETTLE + 1.0, (event, logs)
    note(f"{name}: ports freed {idle:.3f} s after the relay pair's last use, phones {media}")


def note(line: str) -> None:
    """Print a measurement (``-s``), and append it to $STEPASIDE_REPORT when set (xdist hides
    the workers' output)."""
    print("\n" + line)
    report = os.environ.get("STEPASIDE_REPORT")
    if report:
        with open(report, "a") as file:
            file.write(line + "\n")
