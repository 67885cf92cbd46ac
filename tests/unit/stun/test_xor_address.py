"""XOR addresses are encoded as RFC 8489 §14.2 says, for any cookie and transaction id: the
IPv4 shortcut (on numbers) writes what the byte-wise definition gives."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icerelay.stun import AttributeType
from icerelay.stun.message import encode_attributes


def _by_the_rfc(host: str, port: int, cookie_and_id: bytes) -> bytes:
    packed = socket.inet_pton(socket.AF_INET, host)
    xport = port ^ int.from_bytes(cookie_and_id[:2], "big")
    xaddress = bytes(a ^ b for a, b in zip(packed, cookie_and_id[:4], strict=True))
    return struct.pack("!HHBBH", AttributeType.XOR_MAPPED_ADDRESS, 8, 0, 1, xport) + xaddress


@given(
    st.ip_addresses(v=4).map(str),
    st.integers(0, 0xFFFF),
    st.binary(min_size=16, max_size=16),
)
def test_ipv4_as_the_rfc_defines_it(host: str, port: int, cookie_and_id: bytes) -> None:
    encoded = encode_attributes([(AttributeType.XOR_MAPPED_ADDRESS, (host, port))], cookie_and_id)
    assert encoded == _by_the_rfc(host, port, cookie_and_id)


@pytest.mark.parametrize("host", ["01.2.3.4", "256.1.1.1", "1.2.3", "1.2.3.4.5", " 1.2.3.4", ""])
def test_text_that_is_no_ipv4_address_is_refused(host: str) -> None:
    with pytest.raises(ValueError):
        encode_attributes([(AttributeType.XOR_MAPPED_ADDRESS, (host, 1))], bytes(16))


def test_a_port_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_attributes([(AttributeType.XOR_MAPPED_ADDRESS, ("192.0.2.1", 65536))], bytes(16))
