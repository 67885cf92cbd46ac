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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.relay.sessions import SessionRecord, StreamEndReason, TerminationReason
from tests.interop.test_relay_kamailio import (
    HOST,
    KAMAILIO,
    KAMAILIO_CFG,
    Process,
    start,
)
from tests.support import kamailio as kamailio_support
from tests.support.ports import free_ports
from tests.support.relayd import RelayThread

pytestmark = pytest.mark.interop


def phone(*args: str) -> list[str]:
    return [sys.executable, "-m", "icerelay", "phone", *args]


@dataclass
class CallResult:
    """What one phone-to-phone call through Kamailio and the relay produced."""

    record: SessionRecord
    caller: dict[str, Any]
    callee: dict[str, Any]
    freed_during_call: bool
    relay_ports: range


def call(tmp_path: Path, flags: str, caller_args: list[str], callee_args: list[str]) -> CallResult:
    """One call: the caller hangs up after 3 s; returns the relay's record and both results."""
    assert KAMAILIO is not None
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
            host=HOST, sip_port=sip_port, ng_port=ng_port, uas_port=callee_port, flags=flags
        )
    )
    processes: list[Process] = []
    freed_during_call = False
    with RelayThread(config) as relay:
        try:
            kam = start(
                kamailio_support.command(KAMAILIO, tmp_path / "kamailio.cfg", tmp_path),
                tmp_path / "kamailio.log",
                tmp_path,
            )
            processes.append(kam)
            deadline = time.monotonic() + 15
            while relay.service.protocol.counters.events["command.ping"] == 0:
                assert kam.popen.poll() is None, kam.log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            callee = start(
                phone("--listen", f"{HOST}:{callee_port}", "--answer", "--wait", "20",
                      "--duration", "30", "--json", "--debug", *callee_args),
                tmp_path / "callee.log",
                tmp_path,
            )  # fmt: skip
            processes.append(callee)
            time.sleep(0.5)
            caller = start(
                phone(f"sip:bob@{HOST}:{callee_port}", "--proxy", f"{HOST}:{sip_port}",
                      "--duration", "3", "--json", "--debug", *caller_args),
                tmp_path / "caller.log",
                tmp_path,
            )  # fmt: skip
            processes.append(caller)
            # While the call is up: is the relay still holding ports for it?
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
            (record,) = relay.wait_for_records(1, 5.0)
        except subprocess.TimeoutExpired:
            logs = {p.log.name: p.log.read_text(errors="replace")[-4000:] for p in processes}
            raise AssertionError(logs) from None
        finally:
            for process in reversed(processes):
                process.stop()
    return CallResult(
        record=record,
        caller=json.loads(caller.log.read_text().strip().splitlines()[-1]),
        callee=json.loads(callee.log.read_text().strip().splitlines()[-1]),
        freed_during_call=freed_during_call,
        relay_ports=range(first, first + 60),
    )


needs_kamailio = pytest.mark.skipif(
    KAMAILIO is None, reason="kamailio is not installed (Debian package 'kamailio')"
)


@needs_kamailio
@pytest.mark.parametrize("ice", ["default", "force"])
def test_ice_through_kamailio_and_the_relay(tmp_path: Path, ice: str) -> None:
    """``default``: ICE goes direct and the relay steps aside. ``force``: the relay strips the
    phones' candidates and is the only (ICE-lite) candidate on each side; media goes through it.
    """
    force = ice == "force"
    flags = "replace-origin replace-session-connection" + (
        " ICE=force" if force else " ICE-priority=low"
    )
    result = call(tmp_path, flags, ["--ice"], ["--ice"])
    assert result.record.reason is TerminationReason.DELETED  # the BYE, not a media timeout
    (stream,) = result.record.streams
    caller = result.caller
    assert caller["media_both_ways"] and caller["ice_state"] == "completed"
    if force:
        # The relay's ICE-lite agent answered both phones' checks; all media crossed it.
        _, _, remote = caller["ice_pair"].partition(" -> ")
        remote_type, remote_address = remote.split()
        assert remote_type == "host" and remote_address.rsplit(":", 1)[0] == HOST
        assert int(remote_address.rsplit(":", 1)[1]) in result.relay_ports
        assert stream.end_reason is None and not result.freed_during_call
        sent = caller["statistics"]["packets_sent"]
        assert abs(stream.packets_from_caller - sent) <= 2 and sent > 100
        assert stream.packets_from_callee > 100
    else:
        assert stream.end_reason is StreamEndReason.ICE_DIRECT
        assert result.freed_during_call, "the relay should free the ports once ICE went direct"
        # Media went directly between the phones: nothing (or next to nothing, before ICE
        # completed) crossed the relay.
        assert stream.packets_from_caller + stream.packets_from_callee < 20
        assert caller["ice_pair"].startswith("host ") and " -> host " in caller["ice_pair"]


@needs_kamailio
def test_rtcp_mux_bridged_between_a_multiplexing_phone_and_one_that_is_not(
    tmp_path: Path,
) -> None:
    """The caller multiplexes RTCP on its RTP port; the callee does not. With Kamailio's
    ``rtcp-mux-demux`` and ``rtcp-mux-accept`` the relay offers the callee plain RTCP, grants the
    caller its mux, and moves RTCP between the two: both phones receive the other's reports."""
    flags = "replace-origin replace-session-connection rtcp-mux-demux rtcp-mux-accept"
    interval = ["--rtcp-interval", "0.5"]
    result = call(tmp_path, flags, ["--rtcp-mux", *interval], interval)
    (stream,) = result.record.streams
    assert stream.end_reason is None and stream.packets_from_caller > 100
    for side in (result.caller, result.callee):
        assert side["media_both_ways"], side
        # A receiver report from the far side came back through the relay.
        assert side["statistics"]["remote_reported_jitter_ms"] is not None, side
