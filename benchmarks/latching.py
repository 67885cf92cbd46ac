"""Per-packet cost of the latching policy (:func:`icerelay.relay.latching.decide`), in-process.

``python -m benchmarks.latching`` prints ns per call for: media from the latched source (the hot
path), RTCP from it, media from a foreign source that does not take over, and garbage from a
stranger. No sockets: this isolates the policy from the data plane. Numbers from a shared
machine are only comparable with each other within one run (report ratios).
"""

from __future__ import annotations

import struct
import timeit

from icerelay.relay.forwarding import Forwarding, Leg
from icerelay.relay.latching import RTP, ForwardingState, decide
from icerelay.stun import Address

RELAY_A = Address("203.0.113.1", 30000)
RELAY_B = Address("203.0.113.1", 30002)
ALICE = ("198.51.100.20", 61000)
MALLORY = ("192.0.2.66", 6666)


def _rtp(seq: int, ssrc: int = 0x1234, pt: int = 8) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + b"x" * 160


def _state() -> ForwardingState:
    a = Leg(RELAY_A, Address("192.168.1.10", 4000))
    b = Leg(RELAY_B, Address("198.51.100.7", 5000), Address("198.51.100.7", 5001))
    return ForwardingState(Forwarding("k", a, b))


def run(number: int = 200_000, repeat: int = 5) -> dict[str, float]:
    """Best-of-``repeat`` ns per decide() call, per case."""
    state = _state()
    leg = state.a
    media = _rtp(2)
    decide(leg, RTP, _rtp(1), ALICE, 0.0)
    rtcp = struct.pack("!BBHI", 0x80, 201, 1, 0x1234) + b"\x00" * 20
    foreign = _rtp(9, ssrc=0x9999)
    garbage = bytes([0x40]) + bytes(range(199))
    cases = {
        "latched-rtp": lambda: decide(leg, RTP, media, ALICE, 1.0),
        "latched-rtcp-on-rtp-port": lambda: decide(leg, RTP, rtcp, ALICE, 1.0),
        "foreign-rtp": lambda: decide(leg, RTP, foreign, MALLORY, 1.0),
        "garbage": lambda: decide(leg, RTP, garbage, MALLORY, 1.0),
    }
    results = {}
    for name, call in cases.items():
        best = min(timeit.repeat(call, number=number, repeat=repeat))
        results[name] = best / number * 1e9
    return results


def main() -> None:
    for name, ns in run().items():
        print(f"{name:28s} {ns:8.1f} ns/packet")


if __name__ == "__main__":
    main()
