"""BatchReader (icerelay.aio.batch), the TURN service's UDP reader: bounded, chunked, fair."""

from __future__ import annotations

import asyncio
import socket

from icerelay.aio.batch import BatchReader, Received


def _pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return receiver, sender


def test_reads_at_most_limit_per_wake_up_in_chunks() -> None:
    async def scenario() -> list[list[bytes]]:
        loop = asyncio.get_running_loop()
        receiver, sender = _pair()
        batches: list[list[bytes]] = []

        def handler(tag: str, batch: list[Received]) -> None:
            assert tag == "listen"
            batches.append([data for data, _source in batch])

        reader = BatchReader(loop, receiver, handler, "listen", limit=5, chunk=2)
        for index in range(7):
            sender.send(b"%d" % index)
        reader.start()
        for _ in range(20):
            await asyncio.sleep(0.01)
            if sum(map(len, batches)) == 7:
                break
        reader.close()
        reader.close()  # idempotent
        sender.close()
        receiver.close()
        return batches

    batches = asyncio.run(scenario())
    # First wake-up: 5 datagrams in chunks of 2; the rest on the next one.
    assert batches == [[b"0", b"1"], [b"2", b"3"], [b"4"], [b"5", b"6"]]


def test_limit_can_change_and_a_handler_may_close_the_reader() -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        receiver, sender = _pair()
        sizes: list[int] = []

        def handler(_tag: None, batch: list[Received]) -> None:
            sizes.append(len(batch))
            reader.close()

        reader = BatchReader(loop, receiver, handler, None, limit=1, chunk=1)
        reader.limit = 3
        reader.chunk = 1
        for _ in range(3):
            sender.send(b"x")
        reader.start()
        await asyncio.sleep(0.05)
        sender.close()
        receiver.close()
        return sizes

    assert asyncio.run(scenario()) == [1]


def test_socket_errors_go_to_on_error_which_may_stop_reading() -> None:
    async def scenario() -> tuple[list[str], list[int]]:
        loop = asyncio.get_running_loop()
        receiver, sender = _pair()
        errors: list[str] = []
        sizes: list[int] = []
        # A datagram to a closed port: Linux reports ECONNREFUSED on the connected socket.
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        address = closed.getsockname()
        closed.close()
        receiver.connect(address)
        receiver.send(b"ping")
        await asyncio.sleep(0.05)

        def on_error(tag: int, error: OSError) -> bool:
            errors.append(f"{tag} {type(error).__name__}")
            return False

        def handler(_tag: int, batch: list[Received]) -> None:
            sizes.append(len(batch))

        reader = BatchReader(loop, receiver, handler, 7, limit=4, on_error=on_error)
        reader.start()
        await asyncio.sleep(0.05)
        reader.close()
        sender.close()
        receiver.close()
        return errors, sizes

    errors, sizes = asyncio.run(scenario())
    assert errors == ["7 ConnectionRefusedError"] and sizes == []
