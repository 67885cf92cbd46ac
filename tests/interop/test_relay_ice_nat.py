"""ICE through NATs with the relay's candidate: the relay carries the call only when it must.

Network namespaces built by the test::

    alice 10.0.1.2 ── symmetric NAT 10.0.1.1 | 198.51.100.1 ──┐
                                                          public: Kamailio + icerelay relay
                                                          on 100.64.0.100 (no forwarding)
    bob 203.0.113.20 ─────────────────────────────────────────┘

Alice's SDP names her private address. The relay adds itself as a ``typ relay`` candidate on each
side (low priority).

- ``symmetric-no-direct-path``: ``public`` does not route between its two links, so Alice and Bob
  cannot reach each other directly, and Alice sits behind an address-and-port-dependent
  (symmetric) NAT. ICE's checks through the relay latch Alice's mapped address, the relay pair is
  the one that succeeds, is nominated, and carries the call's media both ways.
- ``cone-direct-path``: ``public`` routes and Alice's NAT is a port-restricted cone: the direct
  pair works and wins; the caller's re-INVITE names it, and the relay frees the stream's ports
  while the call goes on, recording "ICE selected a direct path".
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.interop.test_relay_kamailio import KAMAILIO, KAMAILIO_CFG
from tests.support import kamailio as kamailio_support
from tests.support import netns

pytestmark = [pytest.mark.interop, pytest.mark.netns]

SERVICE = "100.64.0.100"
BOB = "203.0.113.20"
ALICE = "10.0.1.2"
NG_PORT, SIP_PORT, PORT_MIN = 2223, 5060, 40000

RELAY_MAIN = """
import asyncio, signal, sys
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService

async def main() -> None:
    config = RelayServiceConfig(
        ng_listen=({service!r}, {ng_port}), ng_tcp=False, address_ipv4={service!r},
        port_min={port_min}, port_max={port_min} + 99, delete_delay=0.2,
        mediaproxy_socket="", accounting="sqlite://{database}",
    )
    service = RelayService(config)
    await service.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await service.stop()

