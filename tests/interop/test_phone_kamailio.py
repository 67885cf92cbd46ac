"""`icerelay phone` to `icerelay phone` through Kamailio (record-routing, rtpengine module) and
our media relay, which Kamailio drives over the ng protocol.

::

    phone A ──SIP──▶ Kamailio ──SIP──▶ phone B          (ACK, re-INVITE, BYE follow Record-Route)
       │              │ ng                  │
       └──RTP──▶ icerelay relay ◀──RTP──────┘          (without ICE: every packet crosses the relay)

Without ICE the phones only know the relay's addresses (the SDP is rewritten), so the tone each
side records has crossed the relay. With ICE the relay adds its own candidate; the phones check
their pairs, and the call (with the caller's updated offer through Kamailio) still works.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.endpoint.audio import dominant_frequency, read_wav
from tests.support import kamailio as kamailio_support
from tests.support.ports import free_ports
from tests.support.process import spawn_logged, stop_group
from tests.support.relayd import RelayThread

pytestmark = pytest.mark.interop

HOST = "127.0.0.1"
KAMAILIO = kamailio_support.binary()
PHONE = [sys.executable, "-m", "icerelay", "phone"]

# A minimal record-routing proxy: every request goes to its Request-URI; offers and answers go
# through the relay (rtpengine_offer/answer), BYE deletes the relay session.
KAMAILIO_CFG = """#!KAMAILIO
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
loadmodule "rtpengine.so"
loadmodule "auth.so"

modparam("rtpengine", "rtpengine_sock", "udp:{host}:{ng_port}")
# A loaded test machine may answer ng slower than the module's 1 s default: an offer that times
# out is forwarded unrewritten, and the call would bypass the relay.
modparam("rtpengine", "rtpengine_tout_ms", 5000)

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
    loose_route();
    if (is_method("INVITE") && {auth}) {{
        # Digest with qop=auth against a fixed password (RFC 3261 section 22.3, 407).
        if (!pv_proxy_authenticate("$fd", "{password}", "0")) {{
            proxy_challenge("$fd", "1");
            exit;
        }}
        consume_credentials();
    }}
    if (is_method("INVITE")) {{
        record_route();
        if (has_body("application/sdp")) {{
            rtpengine_offer("{flags}");
        }}
        t_on_reply("MEDIA_REPLY");
    }}
    t_relay();
    exit;
}}

