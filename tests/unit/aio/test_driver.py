"""EngineDriver around a fake engine, on a real asyncio loop."""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from icerelay.aio.driver import Engine, EngineDriver
from icerelay.net import Address, Datagram

LOCAL = Address("127.0.0.1", 4000)
PEER = Address("127.0.0.1", 5000)


def async_test(function: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run a coroutine test on a fresh event loop (no pytest-asyncio needed)."""

    @functools.wraps(function)
    def wrapper() -> None:
        asyncio.run(asyncio.wait_for(function(), 10))

    return wrapper


class FakeEngine:
    """Records every call in ``log``; the test scripts what it returns."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []
        self.outbox: list[Datagram] = []
        self.events: deque[object] = deque()
        self.deadline: float | None = None
        #: What handle_timer does: by default clears the deadline and queues one datagram.
        self.on_timer_deadline: float | None = None

    def receive(self, data: bytes, source: Address, destination: Address, now: float) -> None:
        self.log.append(("receive", data))
        self.events.append(f"got {data.decode()}")
        self.outbox.append(Datagram(b"re:" + data, destination, source))

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        self.log.append(("datagrams_to_send", len(self.outbox)))
        outbox, self.outbox = self.outbox, []
        return outbox

    def next_timer(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.log.append(("handle_timer", now))
        self.deadline = self.on_timer_deadline
        self.outbox.append(Datagram(b"tick", LOCAL, PEER))

    def next_event(self) -> object | None:
        event = self.events.popleft() if self.events else None
        if event is not None:
            self.log.append(("next_event", event))
        return event


def _driver(engine: FakeEngine) -> tuple[EngineDriver, list[Datagram], list[object], list[str]]:
    sent: list[Datagram] = []
    events: list[object] = []
    order: list[str] = []

    def send(datagram: Datagram) -> None:
        order.append(f"send {datagram.data.decode()}")
        sent.append(datagram)

    def on_event(event: object) -> None:
        order.append(f"event {event}")
        events.append(event)

    engine_as_protocol: Engine = engine  # the fake must satisfy the protocol (mypy checks)
    return EngineDriver(engine_as_protocol, send, on_event), sent, events, order


@async_test
async def test_datagram_received_feeds_engine_then_events_then_datagrams() -> None:
    engine = FakeEngine()
    driver, sent, events, order = _driver(engine)
    driver.datagram_received(b"hello", PEER, LOCAL)
    assert engine.log[0] == ("receive", b"hello")
    assert order == ["event got hello", "send re:hello"]
    assert sent == [Datagram(b"re:hello", LOCAL, PEER)]
    assert events == ["got hello"]
    assert driver.timer_at is None


@async_test
async def test_events_drained_before_datagrams_including_those_an_event_handler_queues() -> None:
    engine = FakeEngine()
    sent: list[Datagram] = []

    def on_event(event: object) -> None:
        # A handler that answers at once: its datagram goes out in the same drain.
        engine.outbox.append(Datagram(b"answer", LOCAL, PEER))

    driver = EngineDriver(engine, sent.append, on_event)
    driver.datagram_received(b"x", PEER, LOCAL)
    assert [d.data for d in sent] == [b"re:x", b"answer"]


@async_test
async def test_without_on_event_events_stay_in_the_engine() -> None:
    engine = FakeEngine()
    sent: list[Datagram] = []
    driver = EngineDriver(engine, sent.append)
    driver.datagram_received(b"x", PEER, LOCAL)
    assert [d.data for d in sent] == [b"re:x"]
    assert engine.next_event() == "got x"


@async_test
async def test_timer_armed_only_when_next_timer_changes() -> None:
    loop = asyncio.get_running_loop()
    engine = FakeEngine()
    driver, _, _, _ = _driver(engine)
    armed: list[float] = []
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args)

    loop.call_at = counting_call_at  # type: ignore[method-assign,assignment]  # this test's own loop
    deadline = loop.time() + 30
    engine.deadline = deadline
    for index in range(50):
        driver.datagram_received(b"%d" % index, PEER, LOCAL)
    assert armed == [deadline]
    assert driver.timer_at == deadline

    engine.deadline = deadline + 1
    driver.transmit()
    engine.deadline = None
    driver.transmit()
    assert armed == [deadline, deadline + 1]
    assert driver.timer_at is None
    driver.close()


@async_test
async def test_timer_fires_handles_then_drains_and_rearms() -> None:
    loop = asyncio.get_running_loop()
    engine = FakeEngine()
    driver, sent, _, _ = _driver(engine)
    start = loop.time()
    engine.deadline = start + 0.02
    engine.on_timer_deadline = start + 0.04
    driver.transmit()
    assert engine.log == [("datagrams_to_send", 0)]
    await asyncio.sleep(0.03)
    assert [d.data for d in sent] == [b"tick"]
    handled_at = engine.log[1]
    assert handled_at[0] == "handle_timer"
    assert isinstance(handled_at[1], float) and handled_at[1] >= start + 0.02
    assert driver.timer_at == start + 0.04
    engine.on_timer_deadline = None
    await asyncio.sleep(0.03)
    assert [d.data for d in sent] == [b"tick", b"tick"]
    assert driver.timer_at is None


@async_test
async def test_transmit_handles_a_due_timer_first() -> None:
    loop = asyncio.get_running_loop()
    engine = FakeEngine()
    engine.events.append("queued")
    driver, _, _, order = _driver(engine)
    engine.deadline = loop.time() - 1
    driver.transmit()
    assert [entry[0] for entry in engine.log] == ["handle_timer", "next_event", "datagrams_to_send"]
    assert order == ["event queued", "send tick"]
    assert driver.timer_at is None


@async_test
async def test_close_cancels_the_timer_and_stops_feeding() -> None:
    loop = asyncio.get_running_loop()
    engine = FakeEngine()
    driver, sent, _, _ = _driver(engine)
    engine.deadline = loop.time() + 0.01
    driver.transmit()
    assert driver.timer_at is not None
    driver.close()
    assert driver.closed and driver.timer_at is None
    await asyncio.sleep(0.03)
    assert not any(name == "handle_timer" for name, _ in engine.log)
    driver.datagram_received(b"late", PEER, LOCAL)
    assert ("receive", b"late") not in engine.log
    # A closed driver still flushes what the engine queued (a last Refresh, an ICE close)...
    engine.outbox.append(Datagram(b"bye", LOCAL, PEER))
    driver.transmit()
    assert [d.data for d in sent] == [b"bye"]
    # ...but arms nothing.
    assert driver.timer_at is None


@async_test
async def test_custom_clock_schedules_relative_to_it() -> None:
    loop = asyncio.get_running_loop()
    engine = FakeEngine()
    virtual = [1000.0]
    sent: list[Datagram] = []
    driver = EngineDriver(engine, sent.append, clock=lambda: virtual[0])
    engine.deadline = 1000.01
    driver.transmit()
    assert driver.timer_at == 1000.01
    started = loop.time()
    virtual[0] = 1000.005  # the timer may fire with the clock short of the deadline
    await asyncio.sleep(0.03)
    assert loop.time() - started >= 0.01
    assert engine.log[-2] == ("handle_timer", 1000.01)
    assert [d.data for d in sent] == [b"tick"]
