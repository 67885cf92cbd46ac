"""The ng stream framer: messages come out whole however the stream is split, and hostile
bytes raise only ControlError (issue 10: the framer is linear and bounded)."""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from icerelay import bencode
from icerelay.control.ng import NgStreamFramer
from icerelay.errors import ControlError

TEXT = st.text(alphabet='ab{}[]"\\ :e0123456789\u00e9', max_size=20)
VALUES = st.recursive(
    st.one_of(TEXT, st.integers(-(10**9), 10**9)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def encode(value: object, as_json: bool) -> bytes:
    if as_json:
        return json.dumps(value).encode()
    return bencode.encode(_to_bencode(value))


def _to_bencode(value: object) -> bencode.BencodeValue:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_to_bencode(item) for item in value]
    if isinstance(value, dict):
        return {key.encode(): _to_bencode(item) for key, item in value.items()}
    assert isinstance(value, int)
    return value


@given(
    st.lists(
        st.tuples(st.dictionaries(TEXT, VALUES, max_size=4), st.booleans(), st.booleans()),
        min_size=1,
        max_size=5,
    ),
    st.integers(1, 50),
)
def test_messages_come_out_whole_however_split(
    items: list[tuple[dict[str, object], bool, bool]], chunk: int
) -> None:
    stream = b""
    expected = []
    for number, (body, as_json, prefixed) in enumerate(items):
        message = b"c%d %s" % (number, encode(body, as_json))
        expected.append((message, prefixed))
        stream += NgStreamFramer.frame(message, prefixed) + b"\r\n"
    framer = NgStreamFramer()
    got = []
    for index in range(0, len(stream), chunk):
        got.extend(framer.feed(stream[index : index + chunk]))
    assert got == expected
    assert framer.buffered == 0


@given(st.binary(max_size=300), st.integers(1, 40))
@example(b"c i" + b"9" * 40 + b"e", 3)
@example(b"c 99999999999999999:x", 5)
@example(b'c {"a": "\\', 1)
def test_garbage_raises_only_control_error(data: bytes, chunk: int) -> None:
    framer = NgStreamFramer(max_message=200)
    try:
        for index in range(0, len(data), chunk):
            for message, _ in framer.feed(data[index : index + chunk]):
                assert len(message) <= 200 + 20
    except ControlError:
        return
    assert framer.buffered <= 200
