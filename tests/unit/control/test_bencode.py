"""Bencode: known encodings, strictness, and property-based round trips and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icerelay.bencode import (
    BencodeError,
    BencodeValue,
    IncompleteBencode,
    decode,
    decode_prefix,
    encode,
)
from icerelay.errors import ControlError


def test_known_encodings() -> None:
    assert encode(0) == b"i0e"
    assert encode(-42) == b"i-42e"
    assert encode(b"spam") == b"4:spam"
    assert encode("") == b"0:"
    assert encode("é") == b"2:\xc3\xa9"
    assert encode([1, "a", []]) == b"li1e1:alee"
    assert encode({"b": 1, "a": [b"x"]}) == b"d1:al1:xe1:bi1ee"


def test_an_ng_offer_decodes() -> None:
    data = (
        b"d7:command5:offer7:call-id5:abc@h8:from-tag2:ft3:sdp8:v=0\r\nm=x"
        b"5:flagsl13:trust-addresse7:replacel6:origine3:ICE6:removee"
    )
    value = decode(data)
    assert value == {
        b"command": b"offer",
        b"call-id": b"abc@h",
        b"from-tag": b"ft",
        b"sdp": b"v=0\r\nm=x",
        b"flags": [b"trust-address"],
        b"replace": [b"origin"],
        b"ICE": b"remove",
    }


def test_unsorted_keys_are_accepted_and_encoding_sorts_them() -> None:
    # Kamailio writes keys in insertion order; the decoder must not insist on BEP 3 order.
    value = decode(b"d1:bi1e1:ai2ee")
    assert value == {b"b": 1, b"a": 2}
    assert encode(value) == b"d1:ai2e1:bi1ee"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "ends"),
        (b"i01e", "canonical"),
        (b"i-0e", "canonical"),
        (b"ie", "not decimal"),
        (b"i1.5e", "not decimal"),
        (b"i--1e", "not decimal"),
        (b"i" + b"9" * 40 + b"e", "no 'e'"),
        (b"05:hello", "leading zero"),
        (b"5:hi", "claims 5 bytes"),
        (b"4:spamx", "trailing"),
        (b"x", "unexpected byte"),
        (b"di1ei2ee", "not a string"),
        (b"d1:ai1e1:ai2ee", "twice"),
        (b"l" * 100 + b"e" * 100, "nests deeper"),
        (b"li1e", "inside a list"),
        (b"d1:a", "ends at offset 4"),
        (b"9" * 30 + b":", "not followed by ':'"),
        (b"i99999999999999999999e", "64 bits"),
    ],
)
def test_malformed_input_names_the_problem(data: bytes, fragment: str) -> None:
    with pytest.raises(BencodeError, match=fragment):
        decode(data)


def test_bencode_error_is_a_control_error() -> None:
    with pytest.raises(ControlError):
        decode(b"?")


def test_incomplete_input_is_distinguishable() -> None:
    whole = encode({"command": "ping", "list": [1, 2, "three"]})
    for cut in range(len(whole)):
        with pytest.raises(IncompleteBencode):
            decode(whole[:cut])


def test_decode_prefix_reports_where_the_value_ends() -> None:
    value, end = decode_prefix(b"xxd1:ai1eeREST", 2)
    assert value == {b"a": 1}
    assert end == 10


def test_encoder_refuses_what_bencode_cannot_express() -> None:
    with pytest.raises(BencodeError, match="boolean"):
        encode(True)
    with pytest.raises(BencodeError, match="cannot bencode"):
        encode(1.5)  # type: ignore[arg-type]
    with pytest.raises(BencodeError, match="appears twice"):
        encode({"a": 1, b"a": 2})  # type: ignore[arg-type]
    with pytest.raises(BencodeError, match="64 bits"):
        encode(2**63)


values: st.SearchStrategy[BencodeValue] = st.recursive(
    st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.binary(max_size=10), children, max_size=6)
    ),
    max_leaves=30,
)


@given(values)
@settings(max_examples=200)
def test_round_trip(value: BencodeValue) -> None:
    data = encode(value)
    assert decode(data) == value
    # Canonical form: re-encoding the decoded value gives the same bytes.
    assert encode(decode(data)) == data


@given(st.binary(max_size=200))
@settings(max_examples=1000)
def test_fuzz_random_bytes_raise_only_bencode_error(data: bytes) -> None:
    try:
        value = decode(data)
    except BencodeError:
        return
    # Whatever decodes must re-encode to something that decodes to the same value.
    assert decode(encode(value)) == value


@given(values, st.data())
@settings(max_examples=200)
def test_fuzz_mutated_messages(value: BencodeValue, data: st.DataObject) -> None:
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(raw)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(st.sampled_from(b"ield:0123456789-x"))
        if op == "insert":
            raw.insert(index, byte)
        elif index < len(raw):
            if op == "flip":
                raw[index] = byte
            else:
                del raw[index]
    try:
        decoded = decode(bytes(raw))
    except BencodeError:
        return
    assert decode(encode(decoded)) == decoded


def _reference(data: bytes) -> BencodeValue:
    """The recursive decoder alone (what the fast loops must agree with)."""
    from icerelay.bencode import _Decoder

    value, end = _Decoder(data).value(0, 0)
    if end != len(data):
        raise BencodeError("trailing")
    return value


requests: st.SearchStrategy[BencodeValue] = st.dictionaries(
    st.binary(max_size=12),
    st.integers(-(2**63), 2**63 - 1)
    | st.binary(max_size=40)
    | st.lists(st.binary(max_size=12), max_size=4)
    | values,
    max_size=8,
)


@given(requests | values, st.data())
@settings(max_examples=500)
def test_fast_decoders_agree_with_the_recursive_one(
    value: BencodeValue, data: st.DataObject
) -> None:
    # The ng request shape (flat dictionaries of strings, integers and lists of strings) and
    # anything else, whole and mutated: the same value, or an error from both.
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(0, 3))):
        index = data.draw(st.integers(0, len(raw)))
        byte = data.draw(st.sampled_from(b"ield:0123456789-x"))
        if data.draw(st.booleans()) or index == len(raw):
            raw.insert(index, byte)
        else:
            raw[index] = byte
    try:
        expected = _reference(bytes(raw))
    except BencodeError:
        with pytest.raises(BencodeError):
            decode(bytes(raw))
        return
    assert decode(bytes(raw)) == expected


_text = st.text(max_size=8)
text_values: st.SearchStrategy[object] = st.recursive(
    st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=20) | _text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=6)
    ),
    max_leaves=30,
)


def _bytes_keys(value: object) -> object:
    """``value`` with every text key and string as UTF-8 bytes (the general encoder's path)."""
    if isinstance(value, dict):
        return {key.encode(): _bytes_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_bytes_keys(item) for item in value]
    if isinstance(value, str):
        return value.encode()
    return value


@given(st.dictionaries(_text, text_values, max_size=8))
@settings(max_examples=500)
def test_text_keyed_replies_encode_as_their_bytes_would(value: dict[str, object]) -> None:
    # Replies take the text-key fast path (keys sorted as text, common items inline); the
    # general path sorts the UTF-8 bytes: the two must write the same bytes.
    assert encode(value) == encode(_bytes_keys(value))  # type: ignore[arg-type]


def test_the_text_key_path_still_refuses_what_bencode_cannot_express() -> None:
    with pytest.raises(BencodeError, match="boolean"):
        encode({"a": {"b": True}})
    with pytest.raises(BencodeError, match="64 bits"):
        encode({"a": 2**63})
    with pytest.raises(BencodeError, match="deeper"):
        nested: dict[str, object] = {}
        for _ in range(200):
            nested = {"a": nested}
        encode(nested)  # type: ignore[arg-type]
