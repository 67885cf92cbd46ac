"""The relay's ng control path without sockets: offer+answer pairs through NgProtocol.receive,
NgHandler.handle and NgProtocol.reply (SDP parse, plan, rewrite, bencode), nothing else.

Wall-clock timings of this path were useless on the shared 2-CPU machine (+-50% between runs),
so it is measured in instructions, which do not depend on the load::

    for n in 10 210; do
        valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
            .venv/bin/python -m benchmarks.relay.handler $n once 2>&1 | grep 'I *refs'
    done
    # (second - first) / 200 = instructions per offer+answer pair

Without valgrind it prints the microseconds per pair (min of 5 runs).
"""

from __future__ import annotations

import asyncio
import sys
import time

from icerelay import bencode
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService

SDP = (
    "v=0\r\no={origin} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n"
)


_PLACEHOLDER = b"@@@@@@"


def _template(command: str) -> bytes:
    """The ``command`` request of call :data:`_PLACEHOLDER` (cookie, Call-ID and tags)."""
    offer = command == "offer"
    message: dict[str, bencode.Encodable] = {
        "command": command,
        "call-id": "c@@@@@@",
        "from-tag": "a@@@@@@",
        "replace": ["origin", "session-connection"],
        "flags": ["trust-address"],
        "sdp": SDP.format(origin="caller" if offer else "callee", port=12224 if offer else 12226),
    }
    if not offer:
        message["to-tag"] = "b@@@@@@"
    return command[0].encode() + b"@@@@@@ " + bencode.encode(message)


async def pairs(count: int) -> float:
    """Seconds per offer+answer pair over ``count`` calls (a fresh service)."""
    service = RelayService(
        RelayServiceConfig(
            ng_listen=("127.0.0.1", 0),
            mediaproxy_socket="",
            accounting="",
            port_min=20000,
            port_max=59999,
        )
    )
    # Every request from one encoded template whose identifiers have a fixed width (the
    # placeholder and the number are both six characters, so the bencode lengths hold): building
    # the requests costs next to nothing beside what is measured. (Encoding each one with
    # bencode.encode, as this did before, added about 0.1M instructions per pair to the count.)
    templates = [_template("offer"), _template("answer")]
    requests = [
        template.replace(_PLACEHOLDER, b"%06d" % index)
        for index in range(count)
        for template in templates
    ]
    start = time.perf_counter()
    for data in requests:
        outcome = service.protocol.receive(data, 1.0)
        command = getattr(outcome, "command", None)
        if command is None:
            raise RuntimeError(f"not a command: {outcome!r}")
        service.protocol.reply(outcome, service.handler.handle(command, 1.0), 1.0)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    # The engine's events (forwardings to install) are dropped: no sockets here.
    while service.engine.next_event() is not None:
        pass
    return elapsed / count


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    runs = 1 if sys.argv[2:] == ["once"] else 5
    best = min(asyncio.run(pairs(count)) for _ in range(runs))
    print(f"{count} offer+answer pairs: {best * 1e6:.1f} us per pair (min of {runs})")


if __name__ == "__main__":
    main()
