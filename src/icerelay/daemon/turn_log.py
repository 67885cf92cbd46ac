"""The TURN service's lines for allocations made and ended: at a few thousand allocations per
second they are most of what a TURN server logs, so they go through
:func:`~icerelay.daemon.logs.log_event` (``logger.info`` with less work per line)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from icerelay.daemon.logs import log_event
from icerelay.turn.server.allocation import HostPort
from icerelay.turn.server.events import AllocationCreated, AllocationDeleted


def format_addresses(addresses: Iterable[HostPort]) -> str:
    """``host:port`` (``[host]:port`` for IPv6), comma-separated; ``-`` for none."""
    return ",".join([f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses]) or "-"


def log_created(logger: logging.Logger, event: AllocationCreated) -> None:
    """``turn.allocation_created`` at INFO."""
    log_event(
        logger,
        logging.INFO,
        "turn.allocation_created",
        {
            "client": format_addresses((event.five_tuple[1],)),
            "transport": event.five_tuple[0],
            "user": event.username,
            "relayed": format_addresses(event.relayed),
            "lifetime": event.lifetime,
        },
    )


def log_deleted(logger: logging.Logger, event: AllocationDeleted) -> None:
    """``turn.allocation_deleted`` at INFO, with what the allocation relayed."""
    log_event(
        logger,
        logging.INFO,
        "turn.allocation_deleted",
        {
            "client": format_addresses((event.five_tuple[1],)),
            "user": event.username,
            "relayed": format_addresses(event.relayed),
            "reason": str(event.reason),
            "duration": round(event.duration),
            "packets_to_peers": event.packets_to_peers,
            "packets_to_client": event.packets_to_client,
            "bytes_to_peers": event.bytes_to_peers,
            "bytes_to_client": event.bytes_to_client,
        },
    )
