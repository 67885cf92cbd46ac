"""The published STUN test vectors, typed in from RFC 5769 §2.1-2.4 and RFC 8489 Appendix B.1
(as corrected by verified erratum 6268)."""

SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"

# RFC 5769 §2.1 Sample Request
SAMPLE_REQUEST = bytes.fromhex(
    "00010058"  # Request type and message length
    "2112a442"  # Magic cookie
    "b7e7a701bc34d686fa87dfae"  # Transaction ID
    "80220010"  # SOFTWARE attribute header
    "5354554e207465737420636c69656e74"  # "STUN test client"
    "00240004"  # PRIORITY attribute header
    "6e0001ff"
    "80290008"  # ICE-CONTROLLED attribute header
    "932ff9b151263b36"
    "00060009"  # USERNAME attribute header
    "6576746a3a68367659202020"  # "evtj:h6vY" and padding (spaces)
    "00080014"  # MESSAGE-INTEGRITY attribute header
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004"  # FINGERPRINT attribute header
    "e57a3bcf"
)

# RFC 5769 §2.2 Sample IPv4 Response
SAMPLE_IPV4_RESPONSE = bytes.fromhex(
    "0101003c"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "8022000b"  # SOFTWARE
    "7465737420766563746f7220"  # "test vector" and a space of padding
    "00200008"  # XOR-MAPPED-ADDRESS
    "0001a147e112a643"  # IPv4, port 32853, 192.0.2.1
    "00080014"
    "2b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004"
    "c07d4c96"
)

# RFC 5769 §2.3 Sample IPv6 Response
SAMPLE_IPV6_RESPONSE = bytes.fromhex(
    "01010048"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "8022000b"
    "7465737420766563746f7220"
    "00200014"  # XOR-MAPPED-ADDRESS
    "0002a147"  # IPv6, port 32853
    "0113a9faa5d3f179bc25f4b5bed2b9d9"  # 2001:db8:1234:5678:11:2233:4455:6677
    "00080014"
    "a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004"
    "c8fb0b4c"
)

# RFC 5769 §2.4 Sample Request with Long-Term Authentication
LONG_TERM_REQUEST = bytes.fromhex(
    "00010060"
    "2112a442"
    "78ad3433c6ad72c029da412e"
    "00060012"  # USERNAME: U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9, 2 bytes padding
    "e3839ee38388e383aae38383e382afe382b90000"
    "0015001c"  # NONCE
    "662f2f3439396b39353464364f4c33346f4c39465354767936347341"  # "f//499k954d6OL34oL9FSTvy64sA"
    "0014000b"  # REALM
    "6578616d706c652e6f726700"
    "00080014"
    "f67024656dd64a3e02b8e0712e85c9a28ca89666"
)

# RFC 8489 Appendix B.1 (erratum 6268): USERHASH, nonce cookie, PASSWORD-ALGORITHM SHA-256,
# MESSAGE-INTEGRITY-SHA256.
SHA256_REQUEST = bytes.fromhex(
    "00010090"
    "2112a442"
    "78ad3433c6ad72c029da412e"
    "001e0020"  # USERHASH
    "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
    "00150029"  # NONCE "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA" and 3 bytes padding
    "6f624d61744a6f733241414143662f2f3439396b39353464364f4c33346f4c39"
    "465354767936347341000000"
    "0014000b"  # REALM
    "6578616d706c652e6f726700"
    "001d0004"  # PASSWORD-ALGORITHM: SHA-256, no parameters
    "00020000"
    "001c0020"  # MESSAGE-INTEGRITY-SHA256
    "b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278cc6518e65"
)

USERNAME_MATRIX = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
# RFC 5769 §2.4: the password before SASLprep.
PASSWORD_MATRIX = "The\u00adM\u00aatr\u2168"
