"""icerelay's TURN server (which also answers STUN Binding) as a process, for namespaces.

``python -m tests.interop.ice_agents.turnd --listen IP:PORT --user NAME:PASSWORD`` prints
``ready`` once it listens and runs until killed. (``icerelay serve`` does not host the TURN
service yet; this is the same TurnService, started directly.)
"""

from __future__ import annotations

import argparse
import asyncio

from icerelay.daemon.turn_config import TurnServerConfig
from icerelay.daemon.turn_service import TurnService


async def run(listen: str, users: dict[str, str], allow_peers: list[str]) -> None:
    host, _, port = listen.rpartition(":")
    service = TurnService(
        TurnServerConfig(
            listen=[(host, int(port))],
            realm="icerelay.test",
            users=users,
            allow_peers=allow_peers,
            relay_port_min=20000,
            relay_port_max=20999,
        )
    )
    await service.start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--user", action="append", default=[], help="NAME:PASSWORD")
    parser.add_argument("--allow-peer", action="append", default=[], help="network, e.g. 10/8")
    args = parser.parse_args()
    users = dict(user.split(":", 1) for user in args.user)
    asyncio.run(run(args.listen, users, args.allow_peer))


if __name__ == "__main__":
    main()
