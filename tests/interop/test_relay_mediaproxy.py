"""Kamailio 5.6's ``mediaproxy`` module (the ICE-aware MediaProxy client of the seed document)
drives our relay over the UNIX socket protocol; SIPp places a call with RTP both ways.

The module sends ``update`` for the INVITE's SDP and for the 200 OK's, and ``remove`` on the
BYE; it rewrites the SDP itself with the ``<ip> <port>`` our relay answers. Checks: the call
completes, each side's SDP names a relay port, 50 packets cross the relay each way, and the
accounting record carries what only this protocol tells (user agents, URIs).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.relay.sessions import TerminationReason
from tests.interop.test_relay_kamailio import (
    HOST,
    KAMAILIO,
    SIPP,
    UAC_XML,
    UAS_XML,
    Process,
    start,
)
from tests.support import kamailio as kamailio_support
from tests.support.ports import free_ports
from tests.support.relayd import RelayThread

pytestmark = pytest.mark.interop

KAMAILIO_MEDIAPROXY_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
auto_aliases=no
listen=udp:{host}:{sip_port}

loadmodule "pv.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "mediaproxy.so"

modparam("mediaproxy", "mediaproxy_socket", "{socket}")
modparam("mediaproxy", "mediaproxy_timeout", 2000)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (is_method("BYE")) {{
                end_media_session();
            }}
            t_relay();
            exit;
        }}
        if (is_method("ACK") && t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("INVITE")) {{
        record_route();
        use_media_proxy();
        t_on_reply("MEDIA_REPLY");
    }}
    $du = "sip:{host}:{uas_port}";
    t_relay();
    exit;
}}

onreply_route[MEDIA_REPLY] {{
    if (has_body("application/sdp")) {{
        use_media_proxy();
    }}
}}
"""


@pytest.mark.skipif(KAMAILIO is None or SIPP is None, reason="needs kamailio and sipp")
def test_kamailio_mediaproxy_module_call(tmp_path: Path) -> None:
    assert KAMAILIO is not None and SIPP is not None
    ng_port, sip_port, uas_port, uac_port = free_ports(4, kinds=("udp",))
    media = free_ports(10, kinds=("udp",), consecutive=True)
    base = media[0] + (media[0] & 1)
    uac_media, uas_media = base, base + 4
    relay_block = free_ports(61, kinds=("udp",), consecutive=True)
    relay_first = relay_block[0] + (relay_block[0] & 1)
    socket_path = tmp_path / "mediaproxy" / "dispatcher.sock"
    config = RelayServiceConfig(
        ng_listen=(HOST, ng_port),
        ng_tcp=False,
        mediaproxy_socket=str(socket_path),
        accounting="",
        port_min=relay_first,
        port_max=relay_first + 59,
        delete_delay=0.2,
    )
    (tmp_path / "kamailio.cfg").write_text(
        KAMAILIO_MEDIAPROXY_CFG.format(
            host=HOST, sip_port=sip_port, uas_port=uas_port, socket=socket_path
        )
    )
    audio = tmp_path / "audio.alaw"
    audio.write_bytes(b"\xd5" * 8000)  # one second of A-law silence: 50 packets of 20 ms
    (tmp_path / "uac.xml").write_text(UAC_XML.format(host=HOST, uas_port=uas_port, audio=audio))
    (tmp_path / "uas.xml").write_text(UAS_XML)

    processes: list[Process] = []
    with RelayThread(config) as relay:
        try:
            assert socket_path.is_socket()
            kam = start(
                kamailio_support.command(KAMAILIO, tmp_path / "kamailio.cfg", tmp_path),
                tmp_path / "kamailio.log",
                tmp_path,
            )
            processes.append(kam)
            deadline = time.monotonic() + 15
            while "Listening on" not in kam.log.read_text(errors="replace"):
                assert kam.popen.poll() is None, kam.log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, kam.log.read_text(errors="replace")[-3000:]
                time.sleep(0.1)
            time.sleep(0.5)
            common = ["-m", "1", "-nostdin", "-trace_msg", "-trace_err", "-timeout", "15s",
                      "-mi", HOST]  # fmt: skip
            uas = start(
                [SIPP, "-sf", "uas.xml", "-i", HOST, "-p", str(uas_port), "-mp", str(uas_media),
                 "-rtp_echo", *common],
                tmp_path / "uas.log",
                tmp_path,
            )  # fmt: skip
            processes.append(uas)
            time.sleep(0.3)
            uac = start(
                [SIPP, f"{HOST}:{sip_port}", "-sf", "uac.xml", "-i", HOST, "-p", str(uac_port),
                 "-mp", str(uac_media), *common],
                tmp_path / "uac.log",
                tmp_path,
            )  # fmt: skip
            processes.append(uac)
            uac_status = uac.popen.wait(30)
            uas_status = uas.popen.wait(15)
            logs = {p.log.name: p.log.read_text(errors="replace")[-3000:] for p in processes}
            assert uac_status == 0, logs
            assert uas_status == 0, logs
            (record,) = relay.wait_for_records(1, 5.0)
            assert relay.service.mediaproxy.errors == 0
        finally:
            for process in reversed(processes):
                process.stop()

    uas_trace = "".join(p.read_text(errors="replace") for p in tmp_path.glob("uas*_messages.log"))
    uac_trace = "".join(p.read_text(errors="replace") for p in tmp_path.glob("uac*_messages.log"))
    relay_ports = range(config.port_min, config.port_max + 1)
    offered = [int(m) for m in re.findall(r"m=audio (\d+) RTP/AVP", uas_trace)]
    answered = [int(m) for m in re.findall(r"m=audio (\d+) RTP/AVP", uac_trace)]
    assert any(port in relay_ports for port in offered), uas_trace[-2000:]
    assert any(port in relay_ports for port in answered), uac_trace[-2000:]

    assert record.reason is TerminationReason.DELETED  # the module's "remove" on the BYE
    assert record.caller_user_agent == "icerelay-test-uac"
    assert record.callee_user_agent == "icerelay-test-uas"
    assert dict(record.metadata)["to_uri"].startswith("bob@")
    (stream,) = record.streams
    assert stream.packets_from_caller == 50, record
    assert stream.packets_from_callee == 50, record
    assert stream.caller_latched is not None and stream.caller_latched.port == uac_media
