"""Two ICE phones call each other through Kamailio (rtpengine module) and our relay, on loopback.

Default policy: the relay adds itself to each SDP as a ``typ relay`` candidate (the MediaProxy ICE
policy) and rewrites ``c=``/``m=`` to itself. Both phones can reach each other directly, so ICE
selects the direct host pair; the caller (controlling agent) then re-INVITEs with the selected
candidate in ``c=``/``m=`` and ``a=remote-candidates`` (RFC 8839 section 4.2.2). The relay must
recognise that the selected pair avoids it, pass the re-INVITE through untouched, free the
stream's ports at once while the call goes on, and record "ICE selected a direct path" instead of
a media timeout.

``ICE=force``: the relay is the phones' only candidate, an ICE-lite agent answering their checks
with its own credentials, and it carries the media.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from icerelay.relay.config import RelayServiceConfig
from icerelay.relay.sessions import StreamEndReason, TerminationReason
from tests.interop.test_relay_kamailio import (
    HOST,
    KAMAILIO,
    KAMAILIO_CFG,
    Process,
    RelayThread,
    start,
)
from tests.support.ports import free_ports

pytestmark = pytest.mark.interop


def phone(*args: str) -> list[str]:
    return [sys.executable, "-m", "icerelay", "phone", *args]


@pytest.mark.skipif(
    KAMAILIO is None, reason="kamailio is not installed (Debian package 'kamailio')"
)
@pytest.mark.parametrize("ice", ["default", "force"])
def test_ice_through_kamailio_and_the_relay(tmp_path: Path, ice: str) -> None:
    """``default``: ICE goes direct and the relay steps aside. ``force``: the relay strips the
    phones' candidates and is the only (ICE-lite) candidate on each side; media goes through it.
    """
    assert KAMAILIO is not None
    force = ice == "force"
    ng_port, sip_port, callee_port = free_ports(3, kinds=("udp",))
    block = free_ports(61, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    config = RelayServiceConfig(
        ng_listen=(HOST, ng_port),
        ng_tcp=False,
        port_min=first,
        port_max=first + 59,
        delete_delay=0.2,
        mediaproxy_socket="",
        accounting="",
    )
    (tmp_path / "kamailio.cfg").write_text(
        KAMAILIO_CFG.format(
            host=HOST,
            sip_port=sip_port,
            ng_port=ng_port,
            uas_port=callee_port,
            flags="replace-origin replace-session-connection"
            + (" ICE=force" if force else " ICE-priority=low"),
        )
    )
    rundir = tmp_path / "run"
    rundir.mkdir()
    processes: list[Process] = []
    freed_during_call = False
    with RelayThread(config) as relay:
        try:
            kam = start(
                [
                    KAMAILIO,
                    "-f",
                    str(tmp_path / "kamailio.cfg"),
                    "-DD",
                    "-E",
                    "-Y",
                    str(rundir),
                    "-P",
                    str(rundir / "kamailio.pid"),
                    "-w",
                    str(tmp_path),
                    "-m",
                    "32",
                    "-M",
                    "8",
                ],
                tmp_path / "kamailio.log",
                tmp_path,
            )
            processes.append(kam)
            deadline = time.monotonic() + 15
            while relay.service.protocol.counters.commands["ping"] == 0:
                assert kam.popen.poll() is None, kam.log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            callee = start(
                phone(
                    "--listen",
                    f"{HOST}:{callee_port}",
                    "--answer",
                    "--ice",
                    "--wait",
                    "20",
                    "--duration",
                    "30",
                    "--json",
                    "--debug",
                ),
                tmp_path / "callee.log",
                tmp_path,
            )
            processes.append(callee)
            time.sleep(0.5)
            caller = start(
                phone(
                    f"sip:bob@{HOST}:{callee_port}",
                    "--proxy",
                    f"{HOST}:{sip_port}",
                    "--ice",
                    "--duration",
                    "3",
                    "--json",
                    "--debug",
                ),
                tmp_path / "caller.log",
                tmp_path,
            )
            processes.append(caller)
            # While the call is up: once ICE went direct the relay holds no ports for it.
            call_deadline = time.monotonic() + 30
            while caller.popen.poll() is None and time.monotonic() < call_deadline:
                engine = relay.service.engine
                if engine.session_count == 1 and relay.service.pool.in_use == 0:
                    freed_during_call = True
                time.sleep(0.05)
            caller_status = caller.popen.wait(5)
            callee_status = callee.popen.wait(10)
            logs = {p.log.name: p.log.read_text(errors="replace")[-4000:] for p in processes}
            assert caller_status == 0, logs
            assert callee_status == 0, logs
            records = relay.wait_for_records(1, 5.0)
        except subprocess.TimeoutExpired:
            logs = {p.log.name: p.log.read_text(errors="replace")[-4000:] for p in processes}
            raise AssertionError(logs) from None
        finally:
            for process in reversed(processes):
                process.stop()

    (record,) = records
    assert record.reason is TerminationReason.DELETED  # the BYE, not a media timeout
    (stream,) = record.streams
    result = json.loads(caller.log.read_text().strip().splitlines()[-1])
    assert result["media_both_ways"] and result["ice_state"] == "completed"
    if force:
        # The relay's ICE-lite agent answered both phones' checks; all media crossed it.
        _, _, remote = result["ice_pair"].partition(" -> ")
        remote_type, remote_address = remote.split()
        assert remote_type == "host" and remote_address.rsplit(":", 1)[0] == HOST
        assert first <= int(remote_address.rsplit(":", 1)[1]) <= first + 59
        assert stream.end_reason is None and not freed_during_call
        sent = result["statistics"]["packets_sent"]
        assert abs(stream.packets_from_caller - sent) <= 2 and sent > 100
        assert stream.packets_from_callee > 100
    else:
        assert stream.end_reason is StreamEndReason.ICE_DIRECT
        assert freed_during_call, "the relay should free the ports as soon as ICE went direct"
        # Media went directly between the phones: nothing (or next to nothing, before ICE
        # completed) crossed the relay.
        assert stream.packets_from_caller + stream.packets_from_callee < 20
        assert result["ice_pair"].startswith("host ") and " -> host " in result["ice_pair"]
