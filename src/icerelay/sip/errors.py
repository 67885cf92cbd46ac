"""The SIP package's error."""

from icerelay.errors import IcerelayError


class SipError(IcerelayError):
    """A SIP message, URI or header is malformed, or the user agent was used wrongly."""
