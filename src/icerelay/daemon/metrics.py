"""Prometheus metrics of the daemon: one collector that reads the services at scrape time.

Nothing here runs per packet: the services keep counting in their plain ``Counters`` and dicts,
and :class:`DaemonCollector` turns what they hold into ``icerelay_*`` metric families when
Prometheus scrapes ``/metrics``. Each daemon has its own :class:`~prometheus_client.
CollectorRegistry` (no global registry: two daemons in one test process must not collide), with
the client library's process collector for CPU, memory and file descriptors.

Label values are only ever taken from closed sets (known ng command names, the engines' counter
names), so a client sending made-up command names cannot grow the number of series.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from icerelay.control.ng import KNOWN_COMMANDS
from icerelay.control.ng.protocol import command_counts
from icerelay.daemon.cluster import ClusterService
from icerelay.daemon.cluster.metrics import cluster_metrics
from icerelay.daemon.relay_service import RelayService
from icerelay.daemon.stun_service import StunService
from icerelay.daemon.turn_service import TurnService
from icerelay.relay.records import StreamEndReason

__all__ = ["NG_COMMANDS", "DaemonCollector", "new_registry"]

#: ng command names exported as labels: rtpengine's (the protocol counts any other name a client
#: sends as ``unknown``), so a client cannot add label values.
NG_COMMANDS = KNOWN_COMMANDS | {"unknown"}

#: The ICE decisions always exported (at 0 until they happen), so dashboards have the series.
ICE_DECISIONS = ("stepped_aside", "relay_selected", "handover_refused")

ServiceSource = Callable[[], Sequence[object]]


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class DaemonCollector(Collector):
    """Reads the running services (``services()``) and yields the ``icerelay_*`` families."""

    def __init__(self, services: ServiceSource) -> None:
        self._services = services

    def collect(self) -> Iterator[Metric]:
        """Called by the registry on each scrape."""
        for service in self._services():
            if isinstance(service, RelayService):
                yield from _relay(service)
            elif isinstance(service, TurnService):
                yield from _turn(service)
            elif isinstance(service, StunService):
                yield from _stun(service)
            elif isinstance(service, ClusterService):
                yield from cluster_metrics(service)


def _relay(service: RelayService) -> Iterator[Metric]:
    engine = service.engine
    yield _gauge("icerelay_relay_sessions", "Live relayed sessions.", engine.session_count)
    yield _gauge("icerelay_relay_calls", "Live relayed calls (Call-IDs).", engine.call_count)
    states: Counter[str] = Counter({"relaying": 0, "held": 0, "stepped_aside": 0, "ended": 0})
    for session in engine.live_sessions():
        for stream in session.streams:
            if stream.ended is None:
                states["held" if stream.held() else "relaying"] += 1
            elif stream.ended is StreamEndReason.ICE_DIRECT:
                states["stepped_aside"] += 1
            else:
                states["ended"] += 1
    streams = GaugeMetricFamily(
        "icerelay_relay_streams", "Streams of live sessions by state.", labels=["state"]
    )
    for state, count in sorted(states.items()):
        streams.add_metric([state], count)
    yield streams
    totals = service.ops.traffic_totals()
    yield _counter("icerelay_relay_packets", "Packets relayed.", totals["packets"])
    yield _counter("icerelay_relay_bytes", "Bytes relayed.", totals["bytes"])
    yield _counter("icerelay_relay_rtcp_packets", "RTCP packets relayed.", totals["rtcp_packets"])
    drops = CounterMetricFamily(
        "icerelay_relay_dropped_packets", "Packets the relay dropped, by reason.", labels=["reason"]
    )
    # The data plane counts its drops in one number (foreign source under strict-source, or
    # nowhere to send yet); the label leaves room for finer reasons without renaming.
    drops.add_metric(["dataplane"], totals["dropped"])
    yield drops
    refusals_by_reason = CounterMetricFamily(
        "icerelay_relay_refusals",
        "Packets the latching policy refused, by reason (strangers, forged checks, ...).",
        labels=["reason"],
    )
    for why, count in sorted(service.ops.refusal_totals().items()):
        refusals_by_reason.add_metric([why], count)
    yield refusals_by_reason
    ended = CounterMetricFamily(
        "icerelay_relay_sessions_ended", "Sessions ended, by reason.", labels=["reason"]
    )
    for reason, count in sorted(engine.ended_by_reason.items()):
        ended.add_metric([str(reason)], count)
    yield ended
    decisions = CounterMetricFamily(
        "icerelay_relay_ice_decisions", "ICE decisions seen by the relay.", labels=["decision"]
    )
    for decision in ICE_DECISIONS:
        decisions.add_metric([decision], service.ops.ice_decisions[decision])
    yield decisions
    counters = service.protocol.counters
    commands = CounterMetricFamily(
        "icerelay_ng_commands", "ng requests by command (known names only).", labels=["command"]
    )
    by_name: Counter[str] = Counter({name: 0 for name in NG_COMMANDS})
    for name, count in command_counts(counters).items():
        by_name[name if name in NG_COMMANDS else "unknown"] += count
    for name, count in sorted(by_name.items()):
        commands.add_metric([name], count)
    yield commands
    refusals = CounterMetricFamily(
        "icerelay_ng_refusals", "ng requests answered with an error, by kind.", labels=["reason"]
    )
    for name, count in sorted(counters.events.items()):
        if name.startswith("error."):
            refusals.add_metric([name.removeprefix("error.")], count)
    yield refusals
    dropped = CounterMetricFamily(
        "icerelay_ng_dropped", "ng messages dropped unanswered, by reason.", labels=["reason"]
    )
    for why, count in sorted(counters.dropped.items()):
        dropped.add_metric([why], count)
    yield dropped
    yield _counter(
        "icerelay_ng_retransmissions", "ng retransmissions answered from the cache.",
        counters.events["retransmissions"],
    )  # fmt: skip
    yield _counter(
        "icerelay_relay_forwardings_failed", "Forwardings the data plane refused.",
        service.install_failures,
    )  # fmt: skip
    yield _gauge(
        "icerelay_relay_ports_quarantined", "Port pairs held by other programs, set aside.",
        service.quarantined_pairs,
    )  # fmt: skip
    accounting = service.ops.accounting_figures()
    yield _counter(
        "icerelay_accounting_records_written", "Session records stored.", accounting["written"]
    )
    yield _counter(
        "icerelay_accounting_records_failed", "Session records lost.", accounting["failed"]
    )
    # Read from the durable journal (accounting.journal.position().pending).
    yield _gauge(
        "icerelay_accounting_journal_depth", "Records waiting in the accounting journal.",
        accounting["journal_depth"],
    )  # fmt: skip


#: Fields of TurnService.status() that are not engine counters.
_TURN_STATUS_FIELDS = frozenset({"allocations", "tcp_connections", "send_errors", "draining"})


def _turn(service: TurnService) -> Iterator[Metric]:
    if service.running_engine is None:
        return
    # Every worker process's figures (the others' from their last report, at most 1 s old).
    gauges = service.gauges()
    counters = service.status()
    yield _gauge("icerelay_turn_allocations", "Live TURN allocations.", gauges["allocations"])
    yield _gauge(
        "icerelay_turn_permissions", "Installed TURN permissions.", gauges["permissions"]
    )
    yield _gauge("icerelay_turn_channels", "Bound TURN channels.", gauges["channels"])
    yield _gauge(
        "icerelay_turn_tcp_connections", "TCP/TLS connections.", counters["tcp_connections"]
    )
    yield _gauge(
        "icerelay_turn_draining", "1 while the TURN server drains.", int(counters["draining"])
    )
    yield _counter(
        "icerelay_turn_offloaded_packets", "Packets relayed by the kernel offload.",
        counters.get("offloaded_packets", 0),
    )  # fmt: skip
    drops = CounterMetricFamily(
        "icerelay_turn_dropped", "Packets the TURN server dropped, by reason.", labels=["reason"]
    )
    refusals = CounterMetricFamily(
        "icerelay_turn_refusals", "TURN requests refused, by reason.", labels=["reason"]
    )
    events = CounterMetricFamily(
        "icerelay_turn_events", "Other TURN server events, by name.", labels=["event"]
    )
    for name, count in sorted(counters.items()):
        if name in _TURN_STATUS_FIELDS or name.startswith("offload"):
            continue  # sizes and the offload's own figures, exported above or not counters
        if name.startswith("dropped_"):
            drops.add_metric([name.removeprefix("dropped_")], count)
        elif name.startswith("refused_"):
            refusals.add_metric([name.removeprefix("refused_")], count)
        else:
            events.add_metric([name], count)
    events.add_metric(["send_errors"], counters["send_errors"])
    yield drops
    yield refusals
    yield events


def _stun(service: StunService) -> Iterator[Metric]:
    events = CounterMetricFamily(
        "icerelay_stun_events", "STUN Binding service events, by name.", labels=["event"]
    )
    for name, count in sorted(service.counters.events.items()):
        events.add_metric([name], count)
    yield events
    drops = CounterMetricFamily(
        "icerelay_stun_dropped", "STUN messages dropped, by reason.", labels=["reason"]
    )
    for reason, count in sorted(service.counters.dropped.items()):
        drops.add_metric([reason], count)
    yield drops


def new_registry(services: ServiceSource) -> CollectorRegistry:
    """A registry with the daemon's collector and the process figures (CPU, memory, fds)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(services))
    ProcessCollector(namespace="icerelay", registry=registry)
    PlatformCollector(registry=registry)
    return registry
