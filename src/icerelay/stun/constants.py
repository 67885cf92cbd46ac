"""Numbers from the STUN registries (RFC 8489, RFC 8656, RFC 8445, RFC 5780, RFC 6062, RFC 3489).

The names are the RFCs' own, with ``-`` turned into ``_``.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

#: Fixed value in every RFC 5389/8489 header; tells STUN from RFC 3489 and from other protocols.
MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
#: FINGERPRINT is CRC-32 XORed with this ("STUN" in ASCII) so that it differs from other
#: protocols' CRC-32 over the same bytes (RFC 8489 §14.7).
FINGERPRINT_XOR = 0x5354554E

HEADER_LENGTH = 20
TRANSACTION_ID_LENGTH = 12

#: RFC 8489 §14.3/§14.9/§14.8: upper bounds on some variable-length values (in bytes).
MAX_USERNAME_LENGTH = 512
MAX_REALM_LENGTH = 763
MAX_NONCE_LENGTH = 763
MAX_SOFTWARE_LENGTH = 763
MAX_REASON_LENGTH = 763

#: RFC 8489 §9.2: the nonce cookie that announces the security features a server supports.
NONCE_COOKIE = "obMatJos2"


class MessageClass(IntEnum):
    """The two class bits (C1 C0) of the message type (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS_RESPONSE = 0b10
    ERROR_RESPONSE = 0b11


class Method(IntEnum):
    """STUN methods (the IANA "STUN Methods" registry)."""

    BINDING = 0x001
    #: RFC 3489 only; reserved since RFC 5389.
    SHARED_SECRET = 0x002
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    #: RFC 6062 (TURN over TCP to TCP peers).
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class AttributeType(IntEnum):
    """STUN attribute types (the IANA "STUN Attributes" registry), those this project uses.

    Types below 0x8000 are comprehension-required: an agent that does not know one must fail
    the request with 420 (Unknown Attribute).
    """

    # RFC 8489
    MAPPED_ADDRESS = 0x0001
    #: RFC 3489 only (deprecated).
    RESPONSE_ADDRESS = 0x0002
    #: RFC 3489; RFC 5780 reuses the number for CHANGE-REQUEST.
    CHANGE_REQUEST = 0x0003
    #: RFC 3489 only (deprecated).
    SOURCE_ADDRESS = 0x0004
    #: RFC 3489 only (deprecated; RFC 5780 has OTHER-ADDRESS).
    CHANGED_ADDRESS = 0x0005
    USERNAME = 0x0006
    #: RFC 3489 only (deprecated).
    PASSWORD = 0x0007
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    #: RFC 3489 only (deprecated).
    REFLECTED_FROM = 0x000B
    # RFC 8656 (TURN)
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    # RFC 8489
    REALM = 0x0014
    NONCE = 0x0015
    # RFC 8656
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    # RFC 8489
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    # RFC 8656
    RESERVATION_TOKEN = 0x0022
    # RFC 8445 (ICE)
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    # RFC 5780
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    # RFC 6062
    CONNECTION_ID = 0x002A
    # comprehension-optional range
    # RFC 8656
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    # RFC 8489
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    # RFC 8656
    ICMP = 0x8004
    # RFC 8489
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    # RFC 5780
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C
    # RFC 8489
    FINGERPRINT = 0x8028
    # RFC 8445
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A

    @property
    def comprehension_required(self) -> bool:
        """True for types 0x0000-0x7FFF, which an agent must understand (RFC 8489 §14)."""
        return self.value < 0x8000


class PasswordAlgorithm(IntEnum):
    """The IANA "STUN Password Algorithms" registry (RFC 8489 §18.5)."""

    MD5 = 0x0001
    SHA256 = 0x0002


class SecurityFeature(IntFlag):
    """The IANA "STUN Security Features" registry (RFC 8489 §18.1).

    The features travel as 24 bits in the nonce cookie; bit 0 is the most significant bit of
    those 24 (network order, as every STUN field).
    """

    PASSWORD_ALGORITHMS = 1 << 23
    USERNAME_ANONYMITY = 1 << 22


class ChangeRequest(IntFlag):
    """Flags of CHANGE-REQUEST (RFC 5780 §7.2)."""

    CHANGE_PORT = 0x02
    CHANGE_IP = 0x04


class AddressFamily(IntEnum):
    """Address family numbers in address attributes (RFC 8489 §14.1) and in
    REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.10)."""

    IPV4 = 0x01
    IPV6 = 0x02


#: Protocol numbers for REQUESTED-TRANSPORT (RFC 8656 §18.11, RFC 6062).
TRANSPORT_UDP = 17
TRANSPORT_TCP = 6


class ErrorCodeNumber(IntEnum):
    """Error codes used by STUN, TURN and ICE (RFC 8489 §14.8, RFC 8656 §19, RFC 8445 §7.3.1.1)."""

    TRY_ALTERNATE = 300
    BAD_REQUEST = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    MOBILITY_FORBIDDEN = 405
    UNKNOWN_ATTRIBUTE = 420
    ALLOCATION_MISMATCH = 437
    STALE_NONCE = 438
    ADDRESS_FAMILY_NOT_SUPPORTED = 440
    WRONG_CREDENTIALS = 441
    UNSUPPORTED_TRANSPORT_PROTOCOL = 442
    PEER_ADDRESS_FAMILY_MISMATCH = 443
    CONNECTION_ALREADY_EXISTS = 446
    CONNECTION_TIMEOUT_OR_FAILURE = 447
    ALLOCATION_QUOTA_REACHED = 486
    ROLE_CONFLICT = 487
    SERVER_ERROR = 500
    INSUFFICIENT_CAPACITY = 508


#: The recommended reason phrases (RFC 8489 §14.8, RFC 8656 §19).
REASON_PHRASES: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    405: "Mobility Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    508: "Insufficient Capacity",
}
