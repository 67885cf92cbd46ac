"""Run icerelay's media relay (``RelayService``) in a process of its own, like rtpengine runs.

Two ways, same settings (:func:`start_relay` ``mode``):

- ``"serve"``: the product, ``python -m icerelay serve --config FILE`` with a ``[relay]`` section
  (and STUN off, so that no test fights over 3478). Used automatically once ``icerelay serve``
  has the relay (``Config`` has a ``relay`` section).
- ``"service"``: ``python -m tests.support.relayd --ng-port N ...``, a few lines that run
  ``RelayService`` alone (what the benchmark uses, and the fallback before the above exists).

Either serves until SIGTERM/SIGINT, then stops gracefully, which ends every session and writes its
accounting record (so a test can read the SQLite store after :meth:`RelayProcess.stop`).

:class:`RelayThread` runs ``RelayService`` on a thread of the test instead, for tests that read
its counters and records directly.

Why a process and not a thread of the test: Kamailio, SIPp and rtpengine are processes too, so
the relay's control and media sockets are exercised across processes exactly as in production,
the benchmark can read the relay's own RSS and CPU time, and the GIL of the test runner does not
slow down the relay it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.process import read_log, spawn_logged, stop_group, wait_until
from tests.support.rtpengine import NgClient

if TYPE_CHECKING:
    from icerelay.daemon.relay_config import RelayServiceConfig
    from icerelay.relay.sessions import SessionRecord

__all__ = ["RelayProcess", "RelayThread", "start_relay"]


@dataclass
class RelayProcess:
    """A running relay subprocess."""

    process: subprocess.Popen[bytes]
    ng_port: int
    port_range: tuple[int, int]
    workdir: Path
    accounting: Path
    host: str = "127.0.0.1"
    argv: list[str] = field(default_factory=list)
    mode: str = "service"

    @property
    def log_path(self) -> Path:
        return self.workdir / "icerelay-relay.log"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return read_log(self.log_path)

    def client(self, timeout: float = 2.0) -> NgClient:
        return NgClient(self.host, self.ng_port, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (graceful: sessions end, records are written), SIGKILL if it hangs."""
        return stop_group(self.process, timeout=timeout)


def serve_has_relay() -> bool:
    """Whether ``icerelay serve`` of this checkout runs the media relay (a ``[relay]`` section)."""
    from icerelay.daemon.config import Config

    return "relay" in Config.model_fields


def start_relay(
    workdir: Path,
    *,
    ng_port: int,
    port_min: int,
    port_max: int,
    host: str = "127.0.0.1",
    delete_delay: float = 0.0,
    log_level: str = "info",
    mode: str = "auto",
    ready_timeout: float = 15.0,
    dataplane: str = "userspace",
) -> RelayProcess:
    """Start the relay subprocess and wait until it answers an ng ``ping``.

    ``mode``: ``"serve"``, ``"service"`` or ``"auto"`` (serve when it has the relay).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    accounting = workdir / "sessions.sqlite3"
    if mode == "auto":
        mode = "serve" if serve_has_relay() else "service"
    if mode == "serve":
        from icerelay.daemon.config import Config

        config = workdir / "icerelay.toml"
        # Only the relay: STUN (and TURN, when serve has it) would want 3478, which other tests use.
        others = "".join(
            f"[{section}]\nenabled = false\n\n"
            for section in ("stun", "turn")
            if section in Config.model_fields
        )
        if "http" in Config.model_fields:
            # The HTTP listener's fixed default port would clash between parallel tests.
            others += '[http]\nlisten = ""\n\n'
        config.write_text(
            others + "[log]\n"
            f'level = "{log_level}"\n'
            "\n[relay]\n"
            "enabled = true\n"
            f'ng_listen = "{host}:{ng_port}"\n'
            "ng_tcp = false\n"
            'mediaproxy_socket = ""\n'
            f'address_ipv4 = "{host}"\n'
            f"port_min = {port_min}\n"
            f"port_max = {port_max}\n"
            f"delete_delay = {delete_delay}\n"
            f'accounting = "sqlite:{accounting}"\n'
            f'dataplane = "{dataplane}"\n'
        )
        argv = [sys.executable, "-m", "icerelay", "serve", "--config", str(config)]
    elif mode == "service":
        argv = [
            sys.executable, "-m", "tests.support.relayd",
            "--host", host,
            "--ng-port", str(ng_port),
            "--port-min", str(port_min),
            "--port-max", str(port_max),
            "--delete-delay", str(delete_delay),
            "--accounting", str(accounting),
            "--log-level", log_level,
            "--dataplane", dataplane,
        ]  # fmt: skip
    else:
        raise ValueError(f"unknown relay mode {mode!r}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICERELAY_")}
    # The checkout under test must be importable as `tests.support` from the subprocess.
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    process = spawn_logged(argv, workdir / "icerelay-relay.log", cwd=root, env=env)
    relay = RelayProcess(
        process, ng_port, (port_min, port_max), workdir, accounting, host, argv, mode
    )
    with NgClient(host, ng_port, timeout=0.2, retries=1) as client:
        if wait_until(process, client.ping, ready_timeout):
            return relay
    relay.stop()
    raise RuntimeError(
        f"icerelay relay did not answer ng ping on {host}:{ng_port} "
        f"(exit={process.returncode}); log:\n{relay.log()[-3000:]}"
    )


class RelayThread:
    """Our relay service running on its own event loop in a background thread."""

    def __init__(self, config: RelayServiceConfig) -> None:
        from icerelay.daemon.relay_service import RelayService

        self.records: list[SessionRecord] = []
        self.service = RelayService(config, records=self.records.append)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RelayThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Generous: the machine running the suite may be loaded (stop itself takes milliseconds).
        asyncio.run_coroutine_threadsafe(self.service.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def wait_for_records(self, count: int, timeout: float) -> list[SessionRecord]:
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.records)


async def _serve(args: argparse.Namespace) -> None:
    from icerelay.daemon.relay_config import RelayServiceConfig
    from icerelay.daemon.relay_service import RelayService

    config = RelayServiceConfig(
        ng_listen=(args.host, args.ng_port),
        ng_tcp=False,
        mediaproxy_socket="",
        address_ipv4=args.host,
        port_min=args.port_min,
        port_max=args.port_max,
        delete_delay=args.delete_delay,
        accounting=f"sqlite:{args.accounting}" if args.accounting else "",
        dataplane=args.dataplane,
    )
    service = RelayService(config)
    await service.start()
    # As `icerelay serve` does once its services run (daemon/compose.py).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await service.stop()


def main(argv: list[str] | None = None) -> int:
    from icerelay.aio.loop import loop_factory
    from icerelay.daemon.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m tests.support.relayd")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ng-port", type=int, required=True)
    parser.add_argument("--port-min", type=int, default=16384)
    parser.add_argument("--port-max", type=int, default=32767)
    parser.add_argument("--delete-delay", type=float, default=0.0)
    parser.add_argument("--accounting", default="", help="SQLite file; empty: none")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--dataplane", default="userspace", help="auto, kernel or userspace")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, "kv")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
