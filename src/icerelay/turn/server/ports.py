"""Relay port bookkeeping: which ports of the configured range are free, reserved or in use.

Sans-I/O: this module only decides which port to *try*; the I/O shell binds the socket and
reports failure (the port may be taken by another process), and the engine then tries another.

Ports are handed out in random order (an attacker cannot predict the next relayed address) and
freed ports go to the back of the queue, so a port is not reused soon after its allocation ended
(a late peer packet for the old allocation must not reach a new user).

EVEN-PORT with the R bit (RFC 8656 §7.2) reserves the next higher port for a later Allocate that
presents the RESERVATION-TOKEN. A reserved port is never handed to anyone else while reserved,
and is given back to the pool when the token expires (30 s), so reservations cannot leak ports.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from icerelay.errors import ConfigError

if TYPE_CHECKING:
    from random import Random

#: RFC 8656 §7.2 suggests about 30 seconds for a reservation.
RESERVATION_LIFETIME = 30.0
EPHEMERAL_RANGE_PATH = Path("/proc/sys/net/ipv4/ip_local_port_range")


@dataclass(slots=True)
class Reservation:
    """A port held back for the holder of *token* until *expires*."""

    token: bytes
    relay_host: str
    port: int
    owner: str
    expires: float


class PortPool:
    """The free ports of one relay IP address, in random order."""

    def __init__(self, low: int, high: int, *, rng: Random) -> None:
        if not 1 <= low <= high <= 65535:
            raise ConfigError(f"bad relay port range {low}-{high}")
        ports = list(range(low, high + 1))
        rng.shuffle(ports)
        self._free: deque[int] = deque(ports)
        self._free_set = set(ports)
        self.low = low
        self.high = high

    def __len__(self) -> int:
        return len(self._free)

    def take(self) -> int | None:
        """Remove and return the next free port, or None when none is left."""
        if not self._free:
            return None
        port = self._free.popleft()
        self._free_set.discard(port)
        return port

    def take_even_pair(self, with_next: bool) -> int | None:
        """Remove an even port (and port+1 when *with_next*) from the pool; None if no such port."""
        for port in self._free:
            if port % 2 == 0 and (not with_next or port + 1 in self._free_set):
                self.take_specific(port)
                if with_next:
                    self.take_specific(port + 1)
                return port
        return None

    def take_specific(self, port: int) -> bool:
        """Remove *port* from the pool if it is free."""
        if port not in self._free_set:
            return False
        self._free_set.discard(port)
        self._free.remove(port)
        return True

    def give_back(self, port: int) -> None:
        """Return *port* to the back of the queue (so it is not reused soon)."""
        if self.low <= port <= self.high and port not in self._free_set:
            self._free.append(port)
            self._free_set.add(port)

    def set_aside(self, port: int) -> None:
        """Return a port that failed to bind to the back of the queue: maybe it is free later."""
        self.give_back(port)


def read_ephemeral_range(path: Path = EPHEMERAL_RANGE_PATH) -> tuple[int, int] | None:
    """The OS's ephemeral port range (Linux), or None when it cannot be read."""
    try:
        low, high = path.read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def check_relay_range(
    low: int, high: int, *, force: bool = False, path: Path = EPHEMERAL_RANGE_PATH
) -> None:
    """Refuse a relay range that overlaps the OS ephemeral range, unless *force*.

    Why: the kernel hands ephemeral ports to every outgoing connection on the machine; a relay
    range that overlaps it makes Allocate fail at random (the port is taken) and, worse, lets
    the relay and unrelated software fight over the same ports.
    """
    ephemeral = read_ephemeral_range(path)
    if ephemeral is None or force:
        return
    e_low, e_high = ephemeral
    if low <= e_high and e_low <= high:
        raise ConfigError(
            f"relay port range {low}-{high} overlaps the OS ephemeral port range "
            f"{e_low}-{e_high} ({path}); choose a range outside it (e.g. 20000-29999 or "
            f"61000-65535), shrink net.ipv4.ip_local_port_range, or set force_relay_port_range"
        )


def new_token(rng: Random) -> bytes:
    """An unguessable 8-byte RESERVATION-TOKEN (unguessable when *rng* is SystemRandom)."""
    return rng.randbytes(8)
