"""The one asyncio driver of the sans-I/O engines: bytes in, bytes out, one timer.

Every engine (ICE agent, TURN client allocation, STUN binding engine, NAT probe...) speaks the
same five verbs, :class:`Engine`. :class:`EngineDriver` is the only code that turns them into
asyncio calls, in the style of aioquic's ``QuicConnectionProtocol.transmit()``:

- a datagram arrives: :meth:`EngineDriver.datagram_received` feeds it to the engine with the
  current time, then :meth:`EngineDriver.transmit`;
- the shell changed the engine some other way (``agent.send(...)``, ``allocation.refresh(...)``):
  it calls :meth:`EngineDriver.transmit`;
- the timer fires: the engine's ``handle_timer``, then the same drain.

The drain order is fixed, once, here (the order matters: an event handler may queue more
datagrams, which then go out in the same turn):

1. handle the timer if it is due;
2. hand every pending event to ``on_event`` (if there is no ``on_event``, events stay in the
   engine for the shell to read with ``next_event()``);
3. send every datagram with ``send``;
4. re-arm the timer, only when ``next_timer()`` changed: a busy media stream goes through the
   drain once per packet and must not cancel and re-create a timer handle each time.

An engine whose ``receive`` takes other arguments (a decoded message, a component, transport
keyword...) is wrapped in a small adapter object that presents :class:`Engine`; there is no second
driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from icerelay.net import Address, Datagram

__all__ = ["Engine", "EngineDriver"]


class Engine(Protocol):
    """What a sans-I/O engine offers its driver. ``now`` is seconds on the driver's clock."""

    # Positional-only: the driver calls these positionally, so an engine may name them its way.
    def receive(self, data: bytes, source: Address, destination: Address, now: float, /) -> None:
        """One datagram from ``source`` that arrived on the local address ``destination``."""

    def datagrams_to_send(self, now: float, /) -> list[Datagram]:
        """Everything queued for the wire since the last call (the engine forgets it)."""

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None for never."""

    def handle_timer(self, now: float, /) -> None:
        """Time has reached (or passed) :meth:`next_timer`."""

    def next_event(self) -> object | None:
        """The oldest event not yet read, or None."""


class EngineDriver:
    """Drives one :class:`Engine` on the running asyncio loop.

    ``send`` puts one datagram on the wire (the shell picks the socket from ``source``);
    ``on_event`` receives every event the engine produces, in order. ``clock`` gives ``now``
    for the engine (default: the running loop's ``time()``); timers are scheduled on the loop
    at the same distance from ``clock()`` as the engine asks.
    """

    def __init__(
        self,
        engine: Engine,
        send: Callable[[Datagram], None],
        on_event: Callable[[object], None] | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.engine = engine
        self._send = send
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._loop_clock = clock is None
        self._clock: Callable[[], float] = clock if clock is not None else self._loop.time
        self._timer: asyncio.TimerHandle | None = None
        #: The deadline the armed timer was armed for (engine clock), None when none is armed.
        self._timer_at: float | None = None
        self._closed = False

    @property
    def timer_at(self) -> float | None:
        """The deadline of the armed timer (engine clock), or None."""
        return self._timer_at

    @property
    def closed(self) -> bool:
        return self._closed

    def datagram_received(self, data: bytes, source: Address, destination: Address) -> None:
        """Feed one datagram to the engine, then :meth:`transmit`. Ignored once closed."""
        if self._closed:
            return
        now = self._clock()
        self.engine.receive(data, source, destination, now)
        self._drain(now)

    def transmit(self) -> None:
        """Handle a due timer, deliver events, send datagrams, re-arm the timer if it moved.

        Call after anything that changed the engine other than a received datagram. After
        :meth:`close` it still flushes events and datagrams (a last Refresh with lifetime 0, an
        ICE close) but handles and arms no timer.
        """
        now = self._clock()
        deadline = None if self._closed else self.engine.next_timer()
        if deadline is not None and deadline <= now:
            self.engine.handle_timer(now)
        self._drain(now)

    def close(self) -> None:
        """Cancel the timer; from now on no timer is armed and received datagrams are ignored."""
        self._closed = True
        self._cancel_timer()

    # --- internals ---------------------------------------------------------------------------

    def _drain(self, now: float) -> None:
        # Locals, and no call into _arm when the timer stays where it is: this runs once per
        # datagram (a STUN server's whole hot path).
        engine = self.engine
        on_event = self._on_event
        if on_event is not None:
            while (event := engine.next_event()) is not None:
                on_event(event)
        send = self._send
        for datagram in engine.datagrams_to_send(now):
            send(datagram)
        deadline = engine.next_timer()
        if deadline != self._timer_at:
            self._arm(deadline)

    def _arm(self, deadline: float | None) -> None:
        if self._closed:
            deadline = None
        if deadline == self._timer_at:
            return
        self._cancel_timer()
        if deadline is None:
            return
        self._timer_at = deadline
        if self._loop_clock:
            self._timer = self._loop.call_at(deadline, self._on_timer)
        else:
            self._timer = self._loop.call_later(max(0.0, deadline - self._clock()), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        deadline = self._timer_at
        self._timer = None
        self._timer_at = None
        if self._closed or deadline is None:
            return
        # asyncio may run a timer up to its clock resolution early; the engine was promised
        # the deadline, so never hand it a time before it (aioquic does the same).
        now = max(self._clock(), deadline)
        next_deadline = self.engine.next_timer()
        if next_deadline is not None and next_deadline <= now:
            self.engine.handle_timer(now)
        self._drain(now)
