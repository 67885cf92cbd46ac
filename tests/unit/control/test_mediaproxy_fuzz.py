"""The MediaProxy command parser raises only ControlError (issue 10's fuzz corpus)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from icerelay.control.mediaproxy import parse_command
from icerelay.errors import ControlError

HUGE = "9" * 5000


def update(media: str) -> bytes:
    return (
        "update\r\ntype: request\r\ncall_id: c1\r\nfrom_tag: f1\r\n"
        f"media: {media}\r\n"
    ).encode()


@given(st.one_of(st.text(alphabet="0123456789²³٣\uff10-+_", max_size=8), st.just(HUGE)))
@example(HUGE)
@example("50³0")
@example("٣")
def test_media_port(port: str) -> None:
    try:
        command = parse_command(update(f"audio:192.0.2.1:{port}:sendrecv"))
    except ControlError:
        return
    assert command.streams[0].port == int(port)  # type: ignore[union-attr]
    assert port.isascii()


@given(st.text(max_size=200))
def test_media_header_any_text(media: str) -> None:
    with contextlib.suppress(ControlError):
        parse_command(update(media.replace("\r", " ").replace("\n", " ")))


@given(st.binary(max_size=300))
def test_any_bytes(data: bytes) -> None:
    with contextlib.suppress(ControlError):
        parse_command(data)


def test_huge_port_is_a_control_error() -> None:
    with pytest.raises(ControlError, match="not a port number"):
        parse_command(update(f"audio:192.0.2.1:{HUGE}:sendrecv"))
