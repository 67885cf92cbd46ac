"""A userspace delay line: IP packets in through one TUN device, out through another, later.

Used where ``tc qdisc ... netem`` is missing (kernels built without CONFIG_NET_SCH_NETEM, such
as this project's CI machines). Run inside a router namespace; routing policy there sends every
packet that should be delayed into ``--in`` and the kernel forwards what comes out of ``--out``
by its normal routing table (see :func:`tests.interop.ice_agents.topology.build_delayed_pair`).

One-way delay ``--delay`` milliseconds, FIFO, no loss, no reordering. Prints ``ready`` once both
devices exist, so the parent can configure routes on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str) -> int:
    """A TUN device ``name`` (raw IP packets, no packet-information header), non-blocking."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


async def run(tun_in: str, tun_out: str, delay: float) -> None:
    loop = asyncio.get_running_loop()
    reader = open_tun(tun_in)
    writer = open_tun(tun_out)
    print("ready", flush=True)

    def forward(packet: bytes) -> None:
        # A full queue or a device going away: the packet is lost, as on a wire.
        with contextlib.suppress(OSError):
            os.write(writer, packet)

    def readable() -> None:
        # Drain everything queued: one wake-up may carry a burst (ICE sends checks in bursts).
        while True:
            try:
                packet = os.read(reader, 65535)
            except BlockingIOError:
                return
            loop.call_later(delay, forward, packet)

    loop.add_reader(reader, readable)
    await asyncio.Event().wait()  # until killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--in", dest="tun_in", required=True)
    parser.add_argument("--out", dest="tun_out", required=True)
    parser.add_argument("--delay", type=float, required=True, help="one-way delay, ms")
    args = parser.parse_args()
    asyncio.run(run(args.tun_in, args.tun_out, args.delay / 1000.0))


if __name__ == "__main__":
    main()
