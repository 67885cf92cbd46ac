"""baresip 1.0 (Debian's package) as a headless SIP phone in a network namespace.

baresip refuses to run with loopback addresses only ("no local network address"), so each UA
runs in its own namespace with a veth address. Headless: a 440 Hz sine as the microphone
(``ausine``), audio played into nothing (``aubridge``), no console input (``stdio`` is not
loaded: it cannot poll a pipe). Commands given with ``-e`` run at start (``/dial``); the UA
quits after ``-t`` seconds, hanging up first. ICE is the account's ``medianat=ice``, with a STUN
server for server-reflexive candidates when one is given.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["BINARY", "command", "write_config"]

BINARY = shutil.which("baresip")

_CONFIG = """\
poll_method		epoll
sip_listen		{address}:{port}
sip_transports		udp
call_local_timeout	60
audio_player		aubridge,nil
audio_source		ausine,{tone}
audio_alert		aubridge,nil
audio_level		no
# ausine makes 48 kHz stereo only; baresip resamples to and from the codec's 8 kHz mono.
ausrc_srate		48000
auplay_srate		48000
ausrc_channels		2
auplay_channels		2
audio_buffer		20-160
rtp_tos			0
rtcp_mux		{rtcp_mux}
jitter_buffer_delay	5-10
rtp_stats		yes
module_path		/usr/lib/baresip/modules
module			g711.so
module			ausine.so
module			aubridge.so
module			stun.so
module			ice.so
module_tmp		account.so
module_app		menu.so
"""


def write_config(
    directory: Path,
    *,
    user: str,
    address: str,
    port: int = 5060,
    proxy: str | None = None,
    stun: str | None = None,
    tone: int = 440,
    rtcp_mux: bool = False,
) -> Path:
    """A baresip config directory for one UA (``user@address:port``); returns it.

    ``proxy`` (``host:port``) is the outbound proxy every request goes through (Kamailio);
    ``stun`` (``host:port``) the STUN server ICE gathers server-reflexive candidates from.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config").write_text(
        _CONFIG.format(address=address, port=port, tone=tone, rtcp_mux="yes" if rtcp_mux else "no")
    )
    params = ["regint=0", "medianat=ice", "answermode=auto", "audio_codecs=PCMU", "ptime=20"]
    if proxy is not None:
        params.append(f'outbound="sip:{proxy};lr"')
    if stun is not None:
        params.append(f"stunserver=stun:{stun}")
    (directory / "accounts").write_text(f"<sip:{user}@{address}:{port}>;{';'.join(params)}\n")
    (directory / "contacts").write_text("")
    return directory


def command(directory: Path, *, quit_after: float, dial: str | None = None) -> list[str]:
    """argv of a UA with config ``directory``; it dials ``dial`` at once, if given, and quits
    (hanging up) after ``quit_after`` seconds."""
    assert BINARY is not None
    argv = [BINARY, "-f", str(directory), "-t", str(int(quit_after)), "-v"]
    if dial is not None:
        argv += ["-e", f"/dial {dial}"]
    return argv
