"""Kamailio 5.6 with its rtpengine module drives our relay over the ng protocol; SIPp places calls.

Topology, all on 127.0.0.1::

    SIPp UAC ──SIP──▶ Kamailio (record-routes, rtpengine_offer/answer/delete) ──SIP──▶ SIPp UAS
        │                      │ ng (UDP)                                                │
        └──────RTP────▶ icerelay relay ◀──────────────────────RTP (echoed)──────────────┘

The UAC streams one second of PCMA with SIPp's ``rtp_stream`` to the address in the 200 OK (our
relay); the UAS (``-rtp_echo``) sends every packet back to where it came from (our relay), which
forwards it to the UAC. The checks: both SIPp scenarios complete (the ACK and the BYE follow the
Record-Route), the SDP each side received names the relay, media crossed the relay both ways,
and the accounting record of the call matches.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.relay.sessions import TerminationReason
from tests.support import kamailio as kamailio_support
from tests.support.ports import free_ports
from tests.support.process import spawn_logged, stop_group
from tests.support.relayd import RelayThread

pytestmark = pytest.mark.interop

HOST = "127.0.0.1"
KAMAILIO = kamailio_support.binary()
SIPP = shutil.which("sipp")

KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
memdbg=5
memlog=5
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
loadmodule "rtpengine.so"

modparam("rtpengine", "rtpengine_sock", "udp:{host}:{ng_port}")
modparam("rr", "append_fromtag", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (is_method("BYE")) {{
                rtpengine_delete();
            }} else if (is_method("INVITE") && has_body("application/sdp")) {{
                rtpengine_offer("{flags}");
                t_on_reply("MEDIA_REPLY");
            }}
            t_relay();
            exit;
        }}
        if (is_method("ACK") && t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            rtpengine_delete();
            t_relay();
        }}
        exit;
    }}
    if (is_method("INVITE")) {{
        record_route();
        if (has_body("application/sdp")) {{
            rtpengine_offer("{flags}");
        }}
        t_on_reply("MEDIA_REPLY");
        t_on_failure("MEDIA_FAILURE");
    }}
    $du = "sip:{host}:{uas_port}";
    t_relay();
    exit;
}}

onreply_route[MEDIA_REPLY] {{
    if (has_body("application/sdp")) {{
        rtpengine_answer("{flags}");
    }}
}}

failure_route[MEDIA_FAILURE] {{
    rtpengine_delete();
}}
"""

