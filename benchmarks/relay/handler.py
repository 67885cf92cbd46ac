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
    requests = []
    for index in range(count):
        common: dict[str, bencode.Encodable] = {
            "call-id": f"c{index}",
            "from-tag": f"a{index}",
            "replace": ["origin", "session-connection"],
            "flags": ["trust-address"],
        }
        offer = {"command": "offer", "sdp": SDP.format(origin="caller", port=12224), **common}
        answer = {
            "command": "answer",
            "sdp": SDP.format(origin="callee", port=12226),
            "to-tag": f"b{index}",
            **common,
        }
        requests.append(f"o{index} ".encode() + bencode.encode(offer))
        requests.append(f"a{index} ".encode() + bencode.encode(answer))
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
