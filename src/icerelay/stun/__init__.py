"""STUN wire format (RFC 8489, with RFC 5389 and RFC 3489 compatibility).

The public names most code needs are re-exported here; see the submodules for the rest:
:mod:`.constants` (registries), :mod:`.attributes` (typed values), :mod:`.message`
(encode/decode, integrity, fingerprint), :mod:`.credentials` (keys, OpaqueString, SASLprep),
:mod:`.nonce` (security feature nonce cookie), :mod:`.demux` (RFC 7983 demultiplexing),
:mod:`.channeldata` (TURN ChannelData), :mod:`.transaction` (retransmissions).
"""

from icerelay.errors import StunError, TransactionError
from icerelay.net import Address
from icerelay.stun.attributes import (
    AddressErrorCode,
    AttributeValue,
    ErrorCode,
    Icmp,
    PasswordAlgorithmEntry,
)
from icerelay.stun.constants import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE,
    AddressFamily,
    AttributeType,
    ChangeRequest,
    ErrorCodeNumber,
    MessageClass,
    Method,
    PasswordAlgorithm,
    SecurityFeature,
)
from icerelay.stun.message import Message, decode_message, is_stun, new_transaction_id

__all__ = [
    "FINGERPRINT_XOR",
    "HEADER_LENGTH",
    "MAGIC_COOKIE",
    "Address",
    "AddressErrorCode",
    "AddressFamily",
    "AttributeType",
    "AttributeValue",
    "ChangeRequest",
    "ErrorCode",
    "ErrorCodeNumber",
    "Icmp",
    "Message",
    "MessageClass",
    "Method",
    "PasswordAlgorithm",
    "PasswordAlgorithmEntry",
    "SecurityFeature",
    "StunError",
    "TransactionError",
    "decode_message",
    "is_stun",
    "new_transaction_id",
]
