"""SDP for ICE and media relaying: a lossless parser and serializer (RFC 8866) with typed access
to the fields icerelay needs: origin, connection, media, direction, rtpmap/fmtp, ``a=rtcp``
(RFC 3605), ``a=rtcp-mux`` (RFC 5761) and the ICE attributes of RFC 8839 / RFC 5245 §15.

An SDP that is not changed serializes byte for byte as it came (line endings, trailing blanks,
unknown lines, order); a change re-renders only the lines it touches::

    sdp = SessionDescription.parse(body)
    audio = sdp.media[0]
    audio.candidates()                      # [Candidate(...), ...]
    audio.set_connection("203.0.113.7")     # rewrites (or adds) only this media's c= line
    audio.set_port(40000)
    body = sdp.to_bytes()

Malformed input raises only :class:`icerelay.errors.SdpError`, with the line number and reason.

Lenient where real phones are sloppy and the meaning stays clear: LF or CRLF (mixed), no final
line ending, trailing blanks, blank lines, unknown line types and attributes, several blanks
between fields, ``o=``/``s=``/``t=`` missing, ``m=`` without formats, ICE credentials outside the
RFC 8839 length/charset rules (but never a ``:`` in the ufrag). Strict where the meaning would be
ambiguous: a bare CR, a line not shaped ``<letter>=``, a second ``v=``/``o=``/``c=`` at one level, a
second ``ice-ufrag``/``ice-pwd``/``ice-pacing``/``rtcp`` or direction attribute at one level, and
any malformed value of ``o=``, ``c=``, ``m=``, ``a=candidate``, ``a=remote-candidates``,
``a=rtcp``, ``a=ice-options`` or ``a=ice-pacing``. Other attributes (``rtpmap``, ``fmtp``...) are
checked only when read, so a peer's odd attribute that icerelay never needs cannot fail a call.
"""

from icerelay.errors import SdpError
from icerelay.sdp.attributes import STATIC_PAYLOAD_TYPES, Attribute, Direction, Rtcp, RtpMap
from icerelay.sdp.candidate import CANDIDATE_TYPES, TCP_TYPES, Candidate
from icerelay.sdp.fields import Connection, MediaLine, Origin
from icerelay.sdp.ice import ICE_ATTRIBUTES, IceCredentials, RemoteCandidate
from icerelay.sdp.lines import Line
from icerelay.sdp.media import MediaDescription
from icerelay.sdp.session import SessionDescription, parse

__all__ = [
    "CANDIDATE_TYPES",
    "ICE_ATTRIBUTES",
    "STATIC_PAYLOAD_TYPES",
    "TCP_TYPES",
    "Attribute",
    "Candidate",
    "Connection",
    "Direction",
    "IceCredentials",
    "Line",
    "MediaDescription",
    "MediaLine",
    "Origin",
    "RemoteCandidate",
    "Rtcp",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "parse",
]