asyncio.run(main())
"""


def phone(*args: str) -> list[str]:
    return [sys.executable, "-m", "icerelay", "phone", *args]


@pytest.mark.skipif(
    KAMAILIO is None, reason="kamailio is not installed (Debian package 'kamailio')"
)
@pytest.mark.parametrize("scenario", ["symmetric-no-direct-path", "cone-direct-path"])
def test_ice_through_nat_and_relay(netns_lab: netns.Lab, tmp_path: Path, scenario: str) -> None:
    assert KAMAILIO is not None
    direct = scenario == "cone-direct-path"
    lab = netns_lab
    public, nat = lab.namespace("pub"), lab.namespace("nat")
    alice, bob = lab.namespace("alice"), lab.namespace("bob")
    outside, _ = lab.link(nat, public, ["198.51.100.1/24"], ["198.51.100.10/24"])
    lab.link(alice, nat, [f"{ALICE}/24"], ["10.0.1.1/24"])
    lab.link(bob, public, [f"{BOB}/24"], ["203.0.113.10/24"])
    public.run("ip", "address", "add", f"{SERVICE}/32", "dev", "lo")
    alice.run("ip", "route", "add", "default", "via", "10.0.1.1")
    nat.run("ip", "route", "add", "default", "via", "198.51.100.10")
    nat.sysctl("net.ipv4.ip_forward", "1")
    nat.nft(netns.nat_ruleset(outside, "cone" if direct else "symmetric"))
    bob.run("ip", "route", "add", "default", "via", "203.0.113.10")
    # Routing between the two links is what makes a direct path possible at all.
    public.sysctl("net.ipv4.ip_forward", "1" if direct else "0")

    database = tmp_path / "sessions.sqlite3"
    relay = public.popen(
        sys.executable,
        "-c",
        RELAY_MAIN.format(service=SERVICE, ng_port=NG_PORT, port_min=PORT_MIN, database=database),
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert relay.stdout is not None
    assert relay.stdout.readline().strip() == "ready", relay.stderr.read() if relay.stderr else ""

    # Alice is behind a NAT: Kamailio answers where her requests really come from.
    config = KAMAILIO_CFG.format(
        host=SERVICE,
        sip_port=SIP_PORT,
        ng_port=NG_PORT,
        uas_port=SIP_PORT,
        flags="replace-origin replace-session-connection",
    ).replace(f'$du = "sip:{SERVICE}:{SIP_PORT}";', f'$du = "sip:{BOB}:{SIP_PORT}";')
    config = config.replace("request_route {\n", "request_route {\n    force_rport();\n", 1)
    (tmp_path / "kamailio.cfg").write_text(config)
    kamailio_log = (tmp_path / "kamailio.log").open("w")
    public.popen(
        *kamailio_support.command(KAMAILIO, tmp_path / "kamailio.cfg", tmp_path),
        stdout=kamailio_log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while "found, support for it enabled" not in (tmp_path / "kamailio.log").read_text():
        assert time.monotonic() < deadline, (tmp_path / "kamailio.log").read_text()[-3000:]
        time.sleep(0.1)

    callee = bob.popen(
        *phone("--listen", f"{BOB}:{SIP_PORT}", "--answer", "--ice", "--wait", "40",
               "--duration", "60", "--json", "--debug"),
        stdout=(tmp_path / "bob.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    time.sleep(0.5)
    caller = alice.popen(
        *phone(f"sip:bob@{BOB}:{SIP_PORT}", "--listen", f"{ALICE}:{SIP_PORT}", "--proxy",
               f"{SERVICE}:{SIP_PORT}", "--ice", "--duration", "3", "--timeout", "20",
               "--json", "--debug"),
        stdout=(tmp_path / "alice.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip

    def logs() -> str:
        return "\n".join(
            f"--- {name}\n" + (tmp_path / name).read_text(errors="replace")[-4000:]
            for name in ("alice.log", "bob.log", "kamailio.log")
        )

    freed_during_call = False
    try:
        deadline = time.monotonic() + 40
        while caller.poll() is None and time.monotonic() < deadline:
            if direct and not freed_during_call:
                sessions, ports = relay_statistics(public)
                freed_during_call = sessions == 1 and ports == 0
            time.sleep(0.2)
        assert caller.wait(5) == 0, logs()
        assert callee.wait(15) == 0, logs()
    except subprocess.TimeoutExpired:
        raise AssertionError(logs()) from None
    finally:
        kamailio_log.close()
        # The BYE's delete has a 0.2 s grace period; then a graceful stop, so that the record
        # is in the database.
        time.sleep(0.6)
        os.killpg(relay.pid, signal.SIGTERM)
        relay.wait(10)

    alice_result = json.loads((tmp_path / "alice.log").read_text().strip().splitlines()[-1])
    bob_result = json.loads((tmp_path / "bob.log").read_text().strip().splitlines()[-1])
    assert alice_result["media_both_ways"], logs()
    with sqlite3.connect(database) as connection:
        (reason,) = connection.execute("SELECT reason FROM sessions").fetchone()
        (caller_packets, callee_packets, end_reason) = connection.execute(
            "SELECT packets_from_caller, packets_from_callee, end_reason FROM streams"
        ).fetchone()
    assert reason == "deleted"  # the BYE ended it, never a media timeout
    alice_sent = alice_result["statistics"]["packets_sent"]
    bob_sent = bob_result["statistics"]["packets_sent"]
    if direct:
        # ICE went around the relay: the relay stepped aside during the call.
        assert " -> relay " not in alice_result["ice_pair"], alice_result["ice_pair"]
        assert end_reason == "ice-direct-path"
        assert freed_during_call, "the relay should free the ports as soon as ICE went direct"
        assert caller_packets + callee_packets < 20
    else:
        assert " -> relay " in alice_result["ice_pair"], alice_result["ice_pair"]
        assert end_reason is None
        # Three seconds of 20 ms packets each way, all through the relay, each counted once.
        assert alice_sent > 120 and abs(caller_packets - alice_sent) <= 2, (
            caller_packets,
            alice_sent,
        )
        assert 120 < callee_packets <= bob_sent, (callee_packets, bob_sent)


STATISTICS = """
import os, socket
from icerelay import bencode
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
# A fresh cookie each time: the relay answers a repeated cookie from its reply cache.
cookie = os.urandom(6).hex().encode()
sock.sendto(cookie + b" " + bencode.encode({{"command": "statistics"}}), ({service!r}, {ng_port}))
reply = bencode.decode(sock.recv(65536).partition(b" ")[2])
current = reply[b"statistics"][b"currentstatistics"]
print(current[b"sessionsown"], current[b"portsused"])
"""


def relay_statistics(public: netns.Namespace) -> tuple[int, int]:
    """(sessions, ports in use) as the relay reports them over ng, asked from inside ``public``."""
    result = public.python(STATISTICS.format(service=SERVICE, ng_port=NG_PORT))
    sessions, ports = result.stdout.split()
    return int(sessions), int(ports)
