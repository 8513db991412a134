"""Every Prometheus metric of the proxy (SPEC §9), in one registry per proxy instance.

Gauges that mirror live state (in-flight copies, sample rate, stage, budget left, audit backlog)
are read at scrape time through :class:`LiveGauges` callbacks, so the request path never pays for them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

P = "shadow_proxy_"
# Latency buckets from 0.5 ms to 30 s, finer where decision services and model timeouts live.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
)  # fmt: skip
# Proxy overhead: tens of microseconds in shadow stage, up to max_wait_ms in assisted stage and the
# model timeout when autonomous falls back, so up to a few seconds.
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip

LiveSample = tuple[tuple[str, ...], float]


class LiveGauges(Collector):
    """Gauges computed at scrape time: name -> (help, label names, callback yielding samples)."""

    def __init__(self) -> None:
        self._gauges: dict[str, tuple[str, list[str], Callable[[], Iterable[LiveSample]]]] = {}

    def add(self, name: str, doc: str, labels: list[str], read: Callable[[], Iterable[LiveSample]]) -> None:
        self._gauges[name] = (doc, labels, read)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, (doc, labels, read) in self._gauges.items():
            family = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in read():
                family.add_metric(list(values), value)
            yield family


class Metrics:
    """The proxy's metrics. Label values come from config names and the enums in :mod:`proxy.stages`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            P + "requests_total", "Client requests answered.", ["route", "served_by", "code"], registry=r
        )
        self.model_calls = Counter(
            P + "model_calls_total", "Model calls by result, skips included.", ["route", "result"], registry=r
        )
        self.fallbacks = Counter(
            P + "fallbacks_total", "Autonomous requests answered by the primary.", ["route", "reason"],
            registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            P + "decisions_total", "Paired decision records.", ["route", "stage", "agree"], registry=r
        )
        self.upstream_latency = Histogram(
            P + "upstream_latency_seconds", "Upstream latency, request sent to body read.",
            ["route", "upstream"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            P + "overhead_seconds", "Time the proxy added beyond the serving upstream.",
            ["route"], buckets=OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.transitions = Counter(P + "transitions_total", "Stage transitions.", ["route", "from", "to"], registry=r)
        self.audit_records = Counter(P + "audit_records_total", "Audit records written.", ["type"], registry=r)
        self.audit_dropped = Counter(
            P + "audit_dropped_records_total",
            "Audit records dropped: the writer's queue was full, or a record could not be built or written.",
            registry=r,
        )
        self.audit_errors = Counter(
            P + "audit_write_errors_total", "Audit writer failures (sink writes, record building), retried.", registry=r
        )
        self.store_errors = Counter(P + "store_errors_total", "Failed store operations.", ["operation"], registry=r)
        self.live = LiveGauges()
        r.register(self.live)

    def render(self) -> bytes:
        """The text exposition; with ``--workers`` (multiprocess mode) every worker's counters."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            registry.register(self.live)
            return generate_latest(registry)
        return generate_latest(self.registry)
