"""Kamailio with an rtpengine set of two icerelay instances; SIPp places 100 calls with RTP; one
relay is killed (SIGKILL) midway. Every call completes and there are exactly 100 records: the
calls of the dead relay are adopted by the other one, which writes their records. Kamailio 5.6
keeps a call with the relay that took its offer: once that relay is disabled, the call's
``delete`` goes nowhere ("no available proxies"), so the adopted calls end by media timeout
(``no-media``) after their BYE, on the adopting relay, still exactly once.

Topology, all on 127.0.0.1::

    SIPp UAC ──SIP──▶ Kamailio (rtpengine set: relay A, relay B) ──SIP──▶ SIPp UAS (-rtp_echo)
        └─────────RTP─────────▶ relay A or B ◀──────────RTP──────────────────┘
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.interop.test_cluster_failover import ng_answers, wait_for
from tests.interop.test_relay_kamailio import KAMAILIO_CFG, UAC_XML, UAS_XML
from tests.support import kamailio as kamailio_support
from tests.support import redisd
from tests.support.ports import free_ports
from tests.support.process import read_log, spawn_logged, stop_group
from tests.support.serve import ServeProcess

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not redisd.available(), reason="needs redis-server (Debian redis-server)"),
    pytest.mark.skipif(
        kamailio_support.unavailable_reason() is not None,
        reason=kamailio_support.unavailable_reason() or "",
    ),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="needs sipp (Debian sip-tester)"),
]

HOST = "127.0.0.1"
CALLS = 100
# Kamailio gives up on a relay after its default 1 s (one try) and sends the command to the
# other one; a relay it gave up on is left alone for 60 s.
TIMEOUTS = """modparam("rtpengine", "rtpengine_tout_ms", 1000)
modparam("rtpengine", "rtpengine_retr", 1)
modparam("rtpengine", "rtpengine_disable_tout", 60)
"""


def reasons(relays: list[tuple[ServeProcess, int, Path]], calls: list[str]) -> list[object]:
    out: list[object] = []
    for _, _, database in relays:
        if database.exists():
            with sqlite3.connect(database) as connection:
                for call in calls:
                    out += connection.execute(
                        "SELECT call_id, reason, created, ended FROM sessions WHERE call_id = ?",
                        (call,),
                    ).fetchall()
    return out


def records(database: Path) -> list[str]:
    """Call-IDs of the records, but for ``relay-failure`` ones: a relay port another program
    (a test running in parallel) held makes the relay refuse that offer attempt, record it as
    a relay failure and retry on other ports; the call's own record follows."""
    if not database.exists():
        return []
    with sqlite3.connect(database) as connection:
        return [
            row[0]
            for row in connection.execute(
                "SELECT call_id FROM sessions WHERE reason != 'relay-failure'"
            )
        ]


