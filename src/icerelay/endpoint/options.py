"""What a phone call is told (:class:`PhoneOptions`) and how it ended (:class:`PhoneResult`).

Plain data shared by the call controller (:mod:`icerelay.endpoint.call`), its asyncio shell
(:mod:`icerelay.aio.phone`) and the ``icerelay phone`` command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icerelay.endpoint.stats import StreamStatistics

if TYPE_CHECKING:
    from icerelay.ice.config import AgentConfig
    from icerelay.ice.relay import TurnServer
    from icerelay.ice.rtpconf import RtpIceSettings
    from icerelay.sip.sipconf import SipConf

Address = tuple[str, int]


@dataclass
class PhoneOptions:
    """Everything ``icerelay phone`` can be told."""

    target: str | None = None
    listen: Address = ("127.0.0.1", 0)
    answer: bool = False
    proxy: Address | None = None
    username: str | None = None
    password: str | None = None
    user: str = "icerelay"
    play: Path | None = None
    tone: float = 440.0
    record: Path | None = None
    duration: float = 5.0
    setup_timeout: float = 30.0
    wait: float | None = None
    ring: float = 0.0
    """Seconds to ring (180) before answering an incoming call."""
    codec: str = "PCMU"
    rtp_address: str | None = None
    rtcp_mux: bool = False
    rtcp_mux_only: bool = False
    """Offer rtcp-mux without a fallback (RFC 8858 ``a=rtcp-mux-only``, one ICE component);
    otherwise an rtcp-mux offer also offers RTCP on its own port (RFC 5761 §5.1.3)."""
    rtcp_interval: float = 5.0
    dtmf: str | None = None
    ice: bool | None = None
    """ICE on or off for this call; None: as sip.conf says for the peer (default off, as in
    chan_sip)."""
    rtp_conf: RtpIceSettings | None = None
    """Asterisk rtp.conf ICE settings (icesupport, stunaddr, turnaddr..., ACLs, host
    candidates, rtpstart/rtpend)."""
    sip_conf: SipConf | None = None
    """Asterisk sip.conf: per-peer icesupport, and host/port/secret of named peers."""
    peer: str | None = None
    """The sip.conf peer (section name) being called, when the target named one."""
    stun_servers: list[Address] = field(default_factory=list)
    turn_server: Address | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    relay_only: bool = False
    """Offer only relayed candidates (hide our addresses; aioice's TransportPolicy.RELAY)."""
    ice_lite: bool = False
    """Be an ICE-lite agent (RFC 8445 section 2.5): host candidates only, answer checks, never
    control; what a server on a public address runs."""
    transport: str = "UDP"
    """SIP transport for our requests: UDP or TCP (we accept both)."""
    external_address: Address | None = None
    """Our SIP address as seen from outside a NAT (Asterisk's ``externaddr``), for Contact."""
    debug: bool = False
    as_json: bool = False


@dataclass(frozen=True)
class IceSetup:
    """The ICE agent's configuration for a call, worked out by the shell from the options
    (it resolves names: STUN and TURN servers from rtp.conf, the interface addresses).

    ``addresses`` are the IPs to gather host candidates on; ``port_range`` the ports to bind
    (rtp.conf's rtpstart/rtpend), or None for any.
    """

    config: AgentConfig
    turn_servers: tuple[TurnServer, ...] = ()
    addresses: tuple[str, ...] = ("127.0.0.1",)
    port_range: tuple[int, int] | None = None


@dataclass
class PhoneResult:
    """How the call went: what ``icerelay phone`` prints and returns."""

    established: bool = False
    end_reason: str = ""
    statistics: StreamStatistics | None = None
    ice_pair: str | None = None
    ice_state: str | None = None
    reinvites: int = 0
    recorded_samples: int = 0

    @property
    def media_both_ways(self) -> bool:
        s = self.statistics
        return bool(self.established and s and s.packets_sent > 0 and s.packets_received > 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "established": self.established,
            "end_reason": self.end_reason,
            "media_both_ways": self.media_both_ways,
            "ice_pair": self.ice_pair,
            "ice_state": self.ice_state,
            "reinvites": self.reinvites,
            "recorded_samples": self.recorded_samples,
            "statistics": self.statistics.to_dict() if self.statistics else None,
        }
