"""TURN allocation set-up without sockets: the sans-I/O TurnServerEngine answers, per client,
an unauthenticated Allocate (401 with REALM and NONCE), the authenticated Allocate and (unless
``nobind``) a ChannelBind, as benchmarks/turn/allocate.py's clients do against the daemon.

The requests are made beforehand by the benchmark's own client code (:mod:`.wire`, independent of
icerelay's codec) in a separate step: the nonce in the second Allocate comes from the server's
401, so ``prepare`` runs an engine once and stores every request in a file, and the measured run
feeds that file to a fresh engine with the same nonce key, random seed and clock. The measured
process then does little more than the server's work (reading the file is ~1% of it).

Wall-clock timings were useless on the shared 2-CPU machine, so this is measured in
instructions, which do not depend on the load::

    python -m benchmarks.turn.engine_allocations prepare 2200   # once: /tmp/turn-allocations.bin
    for n in 200 2200; do
        valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
            .venv/bin/python -m benchmarks.turn.engine_allocations run $n once 2>&1 | grep 'I *refs'
    done
    # (second - first) / 2000 = instructions per client (401 + Allocate + ChannelBind)

``run N profile`` prints a cProfile of the run instead; without valgrind ``run N`` prints the
microseconds per client (min of 5 runs). ``nobind`` after the count leaves the ChannelBind out.
The binder is a fake (no sockets): the daemon's socket set-up per allocation is not counted.

``service N [profile]`` counts the rest too: the whole TURN service (one worker, INFO log lines
to a file through the background writer) in this process with real sockets. Per client: the
first Allocate is sent, one round of the service's poller is run by hand, the 401 is read, the
authenticated Allocate is sent, another round, the answer is read (no ChannelBind). The client's
part (this module's wire code, its two sends and reads) is in the count; it is the same for
every server version, so differences between versions are the server's::

    for n in 500 2500; do valgrind ... python -m benchmarks.turn.engine_allocations service $n \\
        2>&1 | grep 'I *refs'; done     # (second - first) / 2000 per allocation
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pickle
import pstats
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.turn import wire
from benchmarks.turn.allocate import CHANNEL, client_ip
from icerelay.turn.server.engine import TurnServerEngine
from icerelay.turn.server.quotas import TurnQuotas
from icerelay.turn.server.settings import TurnServerSettings

USERNAME, PASSWORD, REALM = "bench", "bench-secret", "bench.icerelay"
LISTEN = ("127.0.0.1", 13478)
PEER = ("127.0.0.1", 40000)
NOW = 1000.0
NONCE_KEY = b"k" * 32
SEED = 7
FILE = Path("/tmp/turn-allocations.bin")
#: The ``service`` mode's listening port.
SERVICE_PORT = 13612

# One request: (client address, request bytes); a client sends three (two without ChannelBind).
Request = tuple[tuple[str, int], bytes]


class FakeBinder:
    """Every port binds; nothing is opened."""

    def bind(self, address: tuple[str, int], dont_fragment: bool) -> bool:
        return True

    def release(self, address: tuple[str, int]) -> None:
        pass


def make_engine() -> TurnServerEngine:
    """The benchmark's server settings (benchmarks/turn/run_ours.py), on a fake binder."""
    settings = TurnServerSettings(
        realm=REALM,
        users={USERNAME: PASSWORD},
        listen=(LISTEN,),
        relay_ipv4="127.0.0.1",
        relay_port_min=10000,
        relay_port_max=65000,
        allow_peers=("127.0.0.0/8",),
        quotas=TurnQuotas(allocations_per_user=1_000_000, total_allocations=1_000_000),
    )
    return TurnServerEngine(settings, FakeBinder(), rng=random.Random(SEED), nonce_key=NONCE_KEY)


def _exchange(engine: TurnServerEngine, client: tuple[str, int], request: bytes) -> wire.Response:
    engine.receive(request, client, LISTEN, "udp", NOW)
    out = engine.datagrams_to_send()
    if len(out) != 1:
        raise RuntimeError(f"{len(out)} answers from {client}")
    response = wire.decode(out[0][0])
    if response is None:
        raise RuntimeError("not a STUN answer")
    return response


