"""One ICE agent in its own process, driven over JSON lines (see the package documentation).

Output lines (stdout), each one JSON object with ``event``:

- ``local``: ``ufrag``, ``pwd``, ``candidates`` (SDP attribute values, without ``a=``), after
  gathering completed; ``--relay-only`` is icerelay's ``AgentConfig(relay_only=True)`` and
  aioice's ``TransportPolicy.RELAY``;
- ``remote_set``: the peer's credentials and candidates were all handed to the agent (``t``);
- ``connected``: media can flow (``t``, ``checks_sent``, selected pair ``local_type``/
  ``remote_type``/``local``/``remote`` for component 1);
- ``completed``: every component nominated (icerelay only; aioice's connect() returns then, so
  its ``connected`` is already that);
- ``data``: the first datagram from the peer arrived on each component;
- ``failed`` (``error``) and ``closed``.

Input lines (stdin): ``{"ufrag", "pwd", "candidates"}`` once, then ``{"cmd": "quit"}``.

Times are ``time.monotonic()``, one clock for every process on the machine, so the parent can
put both agents' events on one time line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from icerelay.aio.ice import Connection
from icerelay.ice import ConnectionState, Event, SelectedPairChanged
from icerelay.ice.config import AgentConfig, Nomination
from icerelay.ice.relay import TurnServer


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def read_line(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        raise EOFError("signalling closed")
    message: dict[str, Any] = json.loads(line)
    return message


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def send_media(
    send: Callable[[bytes, int], Awaitable[None]],
    components: int,
    label: bytes,
    stop: asyncio.Event,
) -> None:
    """A datagram per component every 20 ms (an RTP-like pace) until told to stop."""
    sequence = 0
    while not stop.is_set():
        for component in range(1, components + 1):
            await send(b"\x80" + label + b" %d" % sequence, component)
        sequence += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


async def run_icerelay(args: argparse.Namespace, reader: asyncio.StreamReader) -> None:
    selected: dict[int, tuple[str, str, str, str]] = {}
    completed_at: list[float] = []

    def on_event(event: Event) -> None:
        if isinstance(event, SelectedPairChanged):
            pair = event.pair
            selected[event.component] = (
                pair.local.type.value,
                pair.remote.type.value,
                f"{pair.local.host}:{pair.local.port}",
                f"{pair.remote.host}:{pair.remote.port}",
            )

    turn = (
        [TurnServer(host_port(args.turn), args.turn_user, args.turn_password)] if args.turn else []
    )
    connection = Connection(
        controlling=args.role == "controlling",
        components=args.components,
        local_addresses=[args.host],
        stun_servers=[host_port(args.stun)] if args.stun else [],
        turn_servers=turn,
        config=AgentConfig(relay_only=args.relay_only, nomination=Nomination(args.nomination)),
        on_event=on_event,
    )
    await connection.gather()
    candidates = [c.to_attribute() for c in connection.local_candidates]
    emit(
        "local",
        ufrag=connection.local_username,
        pwd=connection.local_password,
        candidates=candidates,
    )
    remote = await read_line(reader)
    connection.set_remote_credentials(remote["ufrag"], remote["pwd"])
    for candidate in remote["candidates"]:
        connection.add_remote_candidate(candidate)
    connection.add_remote_candidate(None)
    emit("remote_set", t=time.monotonic())
    try:
        await connection.connect(timeout=args.timeout)
    except Exception as exc:  # report, the parent decides
        # Enough to tell "no candidates", "checks failed" and "timed out" apart afterwards.
        emit(
            "failed",
            t=time.monotonic(),
            error=repr(exc),
            state=connection.state.value,
            checks_sent=connection.agent.checks_sent,
            local=[str(c) for c in connection.local_candidates],
            remote=[str(c) for c in connection.agent.remote_candidates],
            pairs=[repr(p) for p in connection.agent.checklist.pairs],
        )
        await connection.close()
        return

    def rtt() -> float | None:
        # The round trip of the check that validated the pair in use: the physical floor.
        pair = connection.agent.selected_pair(1)
        return pair.rtt if pair is not None else None

    local_type, remote_type, local, remote_address = selected[1]
    emit(
        "connected",
        t=time.monotonic(),
        rtt=rtt(),
        checks_sent=connection.agent.checks_sent,
        local_type=local_type,
        remote_type=remote_type,
        local=local,
        remote=remote_address,
    )

    async def completed() -> None:
        await connection.wait_for(ConnectionState.COMPLETED)
        completed_at.append(time.monotonic())
        local_type, remote_type, local, remote_address = selected[1]
        emit(
            "completed",
            t=completed_at[0],
            rtt=rtt(),
            checks_sent=connection.agent.checks_sent,
            local_type=local_type,
            remote_type=remote_type,
            local=local,
            remote=remote_address,
        )

    async def receive(component: int) -> None:
        data = await connection.recv(component)
        emit("data", component=component, payload=data[1:].decode(errors="replace"))

    background = [receive(c) for c in range(1, args.components + 1)] + [completed()]
    await exchange(args, reader, connection.send, background)
    await connection.close()


async def run_aioice(args: argparse.Namespace, reader: asyncio.StreamReader) -> None:
    import aioice
    from aioice import ice as aioice_ice
    from aioice import stun as aioice_stun

    # Only the address under test (inside a namespace it is the only one anyway).
    aioice_ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.host]
    # aioice keeps no statistics: count Binding requests (retransmissions included) as they leave.
    counter = {"checks": 0, "counting": False}
    original_send = aioice_ice.StunProtocol.send_stun

    def counting_send(self: Any, message: Any, addr: tuple[str, int]) -> None:
        if (
            counter["counting"]
            and message.message_method == aioice_stun.Method.BINDING
            and message.message_class == aioice_stun.Class.REQUEST
        ):
            counter["checks"] += 1
        original_send(self, message, addr)

    aioice_ice.StunProtocol.send_stun = counting_send  # type: ignore[method-assign]
    options: dict[str, Any] = {}
    if args.turn:
        options.update(
            turn_server=host_port(args.turn),
            turn_username=args.turn_user,
            turn_password=args.turn_password,
        )
    if args.relay_only:
        options["transport_policy"] = aioice_ice.TransportPolicy.RELAY
    connection = aioice.Connection(
        ice_controlling=args.role == "controlling",
        components=args.components,
        use_ipv6=False,
        stun_server=host_port(args.stun) if args.stun else None,
        **options,
    )
    await connection.gather_candidates()
    emit(
        "local",
        ufrag=connection.local_username,
        pwd=connection.local_password,
        candidates=["candidate:" + c.to_sdp() for c in connection.local_candidates],
    )
    remote = await read_line(reader)
    connection.remote_username = remote["ufrag"]
    connection.remote_password = remote["pwd"]
    for text in remote["candidates"]:
        await connection.add_remote_candidate(
            aioice.Candidate.from_sdp(text.removeprefix("candidate:"))
        )
    await connection.add_remote_candidate(None)
    emit("remote_set", t=time.monotonic())
    counter["counting"] = True
    try:
        await asyncio.wait_for(connection.connect(), args.timeout)
    except Exception as exc:
        emit("failed", t=time.monotonic(), error=repr(exc))
        await connection.close()
        return
    pair = connection._nominated[1]  # aioice has no public accessor for the selected pair
    emit(
        "connected",
        t=time.monotonic(),
        checks_sent=counter["checks"],
        local_type=pair.local_candidate.type,
        remote_type=pair.remote_candidate.type,
        local=f"{pair.local_candidate.host}:{pair.local_candidate.port}",
        remote=f"{pair.remote_candidate.host}:{pair.remote_candidate.port}",
    )
    seen: set[int] = set()

    async def receive_all() -> None:
        while len(seen) < args.components:
            data, component = await connection.recvfrom()
            if component not in seen:
                seen.add(component)
                emit("data", component=component, payload=data[1:].decode(errors="replace"))

    await exchange(args, reader, connection.sendto, [receive_all()])
    await connection.close()


async def exchange(
    args: argparse.Namespace,
    reader: asyncio.StreamReader,
    send: Callable[[bytes, int], Awaitable[None]],
    background: list[Coroutine[Any, Any, None]],
) -> None:
    """Send media and run ``background`` (receivers...) until the parent says quit."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(send_media(send, args.components, args.role.encode(), stop))]
    tasks += [asyncio.create_task(coroutine) for coroutine in background]
    try:
        while (await read_line(reader)).get("cmd") != "quit":
            pass
    except EOFError:
        pass
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", choices=["icerelay", "aioice"], default="icerelay")
    parser.add_argument("--role", choices=["controlling", "controlled"], required=True)
    parser.add_argument("--host", required=True, help="local IP to gather host candidates on")
    parser.add_argument("--components", type=int, default=1)
    parser.add_argument("--stun", help="STUN server host:port")
    parser.add_argument("--turn", help="TURN server host:port (UDP)")
    parser.add_argument("--turn-user", default="")
    parser.add_argument("--turn-password", default="")
    parser.add_argument("--relay-only", action="store_true")
    parser.add_argument(
        "--nomination",
        choices=[n.value for n in Nomination],
        default=Nomination.REGULAR.value,
        help="icerelay only (aioice always nominates aggressively)",
    )
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    reader = await stdin_reader()
    if args.impl == "icerelay":
        await run_icerelay(args, reader)
    else:
        await run_aioice(args, reader)
    emit("closed")


if __name__ == "__main__":
    asyncio.run(main())
