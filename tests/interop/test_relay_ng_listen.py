"""The ng listener with port 0: UDP and TCP share one port, and the kernel's pick for UDP may
already be taken for TCP by an unrelated socket (CI met this once: EADDRINUSE at start).

The clash is made certain in a namespace whose ephemeral range holds two ports, one of them
held for TCP: the service must still start, on the free one, every time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import netns

SNIPPET = """
import asyncio, socket, sys
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.daemon.relay_service import RelayService

async def main() -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 40000))
    taken.listen()
    ports = set()
    for _ in range(8):
        service = RelayService(RelayServiceConfig(
            ng_listen=("127.0.0.1", 0), ng_tcp=True, mediaproxy_socket="", accounting="",
            port_min=30000, port_max=30100, state_dir=sys.argv[1]))
        await service.start()
        ports.add(service.ng_address.port)
        await service.stop()
    print(sorted(ports))

asyncio.run(main())
"""


def test_port_zero_retries_when_the_udp_port_is_taken_for_tcp(tmp_path: Path) -> None:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with netns.Lab() as lab:
        ns = lab.namespace("nglisten")
        ns.sysctl("net.ipv4.ip_local_port_range", "40000 40001")
        result = ns.python(SNIPPET, str(tmp_path), timeout=60)
    # Every start landed on the one port whose TCP side was free.
    assert result.stdout.strip() == "[40001]", result.stderr
