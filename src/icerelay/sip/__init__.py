"""icerelay.sip: a small SIP user agent (RFC 3261), sans I/O.

- :mod:`.message`: messages, URIs, name-addr, Via (lenient parser, strict serializer);
- :mod:`.transaction`: the four transaction state machines with their timers (RFC 3261 section
  17, RFC 6026);
- :mod:`.dialog`: dialogs, route sets and in-dialog requests (section 12);
- :mod:`.auth`: Digest authentication (401/407, MD5, qop=auth);
- :mod:`.useragent`: :class:`UserAgent`, calls with SDP offer/answer, CANCEL, BYE, OPTIONS,
  re-INVITE, ``rport`` (RFC 3581), UDP and TCP;
- :mod:`.sipconf`: Asterisk chan_sip's sip.conf (per-peer ``icesupport``, named peers).
"""

from icerelay.sip.errors import SipError
from icerelay.sip.message import NameAddress, SipRequest, SipResponse, SipUri, Via, parse_message
from icerelay.sip.useragent import (
    Call,
    CallAnswered,
    CallConfirmed,
    CallEnded,
    CallProgress,
    CallState,
    IncomingCall,
    OptionsAnswered,
    ReinviteAnswered,
    ReinviteFailed,
    ReinviteReceived,
    UserAgent,
)

__all__ = [
    "Call",
    "CallAnswered",
    "CallConfirmed",
    "CallEnded",
    "CallProgress",
    "CallState",
    "IncomingCall",
    "NameAddress",
    "OptionsAnswered",
    "ReinviteAnswered",
    "ReinviteFailed",
    "ReinviteReceived",
    "SipError",
    "SipRequest",
    "SipResponse",
    "SipUri",
    "UserAgent",
    "Via",
    "parse_message",
]
