"""``icerelay phone``: place or answer one call, play and record audio, print statistics.

The command only reads its options; the call is :class:`icerelay.aio.phone.Phone` (sockets)
around :class:`icerelay.endpoint.call.CallController` (the call itself, sans I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import click

from icerelay.endpoint.options import PhoneOptions
from icerelay.errors import ConfigError, IcerelayError
from icerelay.sip.message import SipUri
from icerelay.sip.sipconf import SipConf, load_sip_conf

Address = tuple[str, int]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _peer_target(
    target: str, conf: SipConf, password: str | None
) -> tuple[str, str | None, str | None]:
    """A bare peer name from sip.conf becomes its URI (``host``/``port``, ``defaultuser``), and
    lends its ``secret`` when no --password was given."""
    peer = conf.peers.get(target.lower()) if ":" not in target and "@" not in target else None
    if peer is None:
        return target, password, None
    if peer.host is None:
        raise ConfigError(f"peer [{peer.name}] has no host to call (host=dynamic)")
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    uri = f"sip:{peer.user or peer.name}@{host}:{peer.port}"
    return uri, password or peer.secret, peer.name


def _transport(choice: str | None, target: str | None) -> str:
    """--transport, else the target URI's ``;transport=`` parameter, else UDP."""
    if choice is not None:
        return choice.upper()
    if target is not None:
        with contextlib.suppress(IcerelayError):
            if SipUri.parse(target).transport == "tcp":
                return "TCP"
    return "UDP"


def _address(text: str, default_port: int) -> Address:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port


