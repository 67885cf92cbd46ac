"""The kernel data plane: latched streams forwarded by nftables, everything else in userspace.

The userspace plane (:class:`~icerelay.dataplane.userspace.UserspaceDataPlane`, which this one
wraps) keeps every socket and asks the latching policy about every packet it sees, exactly as
without a kernel. Once both legs of a stream have latched their RTP source from media, the
stream's two directions are installed as routes in the ``icerelay`` table (the ruleset is in
:mod:`.nft_ruleset`): from then on the kernel rewrites and forwards that stream's RTP, and only
what the policy must see still reaches the sockets (STUN, RTCP, strangers). When the policy
moves a latch (the verdict's ``moved``: a handover, a re-INVITE) the stream is reprogrammed;
when it is removed (the stream ended or stepped aside) its routes go first.

Changes are batched: the routes of every stream that changed during one turn of the event loop
are added in one libnftables call and removed in one netlink batch (:mod:`.nfnetlink`), each one
transaction, on the loop's thread (tens of microseconds for a few routes).

Counters: each ``inbound`` element has its own counter. A poll (a thread, its own libnftables
context, every ``poll_interval`` seconds, or one second per 4,000 routes when there are more)
lists them all; a stream whose routes counted new packets gets ``last_packet`` (and the latched
source's "last seen", which the policy's handover rule reads) set to the poll's time, so the
no-media timeout and handover keep working with a precision of one poll interval.
:meth:`counters` merges the kernel's packets and bytes into the policy's
:class:`~icerelay.relay.forwarding.ForwardingCounters` (and the poll's time as ``last_media``),
reading the stream's elements afresh first over netlink (the engine calls it for a record as a
stream ends, and for ng ``query``), so records stay exact. Bytes: the kernel counts IP packets,
the relay counts UDP payloads; the difference is 28 bytes per IPv4 packet. Packets a route
counted between that last read and its removal (the same loop turn) are the only ones a record
can miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from icerelay.dataplane.libnft import Nft, NftError, open_nft
from icerelay.dataplane.nfnetlink import NfTables, address_port_key, mark_key
from icerelay.dataplane.nft_ruleset import (
    MARK_MAPS,
    MAX_ROUTES,
    TABLE,
    Route,
    add_routes,
    delete_table,
    list_inbound,
    ruleset,
    table_owner,
)
from icerelay.dataplane.userspace import UserspaceDataPlane
from icerelay.relay.forwarding import Forwarding, ForwardingCounters, LegCounters
from icerelay.relay.latching import RTP, Forward, ForwardingState

__all__ = ["NftablesDataPlane"]

logger = logging.getLogger("icerelay.dataplane")

#: IPv4 and UDP headers: what the kernel's byte counters count beyond the relay's payloads.
_HEADERS = 28
# One element of nft's listing: "src . sport . dst . dport counter packets P bytes B : 0xmark".
_ELEMENT = re.compile(
    r"(\d+\.\d+\.\d+\.\d+) \. (\d+) \. (\d+\.\d+\.\d+\.\d+) \. (\d+) "
    r"counter packets (\d+) bytes (\d+) : (0x[0-9a-f]+)"
)
# Routes listed per second of poll interval at most (see _poll_loop).
_ROUTES_PER_SECOND = 4000
# A read for counters() counts as fresh for this long (seconds): ng query and the engine's
# deadline sweep may ask several times in one request.
_FRESH = 0.05


@dataclass(slots=True)
class _Offload:
    """A route installed in the kernel and what its counter said last."""

    route: Route
    key: str
    side: int
    packets: int = 0
    bytes: int = 0


@dataclass(slots=True)
class _Stream:
    """The kernel's part of one forwarding."""

    routes: list[_Offload | None] = field(default_factory=lambda: [None, None])
    #: What removed routes counted, by side: packets, bytes (IP).
    retired: list[list[int]] = field(default_factory=lambda: [[0, 0], [0, 0]])
    read: float = 0.0
    #: When a read last found more packets on each side's route (the policy's clock): the last
    #: media the kernel forwarded, to within one read; survives re-latching.
    last_media: list[float | None] = field(default_factory=lambda: [None, None])


