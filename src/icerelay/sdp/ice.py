"""The ICE attributes of RFC 8839 §5 other than ``candidate`` (see :mod:`icerelay.sdp.candidate`).

``ice-ufrag``, ``ice-pwd``, ``ice-options``, ``ice-pacing`` and ``ice-lite`` may appear at session
level; all but ``ice-lite`` also at media level, where they override the session-level value.
``ice-mismatch``, ``remote-candidates`` and ``candidate`` are media-level only;
``end-of-candidates`` (RFC 8840) may be at either level.

Credentials are read leniently (any non-empty run of visible characters, as long as the ufrag
has no ``:``, which would make the STUN USERNAME ``ufrag:ufrag`` ambiguous) because deployed SIP
phones do not all follow the 4..256 / 22..256 ice-char rules; credentials we write are checked
against them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from icerelay.errors import SdpError
from icerelay.sdp.grammar import (
    check_connection_address,
    check_field,
    check_ice_chars,
    check_token,
    parse_port,
    parse_uint,
    split_fields,
)

ICE_UFRAG = "ice-ufrag"
ICE_PWD = "ice-pwd"
ICE_OPTIONS = "ice-options"
ICE_LITE = "ice-lite"
ICE_MISMATCH = "ice-mismatch"
ICE_PACING = "ice-pacing"
CANDIDATE = "candidate"
REMOTE_CANDIDATES = "remote-candidates"
END_OF_CANDIDATES = "end-of-candidates"

# Every attribute "remove all ICE lines" removes, at either level.
ICE_ATTRIBUTES = frozenset({ICE_UFRAG, ICE_PWD, ICE_OPTIONS, ICE_LITE, ICE_MISMATCH, ICE_PACING,
                            CANDIDATE, REMOTE_CANDIDATES, END_OF_CANDIDATES})


@dataclass(frozen=True, slots=True)
class IceCredentials:
    """The username fragment and password of one ICE session (``a=ice-ufrag`` / ``a=ice-pwd``)."""

    ufrag: str
    pwd: str

    def check(self) -> IceCredentials:
        """Return self if both values follow RFC 8839 (4..256 and 22..256 ice-chars), else raise."""
        check_ice_chars(self.ufrag, "ice-ufrag", 4, 256)
        check_ice_chars(self.pwd, "ice-pwd", 22, 256)
        return self


def parse_ufrag(value: str | None) -> str:
    """Validate the value of ``a=ice-ufrag`` as read from a peer (see the module docstring)."""
    text = _single_field(value, ICE_UFRAG)
    if ":" in text:
        raise SdpError(f"ice-ufrag must not contain ':', got {text!r}")
    return text


def parse_pwd(value: str | None) -> str:
    """Validate the value of ``a=ice-pwd`` as read from a peer."""
    return _single_field(value, ICE_PWD)


def _single_field(value: str | None, name: str) -> str:
    fields = split_fields(value or "")
    if len(fields) != 1:
        raise SdpError(f"{name} needs exactly one value, got {len(fields)}")
    return check_field(fields[0], name)


def parse_ice_options(value: str | None) -> tuple[str, ...]:
    """The tokens of ``a=ice-options`` (e.g. ``("trickle", "ice2")``)."""
    tokens = split_fields(value or "")
    if not tokens:
        raise SdpError("ice-options needs at least one option tag")
    return tuple(check_token(token, "ice-options tag") for token in tokens)


def parse_ice_pacing(value: str | None) -> int:
    """The value of ``a=ice-pacing`` in milliseconds (RFC 8839 §5.5)."""
    fields = split_fields(value or "")
    if len(fields) != 1:
        raise SdpError(f"ice-pacing needs exactly one value, got {len(fields)}")
    return parse_uint(fields[0], "ice-pacing", 9_999_999_999)


@dataclass(frozen=True, slots=True)
class RemoteCandidate:
    """One ``<component-id> <connection-address> <port>`` triple of ``a=remote-candidates``."""

    component: int
    address: str
    port: int


def parse_remote_candidates(value: str | None) -> tuple[RemoteCandidate, ...]:
    """Parse the value of ``a=remote-candidates`` (RFC 8839 §5.2)."""
    fields = split_fields(value or "")
    if not fields or len(fields) % 3:
        raise SdpError("remote-candidates needs one or more 'component address port' triples, "
                       f"got {len(fields)} fields")
    return tuple(
        RemoteCandidate(
            parse_uint(fields[index], "remote-candidates component-id", 256, 1),
            check_connection_address(fields[index + 1], "remote-candidates address"),
            parse_port(fields[index + 2], "remote-candidates port"),
        )
        for index in range(0, len(fields), 3)
    )


def format_remote_candidates(candidates: Sequence[RemoteCandidate]) -> str:
    """The value of ``a=remote-candidates`` for the given triples."""
    if not candidates:
        raise SdpError("remote-candidates needs at least one candidate")
    parts: list[str] = []
    for candidate in candidates:
        if not 1 <= candidate.component <= 256:
            raise SdpError(f"remote-candidates component-id {candidate.component} is out of range")
        if not 0 <= candidate.port <= 65535:
            raise SdpError(f"remote-candidates port {candidate.port} is out of range")
        check_connection_address(candidate.address, "remote-candidates address")
        parts += [str(candidate.component), candidate.address, str(candidate.port)]
    return " ".join(parts)