def test_kamailio_rtpengine_set_survives_a_relay_killed_midway(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    sipp = shutil.which("sipp")
    kamailio = kamailio_support.binary()
    assert sipp is not None and kamailio is not None
    redis = redisd.RedisServer(tmp_path)
    redis.start()
    processes = []
    try:
        # Up to ~70 calls at once on one relay (25 calls/s, ~3 s each): 2 pairs per call.
        # SIPp's per-call RTP sockets come after its -mp port: they get the block's tail, so
        # that they never take a relay port (a relay that cannot bind fails the offer).
        block = free_ports(1000 + 1000, kinds=("udp",), consecutive=True)
        first = block[0] + (block[0] & 1)
        relays: list[tuple[ServeProcess, int, Path]] = []
        for index, name in enumerate(("kam-a", "kam-b")):
            stun_port, ng_port = free_ports(2)
            low = first + 500 * index
            database = tmp_path / f"{name}.sqlite3"
            server = serve_factory(
                ["--stun-listen", f"{HOST}:{stun_port}"],
                host=HOST,
                port=stun_port,
                env={
                    "ICERELAY_RELAY__ENABLED": "1",
                    "ICERELAY_RELAY__NG_LISTEN": f"{HOST}:{ng_port}",
                    "ICERELAY_RELAY__PORT_MIN": str(low),
                    "ICERELAY_RELAY__PORT_MAX": str(low + 497),
                    "ICERELAY_RELAY__MEDIAPROXY_SOCKET": "",
                    "ICERELAY_RELAY__ACCOUNTING": f"sqlite://{database}",
                    # Each instance its own journal (the state directory is locked by one relay).
                    "ICERELAY_RELAY__STATE_DIR": str(tmp_path / f"{name}-state"),
                    "ICERELAY_RELAY__DELETE_DELAY": "0.2",
                    # Kamailio 5.6 sends a dead relay's calls' deletes nowhere ("no available
                    # proxies": a call stays with its node): adopted calls end by no-media.
                    "ICERELAY_RELAY__MEDIA_TIMEOUT": "3",
                    "ICERELAY_CLUSTER__REDIS": redis.url,
                    "ICERELAY_CLUSTER__INSTANCE": name,
                },
            )
            wait_for(lambda: ng_answers(ng_port), 10, f"{name}'s ng port")  # noqa: B023
            relays.append((server, ng_port, database))
        sip_port, uas_port, uac_port = free_ports(3, kinds=("udp",))
        base = first + 1000
        nodes = f"{relays[0][1]} udp:{HOST}:{relays[1][1]}"
        flags = "replace-origin replace-session-connection trust-address"
        config = KAMAILIO_CFG.format(
            host=HOST, sip_port=sip_port, ng_port=nodes, uas_port=uas_port, flags=flags
        ).replace(
            'modparam("rr", "append_fromtag", 1)\n',
            'modparam("rr", "append_fromtag", 1)\n' + TIMEOUTS,
        )
        (tmp_path / "kamailio.cfg").write_text(config)
        audio = tmp_path / "audio.alaw"
        audio.write_bytes(b"\xd5" * 8000)  # one second of A-law: 50 packets of 20 ms
        (tmp_path / "uac.xml").write_text(UAC_XML.format(host=HOST, uas_port=uas_port, audio=audio))
        (tmp_path / "uas.xml").write_text(UAS_XML)

        kam = spawn_logged(
            kamailio_support.command(kamailio, tmp_path / "kamailio.cfg", tmp_path),
            tmp_path / "kamailio.log",
            cwd=tmp_path,
        )
        processes.append(kam)
        time.sleep(1.5)  # its children start and ping both relays
        assert kam.poll() is None, read_log(tmp_path / "kamailio.log")[-3000:]
        common = ["-m", str(CALLS), "-nostdin", "-timeout", "60s", "-mi", HOST]
        uas = spawn_logged(
            [sipp, "-sf", "uas.xml", "-i", HOST, "-p", str(uas_port), "-mp", str(base + 4),
             "-rtp_echo", *common],
            tmp_path / "uas.log",
            cwd=tmp_path,
        )  # fmt: skip
        processes.append(uas)
        time.sleep(0.3)
        uac = spawn_logged(
            [sipp, f"{HOST}:{sip_port}", "-sf", "uac.xml", "-i", HOST, "-p", str(uac_port),
             "-mp", str(base), "-r", "25", "-l", str(CALLS), *common],
            tmp_path / "uac.log",
            cwd=tmp_path,
        )  # fmt: skip
        processes.append(uac)
        # Midway: about half the calls placed, many of them up on relay A.
        time.sleep(2.0)
        killed_server = relays[0][0]
        stop_group(killed_server.process, sig=signal.SIGKILL)
        uac_status = uac.wait(90)
        uas_status = uas.wait(30)
        logs = "\n".join(
            read_log(tmp_path / name)[-2000:] for name in ("uac.log", "uas.log", "kamailio.log")
        )
        assert uac_status == 0, logs
        assert uas_status == 0, logs
        # Every call has its record, exactly once, on one relay or the other.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = records(relays[0][2]) + records(relays[1][2])
            if len(found) >= CALLS:
                break
            time.sleep(0.2)
        found = records(relays[0][2]) + records(relays[1][2])
        adopted = len(records(relays[1][2]))
        import redis as redis_client

        client = redis_client.Redis.from_url(redis.url, decode_responses=True)
        try:
            adoptions = client.lrange("icerelay:adoptions", 0, -1)
        finally:
            client.close()
        print(f"\nrecords: {len(records(relays[0][2]))} by A, {adopted} by B; {adoptions}")
        if len(found) != CALLS or len(set(found)) != CALLS:
            relays[1][0].stop()
            missing = {f"{n}-" for n in range(1, CALLS + 1)} - {
                c.split("-")[0] + "-" for c in found
            }
            raise AssertionError(
                f"{len(found)} records, {len(set(found))} calls; missing {sorted(missing)}; "
                f"twice: {reasons(relays, [c for c in set(found) if found.count(c) > 1])}\n"
                + relays[1][0].output()[-6000:]
                + read_log(tmp_path / "kamailio.log")[-3000:]
            )
    finally:
        for process in reversed(processes):
            stop_group(process)
        redis.stop()
