"""The MediaProxy command parser raises only ControlError (issue 10's fuzz corpus)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from icerelay.control.mediaproxy import MediaproxyFramer, parse_command
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


LINES = st.text(alphabet="abc: _1\r", min_size=1, max_size=12).filter(lambda t: t.strip())


@given(
    st.lists(st.lists(LINES, min_size=1, max_size=4), min_size=1, max_size=5),
    st.booleans(),
    st.integers(1, 30),
)
def test_framer_commands_come_out_whole_however_split(
    commands: list[list[str]], crlf: bool, chunk: int
) -> None:
    newline = "\r\n" if crlf else "\n"
    texts = [newline.join(line.strip("\r") or "x" for line in lines) for lines in commands]
    stream = "".join(text + newline + newline for text in texts).encode()
    framer = MediaproxyFramer()
    got: list[bytes] = []
    for index in range(0, len(stream), chunk):
        got.extend(framer.feed(stream[index : index + chunk]))
    assert [command.decode() for command in got] == [t for t in texts if t.strip()]


@given(st.binary(max_size=400), st.integers(1, 50))
def test_framer_takes_any_bytes(data: bytes, chunk: int) -> None:
    framer = MediaproxyFramer()
    for index in range(0, len(data), chunk):
        for command in framer.feed(data[index : index + chunk]):
            assert command.strip()