@click.command("phone")
@click.argument("target", required=False, metavar="[SIP-URI]")
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    metavar="IP:PORT",
    help="SIP address to bind (port 0 picks one).",
)
@click.option("--answer", is_flag=True, help="Wait for a call and answer it.")
@click.option(
    "--ring",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="With --answer: seconds of ringing (180) before the 200 OK.",
)
@click.option("--proxy", metavar="HOST[:PORT]", help="Send the INVITE through this proxy.")
@click.option(
    "--transport",
    type=click.Choice(["udp", "tcp"], case_sensitive=False),
    default=None,
    help="SIP transport for our requests (default: the URI's ;transport, else udp).",
)
@click.option("--user", default="icerelay", show_default=True, help="Our SIP user name.")
@click.option("--auth-user", help="Digest user name (default: --user).")
@click.option("--password", help="Digest password for 401/407 challenges.")
@click.option(
    "--play",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="WAV file to send (default: a tone).",
)
@click.option("--tone", type=float, default=440.0, show_default=True, help="Tone frequency (Hz).")
@click.option(
    "--record",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write what is received to this WAV file.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds from answer to hang-up.",
)
@click.option(
    "--timeout",
    "setup_timeout",
    type=click.FloatRange(min=0.5),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the call (and ICE) to connect.",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0.1),
    default=None,
    help="With --answer: give up if no call comes within this many seconds.",
)
@click.option(
    "--codec",
    type=click.Choice(["PCMU", "PCMA"], case_sensitive=False),
    default="PCMU",
    show_default=True,
    help="Preferred codec.",
)
@click.option("--rtp-address", help="Local IP for media (default: the SIP address).")
@click.option("--rtcp-mux", is_flag=True, help="Offer RTCP multiplexed on the RTP port.")
@click.option(
    "--rtcp-mux-only",
    is_flag=True,
    help="Offer rtcp-mux without an RTCP port to fall back to (RFC 8858).",
)
@click.option("--rtcp-interval", type=click.FloatRange(min=0.5), default=5.0, show_default=True)
@click.option("--dtmf", metavar="DIGITS", help="Send these DTMF digits (RFC 4733) at the start.")
@click.option(
    "--ice/--no-ice",
    default=None,
    help="Offer and answer ICE (RFC 8445 / RFC 8839); default: sip.conf's icesupport, else off.",
)
@click.option(
    "--rtp-conf",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Asterisk rtp.conf: icesupport, stunaddr, turnaddr/turnport/turnusername/"
    "turnpassword, ICE/STUN ACLs, [ice_host_candidates], rtpstart/rtpend.",
)
@click.option(
    "--sip-conf",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Asterisk sip.conf: per-peer icesupport; call a peer by its section name.",
)
@click.option(
    "--stun",
    "stun_servers",
    multiple=True,
    metavar="HOST[:PORT]",
    help="STUN server for server-reflexive candidates (repeatable).",
)
@click.option("--turn", "turn_server", metavar="HOST[:PORT]", help="TURN server (UDP).")
@click.option("--turn-user", help="TURN user name.")
@click.option("--turn-password", help="TURN password.")
@click.option("--relay-only", is_flag=True, help="With --ice: offer only relayed candidates.")
@click.option("--ice-lite", is_flag=True, help="With --ice: be an ICE-lite agent (a=ice-lite).")
@click.option(
    "--external-address",
    metavar="IP[:PORT]",
    help="Our SIP address outside the NAT, for Contact (Asterisk's externaddr).",
)
@click.option(
    "--debug",
    is_flag=True,
    help="Show SIP messages with their SDP, and the ICE check list (like 'sip set debug on').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def phone(
    target: str | None,
    listen: str,
    answer: bool,
    ring: float,
    proxy: str | None,
    transport: str | None,
    user: str,
    auth_user: str | None,
    password: str | None,
    play: Path | None,
    tone: float,
    record: Path | None,
    duration: float,
    setup_timeout: float,
    wait: float | None,
    codec: str,
    rtp_address: str | None,
    rtcp_mux: bool,
    rtcp_mux_only: bool,
    rtcp_interval: float,
    dtmf: str | None,
    ice: bool | None,
    rtp_conf: Path | None,
    sip_conf: Path | None,
    stun_servers: tuple[str, ...],
    turn_server: str | None,
    turn_user: str | None,
    turn_password: str | None,
    relay_only: bool,
    ice_lite: bool,
    external_address: str | None,
    debug: bool,
    as_json: bool,
) -> None:
    """Place a call to SIP-URI, or answer one (--answer); play, record, hang up, report.

    Exits 0 only if the call connected and media flowed both ways.

    \b
    icerelay phone --listen 127.0.0.1:5070 --answer --record in.wav
    icerelay phone sip:bob@127.0.0.1:5070 --duration 3 --tone 1000
    """
    if (target is None) == (not answer):
        click.echo("icerelay: give a SIP URI to call, or --answer (not both)", err=True)
        sys.exit(EXIT_USAGE)
    try:
        from icerelay.ice.rtpconf import load_rtp_conf

        rtp_settings = load_rtp_conf(rtp_conf) if rtp_conf is not None else None
        sip_settings = load_sip_conf(sip_conf) if sip_conf is not None else None
        for warning in (*(rtp_settings.warnings if rtp_settings else ()),
                        *(sip_settings.warnings if sip_settings else ())):
            click.echo(f"icerelay: configuration: {warning}", err=True)
        peer = None
        if target is not None and sip_settings is not None:
            target, password, peer = _peer_target(target, sip_settings, password)
        options = PhoneOptions(
            target=target,
            listen=_address(listen, 5060),
            answer=answer,
            ring=ring,
            proxy=_address(proxy, 5060) if proxy else None,
            transport=_transport(transport, target),
            username=auth_user or user,
            password=password,
            user=user,
            play=play,
            tone=tone,
            record=record,
            duration=duration,
            setup_timeout=setup_timeout,
            wait=wait,
            codec=codec.upper(),
            rtp_address=rtp_address,
            rtcp_mux=rtcp_mux or rtcp_mux_only,
            rtcp_mux_only=rtcp_mux_only,
            rtcp_interval=rtcp_interval,
            dtmf=dtmf,
            ice=ice,
            rtp_conf=rtp_settings,
            sip_conf=sip_settings,
            peer=peer,
            stun_servers=[_address(s, 3478) for s in stun_servers],
            turn_server=_address(turn_server, 3478) if turn_server else None,
            turn_username=turn_user,
            turn_password=turn_password,
            relay_only=relay_only,
            ice_lite=ice_lite,
            external_address=_address(external_address, 0) if external_address else None,
            debug=debug,
            as_json=as_json,
        )
        if dtmf:
            from icerelay.endpoint.dtmf import event_for

            for digit in dtmf:
                event_for(digit)
    except (ValueError, IcerelayError) as exc:
        click.echo(f"icerelay: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        from icerelay.aio.phone import Phone

        result = asyncio.run(Phone(options).run())
    except (OSError, IcerelayError) as exc:
        click.echo(f"icerelay: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        if result.ice_pair:
            click.echo(f"ICE: {result.ice_state}, selected pair {result.ice_pair}")
        if result.statistics is not None:
            click.echo(result.statistics.to_text())
        click.echo(
            "media flowed both ways"
            if result.media_both_ways
            else f"FAILED: {'no media both ways' if result.established else 'no call'}"
            + (f" ({result.end_reason})" if result.end_reason else "")
        )
    sys.exit(EXIT_OK if result.media_both_ways else EXIT_FAILURE)
