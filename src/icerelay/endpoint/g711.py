"""G.711 companding (ITU-T G.711): PCMU (mu-law, payload type 0) and PCMA (A-law, type 8).

Written from the algorithm in the Recommendation, not from any library: the stdlib ``audioop``
module is gone in Python 3.13. Samples are signed 16-bit linear PCM; mu-law looks at the top 14
bits and A-law at the top 13, so both encoders are a table lookup on the shifted sample, built
once at import (16384 + 8192 entries, a few hundred microseconds).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

_SEGMENT_ENDS_MU = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEGMENT_ENDS_A = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
_MU_BIAS = 0x21  # 33 in 14-bit units: makes the segments start at powers of two
_MU_CLIP = 8159


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for index, end in enumerate(ends):
        if value <= end:
            return index
    return len(ends)


def _mu_encode14(pcm: int) -> int:
    """Encode a signed 14-bit sample to a mu-law byte."""
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, _MU_CLIP) + _MU_BIAS
    segment = _segment(pcm, _SEGMENT_ENDS_MU)
    if segment >= 8:  # clipped: the loudest code of that sign
        return 0x7F ^ mask
    return ((segment << 4) | ((pcm >> (segment + 1)) & 0x0F)) ^ mask


def _mu_decode(code: int) -> int:
    code = ~code & 0xFF
    magnitude = ((((code & 0x0F) << 3) + 0x84) << ((code >> 4) & 0x07)) - 0x84
    return -magnitude if code & 0x80 else magnitude


def _a_encode13(pcm: int) -> int:
    """Encode a signed 13-bit sample to an A-law byte (even bits inverted, G.711 table 1)."""
    if pcm >= 0:
        mask = 0xD5
    else:
        mask, pcm = 0x55, -pcm - 1
    segment = _segment(pcm, _SEGMENT_ENDS_A)
    if segment >= 8:
        return 0x7F ^ mask
    shift = 1 if segment < 2 else segment
    return ((segment << 4) | ((pcm >> shift) & 0x0F)) ^ mask


def _a_decode(code: int) -> int:
    code ^= 0x55
    magnitude = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    elif segment == 1:
        magnitude += 0x108
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if code & 0x80 else -magnitude


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


_MU_ENCODE = bytes(_mu_encode14(_signed(i, 14)) for i in range(1 << 14))
_A_ENCODE = bytes(_a_encode13(_signed(i, 13)) for i in range(1 << 13))
MULAW_TO_LINEAR: tuple[int, ...] = tuple(_mu_decode(code) for code in range(256))
"""The 256 mu-law codes as 16-bit linear samples."""
ALAW_TO_LINEAR: tuple[int, ...] = tuple(_a_decode(code) for code in range(256))
"""The 256 A-law codes as 16-bit linear samples."""


def linear_to_ulaw(sample: int) -> int:
    """One signed 16-bit sample to its mu-law code (0 -> 0xFF)."""
    return _MU_ENCODE[(sample >> 2) & 0x3FFF]


def linear_to_alaw(sample: int) -> int:
    """One signed 16-bit sample to its A-law code (0 -> 0xD5)."""
    return _A_ENCODE[(sample >> 3) & 0x1FFF]


def ulaw_to_linear(code: int) -> int:
    """One mu-law code to a signed 16-bit sample."""
    return MULAW_TO_LINEAR[code & 0xFF]


def alaw_to_linear(code: int) -> int:
    """One A-law code to a signed 16-bit sample."""
    return ALAW_TO_LINEAR[code & 0xFF]


def encode_ulaw(samples: Iterable[int]) -> bytes:
    """Signed 16-bit samples to a PCMU payload, one byte per sample."""
    table = _MU_ENCODE
    return bytes([table[(s >> 2) & 0x3FFF] for s in samples])


def encode_alaw(samples: Iterable[int]) -> bytes:
    """Signed 16-bit samples to a PCMA payload, one byte per sample."""
    table = _A_ENCODE
    return bytes([table[(s >> 3) & 0x1FFF] for s in samples])


def decode_ulaw(payload: bytes) -> array[int]:
    """A PCMU payload to signed 16-bit samples (``array('h')``)."""
    table = MULAW_TO_LINEAR
    return array("h", [table[b] for b in payload])


def decode_alaw(payload: bytes) -> array[int]:
    """A PCMA payload to signed 16-bit samples (``array('h')``)."""
    table = ALAW_TO_LINEAR
    return array("h", [table[b] for b in payload])
