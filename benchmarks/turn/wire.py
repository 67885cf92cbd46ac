"""The few TURN messages the load generator needs, encoded by hand.

The benchmark deliberately does not use icerelay's own STUN codec or TURN client: the client
side of a benchmark must be an independent implementation (a bug shared by our client and our
server would otherwise pass unnoticed, and coturn checks this one), and it must be cheap, so
that the allocation-rate figure measures the server rather than the Python that drives it.
Only what an Allocate / ChannelBind exchange needs is here; no FINGERPRINT (optional in TURN).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)

ALLOCATE_REQUEST = 0x0003
ALLOCATE_SUCCESS = 0x0103
ALLOCATE_ERROR = 0x0113
CHANNEL_BIND_REQUEST = 0x0009
CHANNEL_BIND_SUCCESS = 0x0109
CHANNEL_BIND_ERROR = 0x0119

ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_ERROR_CODE = 0x0009
ATTR_CHANNEL_NUMBER = 0x000C
ATTR_LIFETIME = 0x000D
ATTR_XOR_PEER_ADDRESS = 0x0012
ATTR_REALM = 0x0014
ATTR_NONCE = 0x0015
ATTR_XOR_RELAYED_ADDRESS = 0x0016
ATTR_REQUESTED_TRANSPORT = 0x0019

UDP_PROTOCOL = 17


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 section 9.2.2 key: MD5(username ":" realm ":" password)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def _attribute(kind: int, value: bytes) -> bytes:
    padding = b"\x00" * (-len(value) % 4)
    return struct.pack("!HH", kind, len(value)) + value + padding


def _xor_address_v4(host: str, port: int) -> bytes:
    packed = socket.inet_aton(host)
    xport = port ^ (MAGIC_COOKIE >> 16)
    xaddr = bytes(a ^ b for a, b in zip(packed, _COOKIE_BYTES, strict=True))
    return struct.pack("!BBH", 0, 1, xport) + xaddr


def encode(
    kind: int,
    transaction_id: bytes,
    attributes: list[tuple[int, bytes]],
    key: bytes | None = None,
) -> bytes:
    """A STUN message; with ``key``, MESSAGE-INTEGRITY (HMAC-SHA1) is appended last."""
    body = b"".join(_attribute(k, v) for k, v in attributes)
    if key is None:
        return struct.pack("!HHI", kind, len(body), MAGIC_COOKIE) + transaction_id + body
    # The HMAC covers the header with a length that already counts MESSAGE-INTEGRITY (24 bytes).
    header = struct.pack("!HHI", kind, len(body) + 24, MAGIC_COOKIE) + transaction_id
    mac = hmac.new(key, header + body, hashlib.sha1).digest()
    return header + body + _attribute(ATTR_MESSAGE_INTEGRITY, mac)


def new_transaction_id() -> bytes:
    return os.urandom(12)


def allocate_request(
    transaction_id: bytes,
    username: str | None = None,
    realm: str | None = None,
    nonce: str | None = None,
    key: bytes | None = None,
) -> bytes:
    """Allocate for a UDP relay; without credentials it is the first, 401-provoking try."""
    attributes = [(ATTR_REQUESTED_TRANSPORT, bytes([UDP_PROTOCOL, 0, 0, 0]))]
    if username is not None and realm is not None and nonce is not None:
        attributes += [
            (ATTR_USERNAME, username.encode()),
            (ATTR_REALM, realm.encode()),
            (ATTR_NONCE, nonce.encode()),
        ]
    return encode(ALLOCATE_REQUEST, transaction_id, attributes, key)


def channel_bind_request(
    transaction_id: bytes,
    channel: int,
    peer_host: str,
    peer_port: int,
    username: str,
    realm: str,
    nonce: str,
    key: bytes,
) -> bytes:
    attributes = [
        (ATTR_CHANNEL_NUMBER, struct.pack("!HH", channel, 0)),
        (ATTR_XOR_PEER_ADDRESS, _xor_address_v4(peer_host, peer_port)),
        (ATTR_USERNAME, username.encode()),
        (ATTR_REALM, realm.encode()),
        (ATTR_NONCE, nonce.encode()),
    ]
    return encode(CHANNEL_BIND_REQUEST, transaction_id, attributes, key)


@dataclass(frozen=True)
class Response:
    """What the generator reads from a response: the rest is the server's business."""

    kind: int
    transaction_id: bytes
    error_code: int | None
    realm: str | None
    nonce: str | None
    relayed_port: int | None


def decode(data: bytes) -> Response | None:
    """Parse a response just enough; None for anything that is not a STUN message."""
    if len(data) < 20 or data[0] & 0xC0:
        return None
    kind, length, cookie = struct.unpack_from("!HHI", data)
    if cookie != MAGIC_COOKIE or 20 + length > len(data):
        return None
    error_code = realm = nonce = None
    relayed_port = None
    offset = 20
    end = 20 + length
    while offset + 4 <= end:
        attr, size = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4 : offset + 4 + size]
        if attr == ATTR_ERROR_CODE and size >= 4:
            error_code = (value[2] & 0x7) * 100 + value[3]
        elif attr == ATTR_REALM:
            realm = value.decode(errors="replace")
        elif attr == ATTR_NONCE:
            nonce = value.decode(errors="replace")
        elif attr == ATTR_XOR_RELAYED_ADDRESS and size >= 8 and value[1] == 1:
            relayed_port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
        offset += 4 + size + (-size % 4)
    return Response(kind, data[8:20], error_code, realm, nonce, relayed_port)
