"""Make many TURN allocations quickly: one UDP socket per client, a window of clients in flight.

Each client does what a real TURN client does: Allocate, 401 with REALM and NONCE, Allocate
again with long-term credentials, and (for the relay load) ChannelBind to the peer socket.
The sockets stay open afterwards: the C load generator inherits them, so the server keeps
seeing the same 5-tuple it allocated for.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from dataclasses import dataclass, field

from benchmarks.turn import wire

# The first channel number (RFC 8656 section 12: 0x4000-0x4FFF); channels are per allocation,
# so every client can use the same one.
CHANNEL = 0x4000
_RTO = 0.5  # seconds; loopback answers in well under a millisecond unless the server is stuck
_TRIES = 6


def client_ip(index: int) -> str:
    """A loopback source address of its own for each client (127.1.0.1, 127.1.0.2, ...).

    Real clients come from many addresses; from one address they would all share the
    per-source limit on unauthenticated requests that a careful server applies, and the
    benchmark would measure that limit instead of the server.
    """
    return f"127.{1 + index // 62500}.{index // 250 % 250}.{index % 250 + 1}"


@dataclass
class Client:
    sock: socket.socket
    index: int
    stage: str = "allocate"  # allocate -> authenticate -> bind -> done | failed
    transaction_id: bytes = b""
    request: bytes = b""
    sent_at: float = 0.0
    tries: int = 0
    realm: str = ""
    nonce: str = ""
    relayed_port: int = 0
    error: str = ""
    key: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class AllocationRun:
    clients: list[Client]
    elapsed_s: float
    generator_cpu_s: float

    @property
    def succeeded(self) -> list[Client]:
        return [c for c in self.clients if c.stage == "done"]

    @property
    def failures(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.clients:
            if c.stage == "failed":
                counts[c.error] = counts.get(c.error, 0) + 1
        return counts


def _send(client: Client, request: bytes, transaction_id: bytes, now: float) -> None:
    client.request = request
    client.transaction_id = transaction_id
    client.sent_at = now
    client.tries = 1
    # ENOBUFS/EAGAIN under load: the retransmission timer will try again.
    with contextlib.suppress(OSError):
        client.sock.send(request)


def _advance(
    client: Client,
    response: wire.Response,
    now: float,
    username: str,
    password: str,
    peer: tuple[str, int] | None,
) -> None:
    if response.transaction_id != client.transaction_id:
        return  # a late answer to a retransmitted request
    if client.stage == "allocate":
        if response.kind == wire.ALLOCATE_ERROR and response.error_code == 401:
            client.realm = response.realm or ""
            client.nonce = response.nonce or ""
            client.key = wire.long_term_key(username, client.realm, password)
            client.stage = "authenticate"
            tid = wire.new_transaction_id()
            request = wire.allocate_request(tid, username, client.realm, client.nonce, client.key)
            _send(client, request, tid, now)
            return
        client.stage, client.error = "failed", f"first Allocate: {response.error_code}"
    elif client.stage == "authenticate":
        if response.kind == wire.ALLOCATE_SUCCESS and response.relayed_port:
            client.relayed_port = response.relayed_port
            if peer is None:
                client.stage = "done"
                return
            client.stage = "bind"
            tid = wire.new_transaction_id()
            request = wire.channel_bind_request(
                tid, CHANNEL, peer[0], peer[1], username, client.realm, client.nonce, client.key
            )
            _send(client, request, tid, now)
            return
        client.stage, client.error = "failed", f"Allocate: {response.error_code}"
    elif client.stage == "bind":
        if response.kind == wire.CHANNEL_BIND_SUCCESS:
            client.stage = "done"
            return
        client.stage, client.error = "failed", f"ChannelBind: {response.error_code}"


def allocate_many(
    server: tuple[str, int],
    count: int,
    username: str,
    password: str,
    window: int = 64,
    peer: tuple[str, int] | None = None,
    timeout_s: float = 120.0,
) -> AllocationRun:
    """Run ``count`` clients, at most ``window`` of them in flight at once.

    With ``peer`` each client also binds channel ``CHANNEL`` to it (which installs the
    permission too). The sockets of successful clients stay open; the caller closes them.
    """
    selector = selectors.EpollSelector()
    clients: list[Client] = []
    pending = list(range(count))
    pending.reverse()
    active: dict[int, Client] = {}
    cpu0, t0 = time.process_time(), time.monotonic()
    deadline = t0 + timeout_s
    while pending or active:
        now = time.monotonic()
        if now > deadline:
            for c in active.values():
                c.stage, c.error = "failed", "benchmark timeout"
            break
        while pending and len(active) < window:
            index = pending.pop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((client_ip(index), 0))
            sock.connect(server)
            sock.setblocking(False)
            client = Client(sock, index)
            clients.append(client)
            active[sock.fileno()] = client
            selector.register(sock, selectors.EVENT_READ, client)
            tid = wire.new_transaction_id()
            _send(client, wire.allocate_request(tid), tid, now)
        for key, _ in selector.select(timeout=0.05):
            client = key.data
            while True:
                try:
                    data = client.sock.recv(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                response = wire.decode(data)
                if response is not None:
                    _advance(client, response, time.monotonic(), username, password, peer)
                if client.stage in ("done", "failed"):
                    break
            if client.stage in ("done", "failed"):
                selector.unregister(client.sock)
                del active[client.sock.fileno()]
        now = time.monotonic()
        for client in list(active.values()):
            if now - client.sent_at < _RTO * (2 ** (client.tries - 1)):
                continue
            if client.tries >= _TRIES:
                client.stage, client.error = "failed", f"no answer in stage {client.stage}"
                selector.unregister(client.sock)
                del active[client.sock.fileno()]
                continue
            client.tries += 1
            client.sent_at = now
            with contextlib.suppress(OSError):
                client.sock.send(client.request)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    selector.close()
    for client in clients:
        if client.stage != "done":
            client.sock.close()
    return AllocationRun(clients, elapsed, cpu)
