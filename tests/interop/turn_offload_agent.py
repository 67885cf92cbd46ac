"""Run inside a network namespace by ``test_turn_offload``: a TURN client or an echoing peer.

``python -m tests.interop.turn_offload_agent peer HOST PORT COUNT``: echo COUNT datagrams
(reversed) to their sender. ``... client SERVER_HOST SERVER_PORT PEER_HOST PEER_PORT COUNT``:
allocate, bind channel 0x4001 to the peer, exchange COUNT ChannelData messages with it and
print a JSON summary.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

from icerelay.stun import Address, Method
from tests.interop.turn_offload_client import Client


def peer(host: str, port: int, count: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(15)
    print("ready", flush=True)
    sources = set()
    for _ in range(count):
        data, source = sock.recvfrom(65535)
        sources.add(source)
        sock.sendto(data[::-1], source)
    print(json.dumps({"sources": sorted(f"{h}:{p}" for h, p in sources)}), flush=True)


def client(server: tuple[str, int], peer_address: tuple[str, int], count: int) -> None:
    turn = Client(server)
    relay = turn.allocate(4)
    turn.request(
        Method.CHANNEL_BIND, CHANNEL_NUMBER=0x4001, XOR_PEER_ADDRESS=Address(*peer_address)
    )
    time.sleep(0.3)  # the server installs the channel in the kernel after answering
    received = 0
    for n in range(count):
        payload = bytes([n % 256]) * (7 + n % 5)
        padding = b"\0" * (-len(payload) % 4)
        turn.sock.send(struct.pack("!HH", 0x4001, len(payload)) + payload + padding)
        back = turn.recv(2.0)
        if back == struct.pack("!HH", 0x4001, len(payload)) + payload[::-1]:
            received += 1
    print(json.dumps({"relay": list(relay), "received": received}), flush=True)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "peer":
        peer(args[0], int(args[1]), int(args[2]))
    else:
        client((args[0], int(args[1])), (args[2], int(args[3])), int(args[4]))
