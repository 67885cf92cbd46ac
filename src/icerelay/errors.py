"""The one exception hierarchy of icerelay.

Everything icerelay raises on purpose derives from :class:`IcerelayError`; each package has its own
subclass so that a server can catch exactly "the peer sent garbage" (and count it) without hiding
programming errors.
"""


class IcerelayError(Exception):
    """Root of every error icerelay raises on purpose."""


class ConfigError(IcerelayError):
    """The configuration (file, environment, flags) is invalid."""


class StunError(IcerelayError):
    """A STUN message could not be decoded, or failed a check (integrity, fingerprint, ...)."""


class TransactionError(StunError):
    """A STUN transaction failed (timeout, error response)."""


class TurnError(IcerelayError):
    """A TURN operation failed or a TURN message broke the protocol."""


class SdpError(IcerelayError):
    """An SDP body could not be parsed or an ICE attribute in it is malformed."""


class IceError(IcerelayError):
    """The ICE agent was used wrongly or received something it cannot accept."""


class RelayError(IcerelayError):
    """The media relay could not carry out a request."""


class ControlError(IcerelayError):
    """A control-protocol request (ng, mediaproxy) is malformed."""
