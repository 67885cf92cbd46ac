"""The cluster service: calls shared in Redis, heartbeats, failover, any instance answers.

``[cluster] redis`` set, each relay instance runs one of these beside its relay service:

- **Writer**: every ``write_interval`` the calls whose state changed (signalling, latching,
  streams ending) are written to Redis in one pipeline; unchanged calls every
  ``counters_interval`` (fresh counters). Nothing of this is on the packet path.
- **Heartbeat**: every ``heartbeat_interval`` a key with a TTL of ``heartbeat_ttl`` says this
  instance is alive and where its ng port is.
- **Failover**: every ``heartbeat_interval`` the other instances' heartbeats are checked. When
  one expired and it had calls, the survivors race for a lock (``SET NX PX``); the winner
  adopts every call: it binds the dead instance's relay addresses and ports (the floating IP
  that moved to it), restores the sessions (:mod:`.adopted`) and media flows again. The calls
  are then its own: they end normally and their records are written here, once. They are
  marked in Redis so that the dead instance, restarted, does not recover them a second time.
- **Any instance answers for any call**: an ng command for a call this instance does not hold
  goes to the adopted calls, or to the live owner (its datagram forwarded, :mod:`.forward`).
- **Redis down**: the relay goes on relaying and accounting locally; the outage is logged once
  per ``log_interval``; when Redis answers again everything is written afresh. After an
  outage nobody is adopted for one TTL: every instance lost its heartbeat at the same time,
  and each must get the chance to heartbeat again first.

Split brain: an instance cut off from Redis but alive is taken for dead, and its calls are
adopted. On one host the adopter cannot bind ports still held (the adoption of those calls
fails, logged); across hosts the floating IP decides where packets go (keepalived with its own
health check). See the README's two-relay section.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from icerelay.aio.tasks import cancel_and_wait
from icerelay.control.mediaproxy.commands import parse_command as parse_mediaproxy
from icerelay.control.ng import (
    Command,
    Delete,
    NgRequest,
    Offer,
    Query,
    Reply,
    error_reply,
)
from icerelay.daemon.cluster.adopted import AdoptedCalls
from icerelay.daemon.cluster.forward import forward_ng
from icerelay.daemon.cluster.keys import Keys
from icerelay.daemon.cluster.recovery import take_recovery
from icerelay.daemon.cluster.turn_users import DirectorySettings
from icerelay.daemon.cluster.writer import CallWriter, Changes, EngineView
from icerelay.daemon.cluster_config import ClusterConfig
from icerelay.daemon.relay_service import RelayService
from icerelay.daemon.turn_service import TurnService
from icerelay.errors import ControlError, RelayError
from icerelay.net import Address, split_host_port
from icerelay.relay.dialogs import Session
from icerelay.relay.sessions import TerminationReason

__all__ = ["ClusterService"]

logger = logging.getLogger("icerelay.cluster")

# What a failing Redis raises through redis-py (its own errors, and socket errors that slip by).
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)

# Seconds an ng request may wait for Redis to say who owns its call; beyond that the request
# is handled here (Redis is then taken for down until the next heartbeat gets through).
_LOOKUP_TIMEOUT = 0.25

# Seconds a delete for a call between owners is kept for its adoption.
_DEFERRED_FOR = 30.0
# And at most this many (bounded memory, whatever the proxy sends).
_DEFERRED_MAX = 10_000

# Adoptions kept in Redis for the cluster view.
_ADOPTIONS_KEPT = 100


class ClusterService:
    """``icerelay serve``'s cluster member (``name = "cluster"``), beside a relay service.

    :param journal_position: the accounting journal's position of a call (records branch),
        written into its document.
    :param turn: a TURN service whose users, REST secrets and per-user quotas are read from
        Redis and enforced across instances (``[cluster] turn_users``): it is given the
        directory's settings here, before it starts, and each of its worker processes syncs
        with Redis on its own (:mod:`.turn_users`).
    """

    name = "cluster"

    def __init__(
        self,
        config: ClusterConfig,
        relay: RelayService,
        *,
        journal_position: Callable[[str], object] | None = None,
        turn: TurnService | None = None,
    ) -> None:
        self.config = config
        self.relay = relay
        #: The TURN service whose users, secrets and quotas live in Redis (``turn_users``).
        self.turn = turn
        if turn is not None:
            turn.external_users = True
            turn.directory = DirectorySettings(
                redis=config.redis,
                key_prefix=config.key_prefix,
                instance=config.instance,
                ttl=config.heartbeat_ttl,
                interval=config.heartbeat_interval,
            ).to_json()
        self.instance = config.instance
        self.keys = Keys(config.key_prefix)
        self.writer = CallWriter(
            config.instance,
            counters_interval=config.counters_interval,
            journal_position=journal_position,
        )
        #: Adopted calls, by the instance whose addresses and ports they use.
        self.adopted: dict[str, AdoptedCalls] = {}
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._timer_wake = asyncio.Event()
        self.redis_up = False
        self._last_outage_log = -math.inf
        # No adoption before this (loop time): after an outage, everyone's heartbeat is stale.
        self._adopt_after = 0.0
        self._view: dict[str, Any] = {}
        # Owners that did not answer a forwarded request: not asked again until this (loop
        # time). Deletes of their calls kept for the adoption (Call-ID -> command, deadline).
        self._write_lock = asyncio.Lock()
        # Set when the writer forgot what it wrote: the next write removes stale calls.
        self._stale_check = True
        # The calls of this instance's previous life still in Redis are to be adopted back
        # (the first heartbeat that reaches Redis does it); False once done, or when the
        # journal recovered them because Redis could not be asked (see recovery_skip).
        self._resume_pending = True
        self._unresponsive: dict[str, float] = {}
        self._deferred: dict[str, tuple[Command, float]] = {}
        # Counters for the cluster view and metrics.
        self.adoptions = 0
        self.calls_adopted = 0
        self.adoptions_failed = 0
        self.forwarded = 0
        self.forward_failures = 0
        self.write_failures = 0
        self.outages = 0

    # -- life cycle -----------------------------------------------------------------------------

    async def recovery_skip(self) -> set[str] | None:
        """The calls of this instance's previous life that the relay's journal must not record
        (run by the relay before its recovery): those adopted elsewhere, and those this
        instance adopts back from Redis -- each is recorded once, when it really ends. None
        when Redis cannot be asked: the journal records every call ``interrupted`` and none is
        adopted back (it would be recorded twice)."""
        recovery = await take_recovery(self.config)
        if recovery is None:
            self._resume_pending = False
            return None
        return recovery.skip

    async def start(self) -> None:
        """Connect (an unreachable Redis is not fatal: the relay works alone until it answers),
        register, and start heartbeat, writer, watcher and the adopted calls' timers."""
        config = self.config
        self._redis = aioredis.Redis.from_url(
            config.redis,
            decode_responses=True,
            socket_timeout=max(config.heartbeat_interval, 0.25),
            socket_connect_timeout=max(config.heartbeat_interval, 0.25),
        )
        self.relay.router = self._route
        self.relay.mediaproxy_router = self._route_mediaproxy
        if config.write_before_reply:
            self.relay.after_command = self._after_command
        await self._heartbeat()
        self._tasks = [
            asyncio.create_task(self._every(config.heartbeat_interval, self._heartbeat)),
            asyncio.create_task(self._every(config.write_interval, self._write)),
            asyncio.create_task(self._every(config.heartbeat_interval, self._watch)),
            asyncio.create_task(self._timers()),
        ]
        wildcard = ipaddress.ip_address(self.relay.ng_address.host).is_unspecified
        if not config.ng_address and wildcard:
            logger.warning(
                "cluster.ng_address_unknown",
                extra={"hint": "set cluster.ng_address: ng_listen is a wildcard address"},
            )
        logger.info(
            "cluster.started",
            extra={"instance": self.instance, "redis": _safe_url(config.redis)},
        )

    async def stop(self) -> None:
        """Adopted calls end (records written); this instance leaves the cluster cleanly, so
        nobody adopts the calls the relay is about to end."""
        # Cancelled until done: redis-py may swallow one cancellation (see aio.tasks).
        await cancel_and_wait(self._tasks)
        self._tasks = []
        now = asyncio.get_running_loop().time()
        calls = [call_id for view in self._engines() for call_id in view.engine.call_ids()]
        for group in list(self.adopted.values()):
            await group.shutdown(now)
        self.adopted.clear()
        self.relay.router = None
        self.relay.mediaproxy_router = None
        self.relay.after_command = None
        redis = self._redis
        self._redis = None
        if redis is None:
            return
        if self.redis_up:
            with contextlib.suppress(*_REDIS_ERRORS):
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self.keys.calls(self.instance), self.keys.alive(self.instance))
                    pipe.srem(self.keys.instances, self.instance)
                    if calls:
                        pipe.hdel(self.keys.owner, *calls)
                    await pipe.execute()
        with contextlib.suppress(*_REDIS_ERRORS):
            await redis.aclose()

    async def _every(self, interval: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except _REDIS_ERRORS as error:
                self._outage(error)
            except Exception:
                # A bug here must not stop heartbeats for good; it is logged loudly.
                logger.exception("cluster.job_failed")

    # -- Redis availability ---------------------------------------------------------------------

    def _outage(self, error: BaseException) -> None:
        now = time.monotonic()
        if self.redis_up:
            self.outages += 1
        self.redis_up = False
        self.writer.forget()
        self._stale_check = True
        if now - self._last_outage_log >= self.config.log_interval:
            self._last_outage_log = now
            logger.warning(
                "cluster.redis_unreachable",
                extra={
                    "instance": self.instance,
                    "reason": f"{type(error).__name__}: {error}",
                    "relaying": "local",
                },
            )

    def _back(self) -> None:
        if self.redis_up:
            return
        was_down = self._last_outage_log > -math.inf
        self.redis_up = True
        loop = asyncio.get_running_loop()
        self._adopt_after = loop.time() + self.config.heartbeat_ttl + self.config.heartbeat_interval
        if was_down:
            logger.info("cluster.redis_back", extra={"instance": self.instance})

    # -- heartbeat ------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        redis = self._redis
        if redis is None:
            return
        keys = self.keys
        beat = json.dumps(
            {
                "ng": self._ng_address(),
                "calls": self._call_count(),
                "time": time.time(),
            }
        )
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.alive(self.instance), beat, px=int(self.config.heartbeat_ttl * 1000))
                pipe.sadd(keys.instances, self.instance)
                # Every time: a Redis that restarted empty may not have said so (redis-py
                # reconnects by itself), and an adopter needs these settings.
                pipe.set(keys.info(self.instance), self._settings())
                pipe.hlen(keys.calls(self.instance))
                results = await pipe.execute()
        except _REDIS_ERRORS as error:
            self._outage(error)
            return
        self._back()
        if self._resume_pending:
            if int(results[-1]) > 0:
                # Calls of this instance's previous life (nobody adopted them: alone, or
                # restarted within the TTL): this instance adopts them itself, media goes
                # on. Its journal left them out of its recovery (recovery_skip).
                try:
                    await self._adopt(self.instance)
                except _REDIS_ERRORS as error:
                    self._outage(error)
                    return
            self._resume_pending = False
            return
        if int(results[-1]) < self.writer.written:
            # Redis lost data (restarted without persistence): write everything again.
            logger.info("cluster.resync", extra={"instance": self.instance})
            self.writer.forget()
            self._stale_check = True

    def _ng_address(self) -> str:
        if self.config.ng_address:
            return self.config.ng_address
        ng = self.relay.ng_address
        return f"{_bracket(ng.host)}:{ng.port}"

    def _settings(self) -> str:
        return json.dumps(self.relay.config.model_dump(mode="json"))

    def _call_count(self) -> int:
        return self.relay.engine.call_count + sum(
            group.engine.call_count for group in self.adopted.values()
        )

    # -- writer ---------------------------------------------------------------------------------

    def _engines(self) -> list[EngineView]:
        views = [EngineView(self.instance, self.relay.engine)]
        views.extend(EngineView(origin, group.engine) for origin, group in self.adopted.items())
        return views

    async def _write(self) -> None:
        redis = self._redis
        if redis is None or not self.redis_up or self._resume_pending:
            # Pending, the previous life's calls in Redis are not stale: they are adopted next.
            return
        # Under the lock, the state read and its write go together: a write computed before a
        # command's own write must not land after it.
        async with self._write_lock:
            now = time.time()
            engines = self._engines()
            calls = sum(view.engine.call_count for view in engines)
            # Unchanged calls refreshed evenly over counters_interval, not all at once.
            budget = 1 + int(calls * self.config.write_interval / self.config.counters_interval)
            changes = self.writer.changes(
                engines, now, self.relay.handler.wall_offset, refresh_budget=budget
            )
            stale_check = self._stale_check
            if stale_check:
                # After an outage the writer forgot what it wrote: calls that ended meanwhile
                # are still in Redis, and must not be adopted as ghosts one day.
                live = {c for view in engines for c in view.engine.call_ids()}
                written = {_text(c) for c in await redis.hkeys(self.keys.calls(self.instance))}
                changes.gone.extend(sorted(written - live - set(changes.gone)))
            if changes.write or changes.gone:
                await self._send(redis, changes)
            self.writer.confirm(changes, now)
            if stale_check:
                self._stale_check = False

    async def _after_command(self, command: Command) -> None:
        """Write the call an ng command changed now, before the proxy gets the reply: a call
        the proxy was told about is in Redis if this instance dies the next moment."""
        call_id = getattr(command, "call_id", None)
        redis = self._redis
        if not isinstance(call_id, str) or redis is None or not self.redis_up:
            return
        if isinstance(command, Query):
            return
        try:
            async with asyncio.timeout(_LOOKUP_TIMEOUT), self._write_lock:
                now = time.time()
                changes = Changes()
                view, sessions = self._sessions_of(call_id)
                if sessions:
                    changes.write[call_id] = self.writer.document(
                        view, sessions, now, self.relay.handler.wall_offset
                    )
                else:
                    changes.gone.append(call_id)
                await self._send(redis, changes)
                # The periodic writer goes on from here (its fingerprints taken afresh).
                self.writer.note_written(call_id, bool(sessions), now)
        except (*_REDIS_ERRORS, TimeoutError) as error:
            self._outage(error)

    async def _send(self, redis: aioredis.Redis, changes: Changes) -> None:
        keys = self.keys
        try:
            async with redis.pipeline(transaction=False) as pipe:
                if changes.write:
                    pipe.hset(keys.calls(self.instance), mapping=_mapping(changes.write))
                    pipe.hset(keys.owner, mapping=dict.fromkeys(changes.write, self.instance))
                if changes.gone:
                    pipe.hdel(keys.calls(self.instance), *changes.gone)
                    pipe.hdel(keys.owner, *changes.gone)
                await pipe.execute()
        except _REDIS_ERRORS:
            self.write_failures += 1
            raise

    # -- failover -------------------------------------------------------------------------------

    async def _watch(self) -> None:
        redis = self._redis
        if redis is None or not self.redis_up:
            return
        keys = self.keys
        members = sorted(_text(member) for member in await redis.smembers(keys.instances))
        async with redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.get(keys.alive(member))
                pipe.hlen(keys.calls(member))
            pipe.lrange(keys.adoptions, 0, 19)
            results = await pipe.execute()
        instances: dict[str, Any] = {}
        dead: list[str] = []
        for position, member in enumerate(members):
            beat, calls = results[2 * position], int(results[2 * position + 1])
            info = _json(beat) if beat else None
            instances[member] = {
                "alive": beat is not None,
                "ng": info.get("ng") if info else None,
                "calls": calls,
            }
            if beat is None and member != self.instance:
                dead.append(member)
        self._view = {
            "instances": instances,
            "adoptions": [_json(item) for item in results[-1]],
        }
        now = asyncio.get_running_loop().time()
        for call_id, (_, until) in list(self._deferred.items()):
            if until <= now:
                del self._deferred[call_id]
        if now < self._adopt_after:
            return
        for member in dead:
            if instances[member]["calls"]:
                await self._adopt(member)
            else:
                # Gone without calls (or all adopted): it leaves the list.
                await redis.srem(keys.instances, member)

    async def _adopt(self, dead: str) -> None:
        """Adopt every call of ``dead`` if this instance wins the lock."""
        redis = self._redis
        assert redis is not None
        keys = self.keys
        lock = keys.adopt_lock(dead)
        won = await redis.set(lock, self.instance, nx=True, px=int(self.config.adopt_lock * 1000))
        if not won:
            return
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        documents = {
            _text(call_id): _text(text)
            for call_id, text in (await redis.hgetall(keys.calls(dead))).items()
        }
        adopted: list[str] = []
        failed: list[str] = []
        for call_id, text in documents.items():
            if self._holds(call_id):
                # Already here (adopted before, or a re-INVITE made it ours meanwhile).
                adopted.append(call_id)
                continue
            try:
                await self._restore_call(call_id, text, loop.time())
            except (RelayError, ValueError, KeyError, TypeError) as error:
                failed.append(call_id)
                logger.warning(
                    "cluster.adopt_failed",
                    extra={"dead": dead, "call_id": call_id, "reason": str(error)},
                )
                continue
            adopted.append(call_id)
        async with self._write_lock:
            await self._record_adoption(redis, dead, adopted, failed, started)

    async def _record_adoption(
        self,
        redis: aioredis.Redis,
        dead: str,
        adopted: list[str],
        failed: list[str],
        started: float,
    ) -> None:
        keys = self.keys
        lock = keys.adopt_lock(dead)
        wall = time.time()
        changes = Changes()
        for call_id in adopted:
            view, sessions = self._sessions_of(call_id)
            if sessions:
                changes.write[call_id] = self.writer.document(
                    view, sessions, wall, self.relay.handler.wall_offset
                )
        entry = json.dumps(
            {
                "dead": dead,
                "adopter": self.instance,
                "calls": len(adopted),
                "failed": len(failed),
                "time": wall,
                "seconds": round(time.perf_counter() - started, 4),
            }
        )
        async with redis.pipeline(transaction=True) as pipe:
            # Deleted first: ``dead`` may be this instance's previous life.
            pipe.delete(keys.calls(dead))
            if changes.write:
                pipe.hset(keys.calls(self.instance), mapping=_mapping(changes.write))
                pipe.hset(keys.owner, mapping=dict.fromkeys(changes.write, self.instance))
            if adopted:
                pipe.hset(keys.adopted(dead), mapping=dict.fromkeys(adopted, self.instance))
            if dead != self.instance:
                pipe.srem(keys.instances, dead)
            pipe.lpush(keys.adoptions, entry)
            pipe.ltrim(keys.adoptions, 0, _ADOPTIONS_KEPT - 1)
            pipe.delete(lock)
            await pipe.execute()
        self.adoptions += 1
        self.calls_adopted += len(adopted)
        self.adoptions_failed += len(failed)
        self._timer_wake.set()
        logger.info(
            "cluster.adopted",
            extra={"dead": dead, "calls": len(adopted), "failed": len(failed)},
        )

    async def _restore_call(self, call_id: str, text: str, now: float) -> None:
        document = json.loads(text)
        origin = str(document["origin"])
        group = await self._group(origin)
        async with group.lock:
            for snapshot in document["sessions"]:
                group.restore(snapshot, now)
            failure = await group.apply_events()
            deferred = self._deferred.pop(call_id, None)
            if failure is None and deferred is not None and deferred[1] > now:
                # The BYE came while the call was between owners.
                group.handler.handle(deferred[0], now)
                failure = await group.apply_events()
            if failure is not None:
                # The ports are still held: the old instance is alive after all (split
                # brain on one host). This call cannot be relayed here, and its record is
                # not ours to write -- unless it is this instance's own call of a previous
                # life, which its journal did not record: it ends here, recorded once.
                if origin != self.instance:
                    group.discard.add(call_id)
                with contextlib.suppress(RelayError):
                    group.engine.delete(
                        call_id, now, delay=0, reason=TerminationReason.RELAY_FAILURE
                    )
                await group.apply_events()
                raise failure

    async def _group(self, origin: str) -> AdoptedCalls:
        group = self.adopted.get(origin)
        if group is not None:
            return group
        redis = self._redis
        assert redis is not None
        settings = await redis.get(self.keys.info(origin))
        if settings is None:
            raise RelayError(f"no relay settings of {origin} in Redis")
        group = AdoptedCalls(
            origin,
            json.loads(settings),
            self.relay.dataplane,
            record=self.relay.session_ended,
            deleting=self.relay.session_deleting,
            wall_offset=self.relay.handler.wall_offset,
            # This instance's own calls of a previous life share the relay's pool, so that
            # new calls are not given their ports.
            pool=self.relay.pool if origin == self.instance else None,
        )
        self.adopted[origin] = group
        return group

    def _holds(self, call_id: str) -> bool:
        return self.relay.engine.has_call(call_id) or self._group_of(call_id) is not None

    def _group_of(self, call_id: str) -> AdoptedCalls | None:
        for group in self.adopted.values():
            if group.engine.has_call(call_id):
                return group
        return None

    def _sessions_of(self, call_id: str) -> tuple[EngineView, list[Session]]:
        views = self._engines()
        for view in views:
            sessions = [s for s in view.engine.live_sessions() if s.call_id == call_id]
            if sessions:
                return view, sessions
        return views[0], []

    async def _timers(self) -> None:
        """Run the adopted engines' timers (the relay's own engine has its own)."""
        loop = asyncio.get_running_loop()
        while True:
            self._timer_wake.clear()
            deadlines = [
                deadline
                for group in self.adopted.values()
                if (deadline := group.engine.next_timer()) is not None
            ]
            delay = None if not deadlines else max(0.0, min(deadlines) - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._timer_wake.wait()
                continue
            now = loop.time()
            for group in list(self.adopted.values()):
                deadline = group.engine.next_timer()
                if deadline is not None and deadline <= now:
                    try:
                        await group.tick(now)
                    except Exception:
                        logger.exception("cluster.timer_failed", extra={"origin": group.origin})

    # -- any instance answers for any call ------------------------------------------------------

    async def _route(self, request: NgRequest, data: bytes, now: float) -> bytes | None:
        command = request.command
        call_id = getattr(command, "call_id", None)
        if not isinstance(call_id, str) or self.relay.engine.has_call(call_id):
            return None
        group = self._group_of(call_id)
        if group is None and isinstance(command, Offer) and command.to_tag is None:
            # An initial offer of a call this instance does not know: a new call, it is
            # ours (no Redis round trip on the path of every new call).
            return None
        if group is None and self.redis_up and self._redis is not None:
            try:
                # Bounded: a Redis that stopped answering must not hold up the proxy.
                async with asyncio.timeout(_LOOKUP_TIMEOUT):
                    owner, beat = await self._owner_of(call_id)
            except (*_REDIS_ERRORS, TimeoutError) as error:
                self._outage(error)
                return None
            if owner is not None and owner != self.instance:
                if beat is not None and self._missed_beats(beat):
                    # Its heartbeats stopped (killed, most likely): do not wait for it.
                    self._unresponsive[owner] = (
                        now + self.config.heartbeat_ttl + self.config.heartbeat_interval
                    )
                if beat is not None and self._unresponsive.get(owner, -math.inf) <= now:
                    reply = await self._forward(data, owner, beat)
                    if reply is not None:
                        return reply
                    # Killed, most likely, with its heartbeat not expired yet: do not make
                    # every request wait for it until it is adopted (the worker is serial).
                    self._unresponsive[owner] = (
                        now + self.config.heartbeat_ttl + self.config.heartbeat_interval
                    )
                if beat is None:
                    # The owner is dead and not adopted yet: adopt now rather than let the
                    # proxy's request open a second session with other ports.
                    with contextlib.suppress(*_REDIS_ERRORS):
                        await self._adopt(owner)
                group = self._group_of(call_id)
                if group is None:
                    return self.relay.protocol.reply(
                        request, self._unreachable(command, call_id, owner, now), now
                    )
        if group is None:
            return None
        async with group.lock:
            result = group.handler.handle(command, now)
            await group.apply_events()
        self._timer_wake.set()
        if self.config.write_before_reply:
            await self._after_command(command)
        return self.relay.protocol.reply(request, result, now)

    async def _route_mediaproxy(self, data: bytes, now: float) -> bytes | None:
        """MediaProxy commands for calls adopted here (OpenSIPS talks to its local relay only,
        so there is nobody to forward to)."""
        try:
            command = parse_mediaproxy(data)
        except ControlError:
            return None
        call_id = command.call_id
        if self.relay.engine.has_call(call_id):
            return None
        group = self._group_of(call_id)
        if group is None:
            return None
        async with group.lock:
            reply = group.mediaproxy.handle(data, now)
            await group.apply_events()
        self._timer_wake.set()
        return reply

    def _missed_beats(self, beat: dict[str, Any]) -> bool:
        """True if the heartbeat is older than two and a half intervals (the margin covers
        clock differences between hosts)."""
        sent = beat.get("time")
        if not isinstance(sent, int | float):
            return False
        return time.time() - sent > 2.5 * self.config.heartbeat_interval

    def _unreachable(self, command: Command, call_id: str, owner: str, now: float) -> Reply:
        """The answer for a call whose owner does not answer and is not adopted yet. A
        ``delete`` (the BYE) is kept and carried out when the call is adopted, so the call
        still ends now-ish with its one record; anything else fails (the proxy may retry)."""
        if isinstance(command, Delete) and len(self._deferred) < _DEFERRED_MAX:
            self._deferred[call_id] = (command, now + _DEFERRED_FOR)
            return {
                "result": "ok",
                "warning": f"call of {owner}, which does not answer: deleted once adopted",
            }
        return error_reply(f"call of {owner}, which does not answer; retry shortly")

    async def _owner_of(self, call_id: str) -> tuple[str | None, dict[str, Any] | None]:
        redis = self._redis
        assert redis is not None
        found = await redis.hget(self.keys.owner, call_id)
        owner = None if found is None else _text(found)
        if owner is None or owner == self.instance:
            return owner, None
        beat = await redis.get(self.keys.alive(owner))
        return owner, _json(_text(beat)) if beat else None

    async def _forward(self, data: bytes, owner: str, beat: dict[str, Any]) -> bytes | None:
        try:
            host, port = split_host_port(str(beat["ng"]), 0)
            address = Address(host, port)
        except (KeyError, ValueError):
            return None
        reply = await forward_ng(data, address, self.config.forward_timeout)
        if reply is None:
            self.forward_failures += 1
            logger.warning("cluster.forward_timeout", extra={"owner": owner, "ng": str(address)})
            return None
        self.forwarded += 1
        return reply

    async def call_owner(self, call_id: str) -> str | None:
        """The instance that owns ``call_id`` (for ``icerelay ctl``), None if no instance
        has it or Redis cannot say."""
        if self._redis is None:
            return None
        try:
            async with asyncio.timeout(_LOOKUP_TIMEOUT):
                owner, _ = await self._owner_of(call_id)
        except (*_REDIS_ERRORS, TimeoutError):
            return None
        return owner

    # -- views ----------------------------------------------------------------------------------

    def cluster_view(self) -> dict[str, Any]:
        """The cluster as this instance last saw it (JSON-ready), for ctl, HTTP and metrics:
        each instance (alive, ng address, calls it owns), this instance's own and adopted
        calls (by origin), the latest adoptions, counters. Refreshed every heartbeat
        interval; no Redis round trip here."""
        instances = self._view.get("instances", {})
        return {
            "instance": self.instance,
            "redis": "up" if self.redis_up else "down",
            "instances": instances,
            "owners": {name: item.get("calls", 0) for name, item in instances.items()},
            "calls": {
                "own": self.relay.engine.call_count,
                "adopted": {o: g.engine.call_count for o, g in self.adopted.items()},
            },
            "adoptions": self._view.get("adoptions", []),
            "counters": {
                "adoptions": self.adoptions,
                "calls_adopted": self.calls_adopted,
                "adoptions_failed": self.adoptions_failed,
                "forwarded": self.forwarded,
                "forward_failures": self.forward_failures,
                "write_failures": self.write_failures,
                "redis_outages": self.outages,
            },
            "turn": self._turn_view(),
        }

    def _turn_view(self) -> dict[str, int] | None:
        """What the first TURN worker last read from the directory (the others read the same)."""
        sync = self.turn.directory_sync if self.turn is not None else None
        if sync is None:
            return None
        return {"users": sync.directory.users, "secrets": sync.directory.secrets}


def _text(value: bytes | str) -> str:
    """redis-py is typed for both; this client decodes responses (``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else value


def _mapping(values: dict[str, str]) -> dict[Any, Any]:
    """``hset``'s mapping parameter is typed invariantly over every key type it accepts."""
    return dict(values)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return {}


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