def prepare(count: int) -> list[list[Request]]:
    """Every client's requests, in order, checked against one engine run."""
    engine = make_engine()
    key = wire.long_term_key(USERNAME, REALM, PASSWORD)
    clients: list[list[Request]] = []
    for index in range(count):
        client = (client_ip(index), 50000)
        first = wire.allocate_request(wire.new_transaction_id())
        challenge = _exchange(engine, client, first)
        if challenge.error_code != 401 or challenge.nonce is None:
            raise RuntimeError(f"expected 401, got {challenge}")
        second = wire.allocate_request(
            wire.new_transaction_id(), USERNAME, REALM, challenge.nonce, key
        )
        if _exchange(engine, client, second).kind != wire.ALLOCATE_SUCCESS:
            raise RuntimeError("Allocate failed")
        third = wire.channel_bind_request(
            wire.new_transaction_id(), CHANNEL, PEER[0], PEER[1], USERNAME, REALM,
            challenge.nonce, key,
        )  # fmt: skip
        if _exchange(engine, client, third).kind != wire.CHANNEL_BIND_SUCCESS:
            raise RuntimeError("ChannelBind failed")
        clients.append([(client, first), (client, second), (client, third)])
    return clients


def run(clients: list[list[Request]]) -> float:
    """Seconds per client: the requests fed to a fresh engine, answers and events taken."""
    engine = make_engine()
    receive = engine.receive
    take = engine.datagrams_to_send
    next_event = engine.next_event
    answers = 0
    start = time.perf_counter()
    for requests in clients:
        for client, request in requests:
            receive(request, client, LISTEN, "udp", NOW)
            answers += len(take())
        while next_event() is not None:
            pass
    elapsed = time.perf_counter() - start
    expected = sum(len(requests) for requests in clients)
    if answers != expected or len(engine.allocations) != len(clients):
        raise RuntimeError(f"{answers} answers to {expected} requests")
    return elapsed / len(clients)


async def service(count: int, profile: bool) -> None:
    """The whole service in this process (see the module docstring); prints the CPU time."""
    from benchmarks.turn.run_ours import build_config
    from icerelay.daemon.logs import configure_logging
    from icerelay.daemon.turn_service import TurnService

    log = Path(tempfile.mkdtemp()) / "turn.log"
    configure_logging("info", "kv", log.open("w"))
    port = SERVICE_PORT
    options = argparse.Namespace(
        host=LISTEN[0], port=port, realm=REALM, user=f"{USERNAME}:{PASSWORD}",
        min_port=10000, max_port=31999, workers=1, offload="off",
    )  # fmt: skip
    turn = TurnService(build_config(options))
    await turn.start()
    poller = turn._poller
    assert poller is not None
    key = wire.long_term_key(USERNAME, REALM, PASSWORD)
    warm = 50
    sockets = []
    for index in range(warm + count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((client_ip(index), 0))
        sock.connect((LISTEN[0], port))
        sockets.append(sock)

    def allocate(sock: socket.socket) -> None:
        sock.send(wire.allocate_request(wire.new_transaction_id()))
        poller.run_round()
        challenge = wire.decode(sock.recv(2048))
        if challenge is None or challenge.error_code != 401 or challenge.nonce is None:
            raise RuntimeError(f"expected 401, got {challenge}")
        tid = wire.new_transaction_id()
        sock.send(wire.allocate_request(tid, USERNAME, REALM, challenge.nonce, key))
        poller.run_round()
        answer = wire.decode(sock.recv(2048))
        if answer is None or answer.kind != wire.ALLOCATE_SUCCESS:
            raise RuntimeError(f"Allocate failed: {answer}")

    def measured() -> None:
        for sock in sockets[warm:]:
            allocate(sock)

    try:
        for sock in sockets[:warm]:
            allocate(sock)
        start = time.process_time()
        if profile:
            profiler = cProfile.Profile()
            profiler.runcall(measured)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        else:
            measured()
        elapsed = time.process_time() - start
        print(f"{count} clients: {elapsed / count * 1e6:.1f} us of CPU per allocation")
    finally:
        await turn.stop()
        for sock in sockets:
            sock.close()


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in ("prepare", "run", "service"):
        raise SystemExit(__doc__)
    count = int(args[1]) if len(args) > 1 else 2200
    if args[0] == "service":
        asyncio.run(service(count, "profile" in args))
        return
    if args[0] == "prepare":
        FILE.write_bytes(pickle.dumps(prepare(count)))
        print(f"{count} clients' requests in {FILE}")
        return
    clients: list[list[Request]] = pickle.loads(FILE.read_bytes())[:count]
    if len(clients) < count:
        raise SystemExit(f"{FILE} has {len(clients)} clients: prepare more")
    if "nobind" in args:
        clients = [requests[:2] for requests in clients]
    if "profile" in args:
        profile = cProfile.Profile()
        profile.runcall(run, clients)
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    runs = 1 if "once" in args else 5
    best = min(run(clients) for _ in range(runs))
    print(f"{count} clients: {best * 1e6:.1f} us per client (min of {runs})")


if __name__ == "__main__":
    main()
