"""The one exception hierarchy of icerelay.

Everything icerelay raises on purpose derives from :class:`IcerelayError`; each package has its own
subclass so that a server can catch exactly "the peer sent garbage" (and count it) without hiding
programming errors.
"""


class IcerelayError(Exception):
    """Root of every error icerelay raises on purpose.

    As h11's protocol errors do, an error says whose fault it is and what to answer:

    - :attr:`remote`: True when the peer (what arrived from the network) broke the protocol,
      False when the local caller did (a programming or configuration mistake).
    - :attr:`status`: the protocol status to answer with, when there is one (a STUN/TURN error
      code such as 400 or 437, an ng ``error-reason`` class), else None.
    - :attr:`counter`: the stable name of the drop or refusal counter to bump, else None.
    """

    def __init__(
        self,
        *args: object,
        status: int | None = None,
        counter: str | None = None,
        remote: bool = False,
    ) -> None:
        super().__init__(*args)
        self.status = status
        self.counter = counter
        self.remote = remote


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


class ProbeError(IcerelayError):
    """A NAT behaviour probe could not complete test I (no answer, or an error answer)."""
