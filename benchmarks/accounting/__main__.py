"""What the durable journal costs the relay: ng calls per second with and without it, and the
time a checkpoint of N live calls takes on the event loop (snapshot) and in the journal thread.

    .venv/bin/python -m benchmarks.accounting [--calls 1000] [--live 5000]

Run on a shared, loaded machine the absolute numbers move; compare the two rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
from pathlib import Path

from icerelay import bencode
from icerelay.daemon.journal import Journal
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService

HOST = "127.0.0.1"
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 8\r\n"
)


def settings(accounting: str, state: str, port_max: int = 40999) -> RelayServiceConfig:
    return RelayServiceConfig(
        ng_listen=(HOST, 0), ng_tcp=False, mediaproxy_socket="", port_min=20000,
        port_max=port_max, accounting=accounting, state_dir=state, delete_delay=0,
    )  # fmt: skip


async def drive(
    service: RelayService, calls: int, delete: bool = True, prefix: str = "b"
) -> float:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    address = service.ng_address_tuple()
    count = 0

    async def request(body: dict[str, bencode.Encodable]) -> None:
        nonlocal count
        count += 1
        await loop.sock_sendto(sock, b"%d " % count + bencode.encode(body), address)
        await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)

    started = time.perf_counter()
    for index in range(calls):
        call = f"{prefix}{index}"
        await request({"command": "offer", "call-id": call, "from-tag": "a", "sdp": SDP})
        await request(
            {"command": "answer", "call-id": call, "from-tag": "a", "to-tag": "b", "sdp": SDP}
        )
        if delete:
            await request({"command": "delete", "call-id": call, "delete delay": 0})
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed


async def calls_per_second(
    calls: int, journal: bool, directory: Path, concurrency: int = 1
) -> float:
    accounting = f"sqlite:///{directory}/sessions.sqlite3" if journal else ""
    service = RelayService(settings(accounting, str(directory / "state")))
    await service.start()
    try:
        started = time.perf_counter()
        share = calls // concurrency
        await asyncio.gather(
            *(drive(service, share, prefix=f"c{n}-") for n in range(concurrency))
        )
        return share * concurrency / (time.perf_counter() - started)
    finally:
        await service.stop()


async def checkpoint_cost(live: int, directory: Path) -> tuple[float, float]:
    service = RelayService(settings("", "", port_max=20000 + 4 * live + 3))
    await service.start()
    try:
        await drive(service, live, delete=False)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        records = [service.records.wall(r) for r in service.engine.snapshot(loop.time())]
        snapshot = time.perf_counter() - started
        journal = Journal(directory / "checkpoint")
        started = time.perf_counter()
        journal.checkpoint(records)
        write = time.perf_counter() - started
        journal.close()
        return snapshot, write
    finally:
        await service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accounting")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--live", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="icerelay-bench-") as name:
        directory = Path(name)
        without = asyncio.run(calls_per_second(args.calls, False, directory / "a"))
        with_journal = asyncio.run(calls_per_second(args.calls, True, directory / "b"))
        k = args.concurrency
        without_k = asyncio.run(calls_per_second(args.calls, False, directory / "c", k))
        with_journal_k = asyncio.run(calls_per_second(args.calls, True, directory / "d", k))
        snapshot, write = asyncio.run(checkpoint_cost(args.live, directory))
    print(f"calls/s (offer+answer+delete, sequential): no accounting {without:.0f}, "
          f"journal + SQLite {with_journal:.0f} (ratio {with_journal / without:.2f})")
    print(f"calls/s ({k} proxies at once): no accounting {without_k:.0f}, "
          f"journal + SQLite {with_journal_k:.0f} (ratio {with_journal_k / without_k:.2f})")
    per_slice = snapshot * 200 / args.live
    print(f"checkpoint of {args.live} live calls: snapshot on the loop {snapshot * 1000:.1f} ms "
          f"in all ({per_slice * 1000:.1f} ms per 200-call slice, one slice per loop turn), "
          f"journal write (its own thread) {write * 1000:.1f} ms")


if __name__ == "__main__":
    main()
