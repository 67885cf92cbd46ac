"""The user agent never raises on what the network sends: mutated messages are dropped or
answered, and a valid call still works afterwards."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from icerelay.sip.useragent import UserAgent

PEER = ("192.0.2.1", 5060)

INVITE = (
    "INVITE sip:bob@192.0.2.2:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfuzz;rport\r\n"
    "From: <sip:alice@192.0.2.1>;tag=1\r\n"
    "To: <sip:bob@192.0.2.2>\r\n"
    "Call-ID: fuzz@192.0.2.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@192.0.2.1:5060>\r\n"
    "Record-Route: <sip:192.0.2.9;lr>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 4\r\n\r\nv=0\n"
)
RESPONSE = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 192.0.2.2:5070;branch=z9hG4bKx;rport=5070;received=192.0.2.2\r\n"
    "From: <sip:bob@192.0.2.2>;tag=2\r\nTo: <sip:alice@192.0.2.1>;tag=3\r\n"
    "Call-ID: other\r\nCSeq: 7 INVITE\r\nContact: <sip:alice@192.0.2.1>\r\n"
    "Content-Length: 0\r\n\r\n"
)
TOKENS = ["", ";", ":", "<", ">", "@", "=", ",", "rport=x", "rport=99999", "tag=", "sip:",
          "z9hG4bK", "SIP/2.0/UDP", "[", "]", "\r\n", " ", "0", "-1", "INVITE", "ACK", "BYE",
          "CANCEL", "99999999999999999999", "Content-Length: 9999", "\x00", "é", ";rport=abc",
          ";rport=0", ";rport=70000", ":99999", ";branch=", "<sip:>", ";received=", ";lr",
          "Route: <sip:x;lr>", "Record-Route: <bad>", "CSeq: 2 BYE", "To: <sip:b@x>;tag=9",
          "Contact: *", "Via: SIP/2.0/UDP h:0", "Content-Type: text/plain"]


def mutate(text: str, rng: random.Random) -> bytes:
    lines = text.split("\r\n")
    for _ in range(rng.randint(1, 4)):
        index = rng.randrange(len(lines))
        action = rng.randrange(4)
        if action == 0:
            del lines[index]
            if not lines:
                lines = [""]
        elif action == 1:
            line = lines[index]
            position = rng.randrange(len(line) + 1)
            lines[index] = line[:position] + rng.choice(TOKENS) + line[position:]
        elif action == 2:
            line = lines[index]
            if line:
                start = rng.randrange(len(line))
                lines[index] = line[:start] + line[start + rng.randint(1, 8):]
        else:
            lines.insert(index, rng.choice(lines))
    return "\r\n".join(lines).encode("utf-8")


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_mutated_messages_never_raise(seed: int) -> None:
    rng = random.Random(seed)
    ua = UserAgent(("192.0.2.2", 5070), user="bob", rng=random.Random(seed))
    for base in (INVITE, RESPONSE, INVITE.replace("INVITE", rng.choice(["BYE", "ACK", "CANCEL",
                                                                        "OPTIONS"]))):
        ua.receive(mutate(base, rng), PEER, 0.0)
        ua.datagrams_to_send(0.0)
        while ua.next_event() is not None:
            pass
        ua.handle_timer(100.0)
    # Still a working user agent.
    fresh = INVITE.replace("fuzz@", "fresh@").replace("bKfuzz", "bKfresh")
    ua.receive(fresh.encode(), PEER, 200.0)
    assert any(data.startswith(b"SIP/2.0 100") for data, _ in ua.datagrams_to_send(200.0))
