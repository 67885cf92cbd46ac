"""The endpoint's error: malformed RTP/RTCP/telephone-event/WAV input."""

from icerelay.errors import IcerelayError


class RtpError(IcerelayError):
    """An RTP or RTCP packet, a telephone-event payload or a WAV file is malformed or unusable."""
