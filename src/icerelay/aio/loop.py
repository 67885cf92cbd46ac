"""Event loop choice: uvloop when installed (the ``fast`` extra), else asyncio's default."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory for :class:`asyncio.Runner`, or None for the default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
