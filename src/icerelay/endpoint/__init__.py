"""icerelay.endpoint: the media end of a call.

- :mod:`.rtp`: RTP and RTCP packets (RFC 3550);
- :mod:`.stats`: reception statistics (RFC 3550 appendix A: loss, jitter, report blocks);
- :mod:`.g711`: PCMU / PCMA;
- :mod:`.dtmf`: telephone-events (RFC 4733);
- :mod:`.audio`: tone and WAV sources, the recorder, level/frequency measurement;
- :mod:`.session`: :class:`RtpSession`, a sans-I/O RTP session that paces, reports and records;
- :mod:`.offer`: the audio SDP offer/answer (the Asterisk-shaped ICE offer, reading the peer's);
- :mod:`.phone`: the ``icerelay phone`` command (SIP user agent + RTP session, with or without ICE).
"""

from icerelay.endpoint.errors import RtpError
from icerelay.endpoint.session import PCMA, PCMU, Codec, Outgoing, RtpSession

__all__ = ["PCMA", "PCMU", "Codec", "Outgoing", "RtpError", "RtpSession"]