class NftablesDataPlane:
    """The kernel plane (see the module docstring). Implements
    :class:`~icerelay.dataplane.interface.DataPlane`; :meth:`start` before use.

    :param port_min: the relay port range (the rule only looks up packets to these ports).
    :param clock: the policy's clock, as for the userspace plane.
    :param poll_interval: seconds between counter reads of the whole map.
    :param table: the table's name (tests running several relays in one namespace).
    """

    def __init__(
        self,
        port_min: int,
        port_max: int,
        *,
        clock: Callable[[], float] | None = None,
        poll_interval: float = 1.0,
        table: str = TABLE,
    ) -> None:
        self._userspace = UserspaceDataPlane(clock, on_latch=self._latched)
        self._clock = clock
        self._port_range = (port_min, port_max)
        self._poll_interval = poll_interval
        self._table = table
        self._nft: Nft | None = None
        self._netlink: NfTables | None = None
        self._streams: dict[str, _Stream] = {}
        self._by_id: dict[int, _Offload] = {}
        self._next_id = 0
        self._dirty: set[str] = set()
        #: Routes to delete at the next flush (their ids are not given out before that).
        self._doomed: list[Route] = []
        self._flush_scheduled = False
        self._poller: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        #: Routes installed and removed, failed transactions, and packets the kernel forwarded
        #: (of routes removed since, and of those installed at the last read).
        self.routes_installed = 0
        self.routes_removed = 0
        self.errors = 0
        self._packets_retired = 0

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the table (removing a stale one a crashed relay left) and start polling."""
        self._nft = open_nft()
        _check_owner(self._nft, self._table)
        self._nft.run(ruleset(*self._port_range, table=self._table, owner=os.getpid()))
        try:
            self._netlink = NfTables()
        except OSError as error:
            # Leave nothing behind: the relay may go on in userspace.
            with contextlib.suppress(NftError):
                self._nft.run(delete_table(self._table))
            self._nft = None
            raise NftError(f"cannot open a netlink socket to nf_tables: {error}") from None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nft-poll")
        self._poller = asyncio.create_task(self._poll_loop(), name="nft-poll")
        logger.info("dataplane.kernel_started", extra={"table": self._table})

    async def close(self) -> None:
        """Remove every forwarding and the table."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        self._flush()
        await self._userspace.close()
        self._streams.clear()
        self._by_id.clear()
        if self._nft is not None:
            try:
                self._nft.run(delete_table(self._table))
            except NftError as error:
                logger.warning("dataplane.kernel_cleanup_failed", extra={"reason": str(error)})
            self._nft = None
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- the DataPlane interface --------------------------------------------------------------

    @property
    def forwarding_count(self) -> int:
        """Installed forwardings."""
        return self._userspace.forwarding_count

    @property
    def offloaded_count(self) -> int:
        """Stream directions currently forwarded by the kernel."""
        return len(self._by_id)

    @property
    def kernel_packets(self) -> int:
        """Packets the kernel forwarded (as of the last counter read)."""
        return self._packets_retired + sum(o.packets for o in self._by_id.values())

    async def install(self, forwarding: Forwarding) -> None:
        """Install in userspace (the sockets); re-derive the kernel routes from the latches,
        which an update may have reset."""
        await self._userspace.install(forwarding)
        self._latched(forwarding.key)

    async def remove(self, key: str) -> None:
        """Remove the routes (their last counts read first), then the sockets."""
        self._dirty.discard(key)
        stream = self._streams.pop(key, None)
        if stream is not None:
            offloads = [o for o in stream.routes if o is not None]
            # The engine read the counters for the record a moment ago (fresh: no second read).
            if time.monotonic() - stream.read > _FRESH:
                self._read(offloads)
            self._retire(offloads, stream)
        await self._userspace.remove(key)

    def counters(self, key: str) -> ForwardingCounters | None:
        """The policy's counters with the kernel's packets and bytes added (read afresh)."""
        counters = self._userspace.counters(key)
        stream = self._streams.get(key)
        if counters is None or stream is None:
            return counters
        offloads = [o for o in stream.routes if o is not None]
        now = time.monotonic()
        if offloads and now - stream.read > _FRESH:
            stream.read = now
            self._read(offloads)
        for side, leg in ((0, counters.a), (1, counters.b)):
            packets, size = stream.retired[side]
            offload = stream.routes[side]
            if offload is not None:
                packets += offload.packets
                size += offload.bytes
            _add(leg, packets, size)
            kernel_media = stream.last_media[side]
            if kernel_media is not None:
                # Media the relay process never saw still counts as media (step-aside and
                # no-media decisions read these).
                if leg.last_media is None or leg.last_media < kernel_media:
                    leg.last_media = kernel_media
                if leg.last_packet is None or leg.last_packet < kernel_media:
                    leg.last_packet = kernel_media
        return counters

    # -- programming the kernel ---------------------------------------------------------------

    def _latched(self, key: str) -> None:
        """A stream's latches may have changed: reprogram it at the end of this loop turn,
        together with every other stream that changed meanwhile (one transaction)."""
        self._dirty.add(key)
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled and self._nft is not None:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        if self._nft is None:
            return
        added: list[_Offload] = []
        for key in dirty:
            state = self._userspace.state(key)
            if state is None:
                continue
            stream = self._streams.setdefault(key, _Stream())
            wanted = _wanted(state)
            stale = []
            for side in (0, 1):
                current = stream.routes[side]
                target = wanted[side]
                if current is not None and (target is None or _same(current.route, target)):
                    if target is None:
                        stale.append(current)
                        stream.routes[side] = None
                    continue
                if current is not None:
                    stale.append(current)
                    stream.routes[side] = None
                if target is not None:
                    route_id = self._allocate()
                    if route_id is None:
                        continue
                    offload = _Offload(_with_id(target, route_id), key, side)
                    stream.routes[side] = offload
                    self._by_id[route_id] = offload
                    added.append(offload)
            if stale:
                self._read(stale)
                self._retire(stale, stream)
        self._delete_doomed()
        if added:
            try:
                self._nft.run(add_routes([o.route for o in added], self._table))
                self.routes_installed += len(added)
            except NftError as error:
                # The streams stay with the sockets (the policy still forwards them).
                self._failed("install", error)
                for offload in added:
                    self._by_id.pop(offload.route.id, None)
                    failed = self._streams.get(offload.key)
                    if failed is not None and failed.routes[offload.side] is offload:
                        failed.routes[offload.side] = None

    def _read(self, offloads: list[_Offload]) -> None:
        """Read the counters of ``offloads`` now (one netlink request each, ~20 us)."""
        netlink = self._netlink
        if netlink is None:
            return
        now = self._now()
        readings = {}
        for offload in offloads:
            route = offload.route
            try:
                counted = netlink.counter(
                    self._table, "inbound", address_port_key(route.source, route.local)
                )
            except (NftError, OSError) as error:
                self._failed("read", NftError(str(error)))
                continue
            if counted is not None:
                readings[route.id] = (route.key(), *counted)
        self._update(readings, now)

    def _delete_doomed(self) -> None:
        """Delete the retired routes' elements from every map, in one transaction."""
        doomed, self._doomed = self._doomed, []
        if not doomed or self._netlink is None:
            return
        marks = [mark_key(route.mark) for route in doomed]
        elements = [("inbound", [address_port_key(r.source, r.local) for r in doomed])]
        elements += [(name, marks) for name in MARK_MAPS]
        try:
            self._netlink.delete(self._table, elements)
        except (NftError, OSError) as error:
            self._failed("remove", NftError(str(error)))

    def _retire(self, offloads: list[_Offload], stream: _Stream) -> None:
        """Keep what ``offloads`` counted and delete them at the next flush (one transaction
        for every stream that ended in this loop turn)."""
        for offload in offloads:
            self._by_id.pop(offload.route.id, None)
            self._doomed.append(offload.route)
            stream.retired[offload.side][0] += offload.packets
            stream.retired[offload.side][1] += offload.bytes
            self._packets_retired += offload.packets
        self.routes_removed += len(offloads)
        if offloads:
            self._schedule()

    def _allocate(self) -> int | None:
        # Ids go round the whole space before one is used again, so a poll that read an
        # element just before its removal cannot credit its counts to a successor.
        for _ in range(MAX_ROUTES):
            candidate = self._next_id
            self._next_id = (self._next_id + 1) % MAX_ROUTES
            if candidate not in self._by_id:
                return candidate
        return None

    def _failed(self, action: str, error: NftError) -> None:
        self.errors += 1
        logger.warning(
            "dataplane.kernel_error", extra={"action": action, "reason": str(error)[:300]}
        )

    # -- counters -----------------------------------------------------------------------------

    def _update(self, readings: dict[int, tuple[str, int, int]], now: float) -> None:
        for route_id, (key, packets, size) in readings.items():
            offload = self._by_id.get(route_id)
            if offload is None or offload.route.key() != key or packets <= offload.packets:
                continue
            offload.packets = packets
            offload.bytes = size
            stream = self._streams.get(offload.key)
            if stream is not None:
                stream.last_media[offload.side] = now
            state = self._userspace.state(offload.key)
            if state is not None:
                # Media from the latched source is alive: what the no-media timeout and the
                # policy's handover rule read.
                leg = state.legs[offload.side]
                leg.last_packet = now
                leg.latched_seen[RTP] = now
                # The policy's last sequence number of this source is stale now.
                leg.unseen_media = True

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        reader: Nft | None = None
        while True:
            # A listing costs ~9 us of CPU per route (70 ms at 8,000): beyond 4,000 routes the
            # interval grows with their number, so the reads stay under ~4% of a CPU.
            await asyncio.sleep(max(self._poll_interval, len(self._by_id) / _ROUTES_PER_SECOND))
            try:
                if reader is None:
                    reader = await loop.run_in_executor(self._executor, open_nft)
                if not self._by_id:
                    continue
                listing = await loop.run_in_executor(
                    self._executor, reader.run, list_inbound(self._table)
                )
                readings = await loop.run_in_executor(self._executor, _parse, listing)
            except NftError as error:
                self._failed("poll", error)
                continue
            self._update(readings, self._now())


