"""The daemon's HTTP listener: Prometheus ``/metrics``, the live page ``/`` and ``/api/...``.

Served by aiohttp on the daemon's event loop (``[http] listen``, 127.0.0.1:9470 by default).
Everything it shows is read from the running services when asked (:mod:`.views`,
:mod:`.metrics`); it changes state only through the services' own entry points (a call deleted
through the relay's worker, drain and reload through the daemon).

Routes::

    GET    /                          the live page (static files shipped in the package)
    GET    /static/{name}             its script and style sheet
    GET    /metrics                   Prometheus text format
    GET    /api/sessions              {"sessions": [...]}
    GET    /api/sessions/{call_id}    {"call_id": ..., "sessions": [...]}, 404 if unknown
    DELETE /api/sessions/{call_id}    ends the call now: {"deleted": N}, 404 if unknown
    GET    /api/statistics            relay, TURN and STUN figures
    GET    /api/turn/allocations      {"allocations": [...]}
    GET    /api/events                server-sent events: one ``snapshot`` per update_interval
    POST   /api/drain                 drain the daemon (SIGUSR1 does the same)
    POST   /api/reload                reload the configuration (SIGHUP does the same)

Requests that change something must carry the header ``X-Icerelay-Request: 1``: a web page in
the operator's browser cannot add it without a CORS preflight (which is never granted), so a
hostile page cannot drain the relay through the browser (cross-site request forgery). On a
loopback listener the Host header must name a loopback address too, which defeats DNS
rebinding (a hostile name that resolves to 127.0.0.1 reading the API).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from icerelay.aio.addresses import bound_socket
from icerelay.daemon.cluster import ClusterService
from icerelay.daemon.config import HttpConfig
from icerelay.daemon.metrics import new_registry
from icerelay.daemon.relay_service import RelayService
from icerelay.daemon.stun_service import StunService
from icerelay.daemon.turn_service import TurnService
from icerelay.stun import Address

__all__ = ["REQUEST_HEADER", "DaemonControl", "HttpService", "ServicesControl"]

logger = logging.getLogger("icerelay.http")

#: The header a state-changing request must carry (see the module docstring).
REQUEST_HEADER = "X-Icerelay-Request"

#: Live pages (event streams) served at once; more get 503. Each costs a snapshot per update
#: interval, so a client opening streams in a loop must not be able to multiply that without end.
MAX_EVENT_STREAMS = 32

#: The page's files, shipped inside the package (no build step, nothing fetched from outside).
_STATIC = {"app.js": "application/javascript", "app.css": "text/css"}


@runtime_checkable
class DaemonControl(Protocol):
    """What the composed daemon offers to HTTP (:class:`icerelay.daemon.compose.Daemon`:
    SIGHUP calls :meth:`reload`, SIGUSR1 :meth:`drain`)."""

    draining: bool

    async def reload(self) -> str:
        """Re-read the configuration and apply what can change live; a one-line summary."""

    async def drain(self) -> None:
        """Take no new sessions or allocations; stop once the last one ended."""


class ServicesControl:
    """A minimal :class:`DaemonControl` over the services, until the daemon provides one.

    drain: the TURN server drains (it refuses new allocations and stops the daemon once its
    last allocation is gone); the relay keeps serving. reload: not available (raises).
    """

    def __init__(self, services: Sequence[object]) -> None:
        self._services = services
        self.draining = False

    async def reload(self) -> str:
        raise NotImplementedError("reload needs the composed daemon (SIGHUP handler)")

    async def drain(self) -> None:
        self.draining = True
        for service in self._services:
            if isinstance(service, TurnService):
                service.drain()


class HttpService:
    """``[http]`` served (``name = "http"``); :meth:`attach` hands it the other services."""

    name = "http"

    def __init__(self, config: HttpConfig, services: Sequence[object] = ()) -> None:
        self.config = config
        self.services: list[object] = list(services)
        #: Set by the daemon; without it a :class:`ServicesControl` stands in.
        self.control: DaemonControl | None = None
        self.registry = new_registry(lambda: self.services)
        self._runner: web.AppRunner | None = None
        self._address: Address | None = None
        self._closing = asyncio.Event()
        self._event_streams = 0
        # One encoded snapshot per update interval, shared by every open page: the cost of the
        # live page does not grow with the number of pages watching it.
        self._snapshot_cache: tuple[float, bytes] | None = None
        self.max_event_streams = MAX_EVENT_STREAMS
        self.app = self._make_app()

    def attach(self, services: Sequence[object]) -> None:
        """Show these services (the daemon's list; this one is skipped)."""
        self.services = [service for service in services if service is not self]
        if self.control is None:
            self.control = ServicesControl(self.services)

    @property
    def address(self) -> Address:
        """Where it listens (the real port when configured with port 0)."""
        if self._address is None:
            raise RuntimeError("the HTTP service is not started")
        return self._address

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:9470``."""
        host, port = self.address.host, self.address.port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listener (OSError naming the socket if it cannot) and serve."""
        listen = self.config.listen
        if listen is None:
            return
        try:
            sock = bound_socket(Address(listen.host, listen.port), socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(exc.errno, f"HTTP tcp on {listen}: {exc.strerror}") from None
        self._closing.clear()
        # A short shutdown: open event streams must not hold up the daemon's stop.
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        host, port = sock.getsockname()[:2]
        self._address = Address(host, port)
        logger.info("http.started", extra={"listen": str(self._address), "url": self.url})

    async def stop(self) -> None:
        """Close the listener and the live page's event streams."""
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- the application ----------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/sessions", self._sessions)
        app.router.add_get("/api/sessions/{call_id}", self._session)
        app.router.add_delete("/api/sessions/{call_id}", self._delete)
        app.router.add_get("/api/statistics", self._statistics)
        app.router.add_get("/api/turn/allocations", self._allocations)
        app.router.add_get("/api/cluster", self._cluster)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/drain", self._drain)
        app.router.add_post("/api/reload", self._reload)
        return app

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self._host_allowed(request.host):
            return _error(421, "the Host header does not name this listener")
        if request.method not in ("GET", "HEAD") and request.headers.get(REQUEST_HEADER) != "1":
            return _error(403, f"state-changing requests need the header {REQUEST_HEADER}: 1")
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    def _host_allowed(self, host: str) -> bool:
        listen = self.config.listen
        if listen is None or not ipaddress.ip_address(listen.host).is_loopback:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def _relay(self) -> RelayService | None:
        return next((s for s in self.services if isinstance(s, RelayService)), None)

    def _turn(self) -> TurnService | None:
        return next((s for s in self.services if isinstance(s, TurnService)), None)

    async def _index(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(text=_asset("index.html"), content_type="text/html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(text=_asset(name), content_type=_STATIC[name])

    async def _metrics(self, _request: web.Request) -> web.StreamResponse:
        body = generate_latest(self.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    def sessions(self) -> list[dict[str, Any]]:
        """Every live relay session (empty without a relay)."""
        relay = self._relay()
        return relay.sessions_view() if relay is not None else []

    def allocations(self) -> list[dict[str, Any]]:
        """Every live TURN allocation of this process (empty without TURN)."""
        turn = self._turn()
        return turn.allocations_view() if turn is not None else []

    def statistics(self) -> dict[str, Any]:
        """Figures of every service, for /api/statistics."""
        data: dict[str, Any] = {
            "time": round(time.time(), 3),
            "draining": bool(self.control is not None and self.control.draining),
        }
        relay = self._relay()
        if relay is not None:
            data["relay"] = relay.ops.statistics_view()
        turn = self._turn()
        if turn is not None and turn.running_engine is not None:
            data["turn"] = turn.status()
        for service in self.services:
            if isinstance(service, StunService):
                data["stun"] = service.counters.snapshot()
        return data

    async def _sessions(self, _request: web.Request) -> web.StreamResponse:
        return _json({"sessions": self.sessions()})

    async def _session(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call_id"]
        relay = self._relay()
        sessions = relay.session_view(call_id) if relay is not None else []
        if not sessions:
            return _error(404, f"unknown call {call_id!r}")
        return _json({"call_id": call_id, "sessions": sessions})

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call_id"]
        relay = self._relay()
        if relay is None:
            return _error(404, "no media relay in this daemon")
        deleted = await relay.delete_call(call_id)
        if not deleted:
            return _error(404, f"unknown call {call_id!r}")
        return _json({"call_id": call_id, "deleted": deleted})

    async def _statistics(self, _request: web.Request) -> web.StreamResponse:
        return _json(self.statistics())

    async def _allocations(self, _request: web.Request) -> web.StreamResponse:
        return _json({"allocations": self.allocations()})

    async def _cluster(self, _request: web.Request) -> web.StreamResponse:
        cluster = next((s for s in self.services if isinstance(s, ClusterService)), None)
        if cluster is None:
            return _error(404, "this daemon is not in a cluster ([cluster] redis is empty)")
        return _json(cluster.cluster_view())

    async def _drain(self, _request: web.Request) -> web.StreamResponse:
        control = self.control or ServicesControl(self.services)
        await control.drain()
        logger.info("http.drain")
        return _json({"draining": True})

    async def _reload(self, _request: web.Request) -> web.StreamResponse:
        control = self.control or ServicesControl(self.services)
        try:
            summary = await control.reload()
        except NotImplementedError as exc:
            return _error(501, str(exc))
        logger.info("http.reload", extra={"summary": summary})
        return _json({"reloaded": True, "summary": summary})

    def snapshot(self) -> dict[str, Any]:
        """What one live-page update carries."""
        relay = self._relay()
        return {
            "time": round(time.time(), 3),
            "draining": bool(self.control is not None and self.control.draining),
            "sessions": self.sessions(),
            "allocations": self.allocations(),
            "relayed": relay.ops.traffic_totals() if relay is not None else None,
        }

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self._event_streams >= self.max_event_streams:
            return _error(503, f"too many live pages open (at most {self.max_event_streams})")
        self._event_streams += 1
        try:
            return await self._stream_events(request)
        finally:
            self._event_streams -= 1

    async def _stream_events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        interval = self.config.update_interval
        try:
            # retry: how long the browser waits before reconnecting after the daemon restarts.
            await response.write(b"retry: 2000\n\n")
            while not self._closing.is_set():
                await response.write(self._encoded_snapshot(interval))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await self._closing.wait()
        except ConnectionError:
            pass  # the page was closed
        return response


    def _encoded_snapshot(self, interval: float) -> bytes:
        now = time.monotonic()
        cached = self._snapshot_cache
        if cached is not None and now - cached[0] < interval / 2:
            return cached[1]
        data = json.dumps(self.snapshot(), separators=(",", ":"))
        encoded = f"event: snapshot\ndata: {data}\n\n".encode()
        self._snapshot_cache = (now, encoded)
        return encoded


def _asset(name: str) -> str:
    return resources.files("icerelay.daemon").joinpath("web", name).read_text("utf-8")


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=None, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)
