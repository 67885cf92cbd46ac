"""Calls taken over from a dead instance, served with the dead instance's addresses and ports.

Each adopted call keeps the relay address and ports its parties already send to (in production a
floating IP that moved to this host). They come from another instance's settings and port range,
so they live in a session engine of their own -- one per *origin* instance -- beside the relay's
own engine: its pool is the origin's range, its configuration the origin's addresses and
timeouts. It shares the relay's data plane through a key prefix (so stream keys of different
engines never collide) and the relay's accounting (so the record of an adopted call is written
here, once).

The counters a call had when its snapshot was last written are added to what this data plane
counts, so the record covers the whole call; a restored stream counts as active at adoption
time, so the media timeout starts afresh instead of ending a call whose media simply moved.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import replace

from icerelay.control.mediaproxy import MediaproxyHandler
from icerelay.control.ng import NgHandler
from icerelay.daemon.relay_config import RelayServiceConfig
from icerelay.dataplane import DataPlane
from icerelay.errors import RelayError
from icerelay.relay.forwarding import ForwardingCounters, LegCounters
from icerelay.relay.ports import PortPool
from icerelay.relay.sessions import (
    ForwardingInstalled,
    ForwardingRemoved,
    SessionDeleting,
    SessionEnded,
    SessionEngine,
    SessionRecord,
    StreamEnded,
)
from icerelay.relay.snapshot import Snapshot, restore_session

__all__ = ["AdoptedCalls"]

logger = logging.getLogger("icerelay.cluster")


class AdoptedCalls:
    """The adopted calls whose addresses and ports are those of instance :attr:`origin`.

    :param relay_settings: the origin's ``[relay]`` settings, as it published them (JSON).
    :param record: where an ended session's record goes (the relay's accounting).
    :param deleting: where the record-to-be of a session deleted with a grace period goes (the
        relay's journal keeps it, so that a crash during the grace period still records it).
    :param pool: the port pool to restore into (the relay's own, for this instance's calls of
        a previous life); a pool over the origin's range by default.
    """

    def __init__(
        self,
        origin: str,
        relay_settings: object,
        dataplane: DataPlane,
        *,
        record: Callable[[SessionRecord], None],
        deleting: Callable[[SessionRecord], None] | None = None,
        wall_offset: float,
        pool: PortPool | None = None,
    ) -> None:
        settings = RelayServiceConfig.model_validate(relay_settings)
        self.origin = origin
        self.settings = settings
        self._dataplane = dataplane
        self._prefix = f"{origin}/"
        self._record = record
        self._deleting = deleting
        #: Counters each stream had in its last snapshot, by (this engine's) stream key.
        self._base: dict[str, ForwardingCounters] = {}
        rng = random.SystemRandom()
        self.pool = pool or PortPool(settings.port_min, settings.port_max, rng=rng)
        self.engine = SessionEngine(
            settings.engine_config(),
            self.pool,
            rng=rng,
            counters=self.counters,
            # Unique to this engine, as the relay's own: session numbers start at 1 in every
            # engine, and the journal and the database keep the first record of an id only
            # (a second dead origin, or a later life of this adopter, would lose its records).
            # Only sessions opened here use it: a restored one keeps its owner's record id.
            record_prefix=uuid.uuid4().hex[:16] + "-",
        )
        self.handler = NgHandler(self.engine, wall_offset=wall_offset)
        self.mediaproxy = MediaproxyHandler(self.engine)
        self.wall_offset = wall_offset
        #: Serialises the engine between ng commands (the relay's worker) and timers (here).
        self.lock = asyncio.Lock()
        #: Calls whose adoption failed: they end here without a record (their owner, alive
        #: after all, writes it).
        self.discard: set[str] = set()

    def counters(self, key: str) -> ForwardingCounters | None:
        """This data plane's counters of ``key`` plus those the call had before adoption."""
        live = self._dataplane.counters(self._prefix + key)
        base = self._base.get(key)
        if base is None:
            return live
        if live is None:
            return base
        return ForwardingCounters(a=_add(base.a, live.a), b=_add(base.b, live.b))

    def restore(self, snapshot: Snapshot, now: float) -> None:
        """Rebuild one session from ``snapshot`` and take it over (RelayError: it cannot be)."""
        session, counters = restore_session(snapshot, wall_offset=self.wall_offset)
        self.engine.restore(session, now)
        for stream in session.streams:
            base = counters.get(stream.index)
            if base is None or stream.ended is not None:
                continue
            # Media flowed until the old instance died: the media timeout runs from now.
            base.a.last_packet = base.b.last_packet = now
            self._base[stream.key] = base

    async def apply_events(self) -> RelayError | None:
        """Carry out the engine's events on the shared data plane; the first failure is
        returned (a port still held: the old instance is not dead after all)."""
        failure: RelayError | None = None
        while (event := self.engine.next_event()) is not None:
            if isinstance(event, ForwardingInstalled):
                forwarding = event.forwarding
                try:
                    await self._dataplane.install(
                        replace(forwarding, key=self._prefix + forwarding.key)
                    )
                except RelayError as error:
                    logger.warning(
                        "cluster.install_failed",
                        extra={"origin": self.origin, "key": forwarding.key, "reason": str(error)},
                    )
                    failure = failure or error
            elif isinstance(event, ForwardingRemoved):
                await self._dataplane.remove(self._prefix + event.key)
                self._base.pop(event.key, None)
            elif isinstance(event, StreamEnded):
                logger.info(
                    "cluster.stream_ended",
                    extra={"call_id": event.call_id, "index": event.index, "reason": event.reason},
                )
            elif isinstance(event, SessionEnded):
                if event.record.call_id in self.discard:
                    self.discard.discard(event.record.call_id)
                    continue
                self._record(event.record)
            elif (
                isinstance(event, SessionDeleting)
                and self._deleting is not None
                and event.record.call_id not in self.discard
            ):
                self._deleting(event.record)
        return failure

    async def tick(self, now: float) -> None:
        """Run the engine's due timers."""
        async with self.lock:
            self.engine.handle_timer(now)
            await self.apply_events()

    async def shutdown(self, now: float) -> None:
        """End every adopted session (their records are written) and close their ports."""
        async with self.lock:
            self.engine.shutdown(now)
            await self.apply_events()


def _add(base: LegCounters, live: LegCounters) -> LegCounters:
    """Counts add up; times and latches are the live ones once there are any."""
    return LegCounters(
        packets=base.packets + live.packets,
        bytes=base.bytes + live.bytes,
        rtcp_packets=base.rtcp_packets + live.rtcp_packets,
        dropped=base.dropped + live.dropped,
        stun_requests=base.stun_requests + live.stun_requests,
        stun_nominations=base.stun_nominations + live.stun_nominations,
        checks_authenticated=base.checks_authenticated + live.checks_authenticated,
        last_check=live.last_check if live.last_check is not None else base.last_check,
        last_nomination=(
            live.last_nomination if live.last_nomination is not None else base.last_nomination
        ),
        last_media=live.last_media if live.last_media is not None else base.last_media,
        last_packet=live.last_packet if live.last_packet is not None else base.last_packet,
        latched_rtp=live.latched_rtp or base.latched_rtp,
        latched_rtcp=live.latched_rtcp or base.latched_rtcp,
    )