def _check_owner(nft: Nft, table: str) -> None:
    """Raise NftError if the table exists and belongs to another relay that is still running;
    a table whose owner is gone (kill -9, a crash) is stale and may be replaced."""
    try:
        listing = nft.run(f"list table ip {table}\n")
    except NftError:
        return  # no such table
    owner = table_owner(listing)
    if owner is None or owner == os.getpid():
        return
    try:
        command = Path(f"/proc/{owner}/cmdline").read_bytes()
    except OSError:
        return  # no such process
    if b"icerelay" in command:
        raise NftError(f"table ip {table} belongs to a running relay (pid {owner})")


def _parse(listing: str) -> dict[int, tuple[str, int, int]]:
    """Route id -> (element key, packets, bytes) from nft's text listing."""
    readings = {}
    for match in _ELEMENT.finditer(listing):
        source, sport, local, lport, packets, size, mark = match.groups()
        readings[int(mark, 16) & ~0xFFF00000 & 0xFFFFFFFF] = (
            f"{source} . {sport} . {local} . {lport}",
            int(packets),
            int(size),
        )
    return readings


def _add(leg: LegCounters, packets: int, size: int) -> None:
    if packets:
        leg.packets += packets
        leg.bytes += size - _HEADERS * packets


def _ipv4(host: str) -> bool:
    return ":" not in host