onreply_route[MEDIA_REPLY] {{
    if (has_body("application/sdp")) {{
        rtpengine_answer("{flags}");
    }}
}}
"""


@pytest.fixture(params=[False])
def proxy(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[
        tuple[int, tuple[int, int], RelayThread]]:
    """Kamailio + relay: (Kamailio's SIP port, the relay port range, the relay). With the
    parameter True, Kamailio challenges INVITEs (407, password "s3cret")."""
    if KAMAILIO is None:
        pytest.skip("kamailio is not installed (Debian package 'kamailio')")
    ng_port, sip_port = free_ports(2, kinds=("udp",))
    block = free_ports(41, kinds=("udp",), consecutive=True)
    first = block[0] + (block[0] & 1)
    config = RelayServiceConfig(ng_listen=(HOST, ng_port), ng_tcp=False, mediaproxy_socket="",
                                accounting="", port_min=first, port_max=first + 39,
                                delete_delay=0.2)
    flags = "replace-origin replace-session-connection trust-address"
    (tmp_path / "kamailio.cfg").write_text(KAMAILIO_CFG.format(
        host=HOST, sip_port=sip_port, ng_port=ng_port, flags=flags,
        auth="1" if request.param else "0", password="s3cret"))
    with RelayThread(config) as relay:
        kamailio = spawn_logged(
            kamailio_support.command(KAMAILIO, tmp_path / "kamailio.cfg", tmp_path),
            tmp_path / "kamailio.log", cwd=tmp_path)
        try:
            # The rtpengine module pings the relay when it starts: that is our "ready".
            deadline = time.monotonic() + 15
            while relay.service.protocol.counters.events["command.ping"] == 0:
                assert kamailio.poll() is None, (tmp_path / "kamailio.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "kamailio did not ping the relay"
                time.sleep(0.05)
            time.sleep(0.2)
            yield sip_port, (first, first + 39), relay
        finally:
            stop_group(kamailio)


def call_through(sip_port: int, tmp_path: Path, *extra: str, duration: str = "2") -> tuple[
        subprocess.CompletedProcess[str], int, str]:
    answerer = subprocess.Popen(
        [*PHONE, "--listen", f"{HOST}:0", "--answer", "--wait", "20", "--duration", "20",
         "--tone", "1000", "--record", str(tmp_path / "b.wav"), "--debug", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert answerer.stderr is not None
        first = answerer.stderr.readline()
        assert first.startswith("SIP on udp:"), first
        port = int(first.rsplit(":", 1)[1])
        caller = subprocess.run(
            [*PHONE, f"sip:bob@{HOST}:{port}", "--proxy", f"{HOST}:{sip_port}", "--duration",
             duration, "--tone", "440", "--record", str(tmp_path / "a.wav"), "--debug", *extra],
            capture_output=True, text=True, timeout=60)
        out, err = answerer.communicate(timeout=30)
    finally:
        if answerer.poll() is None:
            answerer.kill()
            answerer.communicate()
    return caller, answerer.returncode, out + err


def m_ports(debug_output: str) -> list[int]:
    return [int(line.split()[1]) for line in debug_output.splitlines()
            if line.startswith("m=audio ")]


def test_plain_call_through_kamailio_and_the_relay(
        proxy: tuple[int, tuple[int, int], RelayThread], tmp_path: Path) -> None:
    sip_port, (low, high), relay = proxy
    caller, code, answerer_output = call_through(sip_port, tmp_path)
    assert caller.returncode == 0, caller.stdout[-4000:] + caller.stderr
    assert code == 0, answerer_output[-4000:]
    # Each phone was given the relay's ports, not the other phone's.
    received_by_b = m_ports(answerer_output.split("Received from", 1)[1])
    assert low <= received_by_b[0] <= high
    assert "Record-Route:" in caller.stdout and "Route: <sip:" in caller.stdout  # ACK/BYE route
    assert "call ended: remote hangup" in answerer_output
    assert dominant_frequency(read_wav(tmp_path / "a.wav")[1600:3200]) == pytest.approx(
        1000, abs=10)
    assert dominant_frequency(read_wav(tmp_path / "b.wav")[1600:3200]) == pytest.approx(
        440, abs=10)
    deadline = time.monotonic() + 5
    while not relay.records and time.monotonic() < deadline:
        time.sleep(0.05)
    assert relay.records, "the relay closed no session for the call"


def test_ice_call_through_kamailio_and_the_relay(
        proxy: tuple[int, tuple[int, int], RelayThread], tmp_path: Path) -> None:
    sip_port, _, _ = proxy
    # 3 s: ICE must complete and the updated offer go through well before the hang-up, even on
    # a loaded machine.
    caller, code, answerer_output = call_through(sip_port, tmp_path, "--ice", "--json",
                                                 duration="3")
    assert caller.returncode == 0, caller.stdout[-4000:] + caller.stderr
    assert code == 0, answerer_output[-4000:]
    result = json.loads(caller.stdout.strip().splitlines()[-1])
    assert result["media_both_ways"] and result["ice_pair"]
    assert "a=ice-ufrag:" in answerer_output  # the offer kept its ICE attributes through the relay
    assert "CSeq: 2 INVITE" in caller.stdout  # the updated offer went through Kamailio
    assert dominant_frequency(read_wav(tmp_path / "a.wav")[1600:3200]) == pytest.approx(
        1000, abs=10)


@pytest.mark.parametrize("proxy", [True], indirect=True)
def test_proxy_authentication_407(
        proxy: tuple[int, tuple[int, int], RelayThread], tmp_path: Path) -> None:
    sip_port, _, _ = proxy
    caller, code, answerer_output = call_through(sip_port, tmp_path, "--password", "s3cret")
    assert caller.returncode == 0, caller.stdout[-4000:] + caller.stderr
    assert code == 0, answerer_output[-4000:]
    assert "SIP/2.0 407" in caller.stdout and "Proxy-Authorization: Digest" in caller.stdout
    assert "qop=auth" in caller.stdout
    wrong = subprocess.run(
        [*PHONE, f"sip:bob@{HOST}:9", "--proxy", f"{HOST}:{sip_port}", "--password", "nope",
         "--duration", "1", "--timeout", "5"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "407" in wrong.stdout, wrong.stdout
