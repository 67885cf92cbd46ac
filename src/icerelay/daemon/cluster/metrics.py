"""Prometheus families of the cluster service, read from its view at scrape time.

For the daemon's collector (``daemon/metrics.py``, ops): ``yield from cluster_metrics(service)``
for a :class:`~.service.ClusterService`. Nothing here talks to Redis; the view is what the
watcher saw on its last round. Instance names come from Redis: at most :data:`MAX_INSTANCES`
become label values, so a polluted key cannot grow the number of series without bound.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from icerelay.daemon.cluster.service import ClusterService

__all__ = ["MAX_INSTANCES", "cluster_metrics"]

MAX_INSTANCES = 64

# Counter names in ClusterService.cluster_view()["counters"] and their help texts.
_COUNTERS = {
    "adoptions": "Dead instances whose calls this instance adopted.",
    "calls_adopted": "Calls this instance adopted.",
    "adoptions_failed": "Calls whose adoption failed (their ports were still held).",
    "forwarded": "ng commands passed to the instance owning their call.",
    "forward_failures": "ng commands the owning instance did not answer in time.",
    "write_failures": "Writes of call state to Redis that failed.",
    "redis_outages": "Times Redis became unreachable.",
}


def cluster_metrics(service: ClusterService) -> Iterator[Metric]:
    """The ``icerelay_cluster_*`` families."""
    view = service.cluster_view()
    yield GaugeMetricFamily(
        "icerelay_cluster_redis_up",
        "1 while Redis answers this instance, 0 while it relays alone.",
        value=1 if view["redis"] == "up" else 0,
    )
    instances = sorted(view["instances"].items())[:MAX_INSTANCES]
    states = GaugeMetricFamily(
        "icerelay_cluster_instances", "Instances known in Redis, by state.", labels=["state"]
    )
    alive = sum(1 for _, item in instances if item.get("alive"))
    states.add_metric(["alive"], alive)
    states.add_metric(["dead"], len(instances) - alive)
    yield states
    owners = GaugeMetricFamily(
        "icerelay_cluster_owned_calls",
        "Calls each instance owns, as Redis says.",
        labels=["instance"],
    )
    for name, item in instances:
        owners.add_metric([str(name)], int(item.get("calls", 0)))
    yield owners
    yield GaugeMetricFamily(
        "icerelay_cluster_adopted_calls",
        "Live calls this instance serves for dead instances.",
        value=sum(view["calls"]["adopted"].values()),
    )
    for name, doc in _COUNTERS.items():
        yield CounterMetricFamily(
            f"icerelay_cluster_{name}", doc, value=view["counters"].get(name, 0)
        )