def _wanted(state: ForwardingState) -> list[Route | None]:
    """The kernel routes a stream should have, by side: both directions once both legs'
    RTP sources are latched by media (with id 0: ids are given on install), else none."""
    routes: list[Route | None] = [None, None]
    for side, leg in enumerate(state.legs):
        source = leg.latched[RTP]
        peer = leg.peer
        route = peer.routes[RTP]
        if (
            source is None
            or not leg.media_latched[RTP]
            or not peer.media_latched[RTP]
            or not isinstance(route, Forward)
            or route.destination != peer.latched[RTP]
        ):
            return [None, None]
        local = leg.leg.local
        via = peer.leg.local
        hosts = (source[0], local.host, route.destination[0], via.host)
        if not all(_ipv4(host) for host in hosts) or local.host == "0.0.0.0":
            # IPv6 has no table here; a relay bound to the wildcard address cannot name the
            # destination its packets arrive at, which the route's key needs.
            return [None, None]
        routes[side] = Route(
            0,
            source,
            (local.host, local.port),
            route.destination,
            (via.host, via.port + route.socket),
        )
    return routes


def _same(a: Route, b: Route) -> bool:
    return (a.source, a.local, a.destination, a.via) == (b.source, b.local, b.destination, b.via)


def _with_id(route: Route, route_id: int) -> Route:
    return Route(route_id, route.source, route.local, route.destination, route.via)