UAC_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="icerelay UAC: INVITE with SDP, RTP, BYE, all through a record-routing proxy">
  <send retrans="500">
    <![CDATA[
      INVITE sip:bob@{host}:{uas_port} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "alice" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:bob@{host}:{uas_port}>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:alice@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: icerelay-test-uac
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=alice 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 8
      a=rtpmap:8 PCMA/8000
      a=sendrecv

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "alice" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:alice@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <nop>
    <action>
      <exec rtp_stream="{audio},1,8"/>
    </action>
  </nop>
  <pause milliseconds="1800"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "alice" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:alice@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""

UAS_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="icerelay UAS: answers with SDP, echoes RTP, accepts the BYE">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:bob@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:bob@[local_ip]:[local_port]>
      User-Agent: icerelay-test-uas
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=bob 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 8
      a=rtpmap:8 PCMA/8000
      a=sendrecv

    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:bob@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_group(self.popen)


def start(argv: list[str], log: Path, cwd: Path) -> Process:
    return Process(spawn_logged(argv, log, cwd=cwd), log)


@pytest.fixture
def tools() -> tuple[str, str]:
    if KAMAILIO is None:
        pytest.skip("kamailio is not installed (Debian package 'kamailio')")
    if SIPP is None:
        pytest.skip("sipp is not installed (Debian package 'sip-tester')")
    return KAMAILIO, SIPP


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_kamailio_call_through_the_relay(tools: tuple[str, str], workdir: Path) -> None:
    kamailio, sipp = tools
    ng_port, sip_port, uas_port, uac_port = free_ports(4, kinds=("udp",))
    # SIPp binds its media port, +1 and +2 (video): give each side a free block of four.
    media = free_ports(10, kinds=("udp",), consecutive=True)
    base = media[0] + (media[0] & 1)
    uac_media, uas_media = base, base + 4
    relay_block = free_ports(61, kinds=("udp",), consecutive=True)
    relay_first = relay_block[0] + (relay_block[0] & 1)
    config = RelayServiceConfig(
        ng_listen=(HOST, ng_port),
        ng_tcp=False,
        mediaproxy_socket="",
        accounting="",
        port_min=relay_first,
        port_max=relay_first + 59,
        delete_delay=0.2,
    )
    flags = "replace-origin replace-session-connection trust-address"
    (workdir / "kamailio.cfg").write_text(
        KAMAILIO_CFG.format(
            host=HOST, sip_port=sip_port, ng_port=ng_port, uas_port=uas_port, flags=flags
        )
    )
    audio = workdir / "audio.alaw"
    audio.write_bytes(b"\xd5" * 8000)  # one second of A-law silence: 50 packets of 20 ms
    (workdir / "uac.xml").write_text(UAC_XML.format(host=HOST, uas_port=uas_port, audio=audio))
    (workdir / "uas.xml").write_text(UAS_XML)

    processes: list[Process] = []
    with RelayThread(config) as relay:
        try:
            kam = start(
                kamailio_support.command(kamailio, workdir / "kamailio.cfg", workdir),
                workdir / "kamailio.log",
                workdir,
            )
            processes.append(kam)
            # The rtpengine module pings the relay when it starts: that is our "ready".
            deadline = time.monotonic() + 15
            while relay.service.protocol.counters.events["command.ping"] == 0:
                assert kam.popen.poll() is None, kam.log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, kam.log.read_text(errors="replace")[-3000:]
                time.sleep(0.1)
            time.sleep(0.3)
            common = [
                "-m",
                "1",
                "-nostdin",
                "-trace_msg",
                "-trace_err",
                "-timeout",
                "15s",
                "-mi",
                HOST,
            ]
            uas = start(
                [
                    sipp,
                    "-sf",
                    "uas.xml",
                    "-i",
                    HOST,
                    "-p",
                    str(uas_port),
                    "-mp",
                    str(uas_media),
                    "-rtp_echo",
                    *common,
                ],
                workdir / "uas.log",
                workdir,
            )
            processes.append(uas)
            time.sleep(0.3)
            uac = start(
                [
                    sipp,
                    f"{HOST}:{sip_port}",
                    "-sf",
                    "uac.xml",
                    "-i",
                    HOST,
                    "-p",
                    str(uac_port),
                    "-mp",
                    str(uac_media),
                    *common,
                ],
                workdir / "uac.log",
                workdir,
            )
            processes.append(uac)
            uac_status = uac.popen.wait(30)
            uas_status = uas.popen.wait(15)
            logs = {p.log.name: p.log.read_text(errors="replace")[-3000:] for p in processes}
            assert uac_status == 0, logs
            assert uas_status == 0, logs
            (record,) = relay.wait_for_records(1, 5.0)
        finally:
            for process in reversed(processes):
                process.stop()

    # The SDP each party received names the relay's ports, not the other party's.
    uas_trace = "".join(p.read_text(errors="replace") for p in workdir.glob("uas*_messages.log"))
    uac_trace = "".join(p.read_text(errors="replace") for p in workdir.glob("uac*_messages.log"))
    relay_range = range(config.port_min, config.port_max + 1)
    offered = [int(m) for m in re.findall(r"m=audio (\d+) RTP/AVP", uas_trace)]
    answered = [int(m) for m in re.findall(r"m=audio (\d+) RTP/AVP", uac_trace)]
    assert any(port in relay_range for port in offered), uas_trace[-2000:]
    assert any(port in relay_range for port in answered), uac_trace[-2000:]

    assert record.reason is TerminationReason.DELETED
    assert record.to_tag is not None and record.answered is not None
    (stream,) = record.streams
    assert stream.codec == "PCMA"
    # 50 packets sent by the UAC; the UAS echoed what it got. Loopback loses nothing.
    assert stream.packets_from_caller == 50, record
    assert stream.packets_from_callee == 50, record
    assert stream.bytes_from_caller == 50 * 172
    assert stream.caller_latched is not None and stream.caller_latched.port == uac_media
