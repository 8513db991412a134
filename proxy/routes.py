"""Routes compiled once at load into cheap per-request objects (Envoy's habit).

A :class:`RouteRuntime` holds everything the handler needs for one route: its upstreams, its model
path, its compiled decision readers, its live stage, and its pre-labelled metric children.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Route
from proxy.decisions import RouteDecisions
from proxy.exchange import Reply
from proxy.metrics import Metrics
from proxy.mirror import ModelPath
from proxy.stages import Fallback, RouteState, ServedBy, Stage
from proxy.upstream import Upstream


@dataclass(eq=False)
class RouteRuntime:
    cfg: Route
    primary: Upstream
    model: ModelPath
    decisions: RouteDecisions
    metrics: Metrics
    stage: Stage = Stage.SHADOW
    epoch: int = 1
    state: RouteState | None = None
    primary_copies: int = 0  # autonomous stage's background copies to the primary in flight
    sample_rate: float = 1.0
    _requests: dict[tuple[ServedBy, int], Any] = field(default_factory=dict)
    _fallbacks: dict[Fallback, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.name = cfg.name
        self.prefix = cfg.match.path_prefix
        self.methods = frozenset(cfg.match.methods) if cfg.match.methods else None
        self.model_version = cfg.model.version
        self.has_segment = cfg.segment is not None
        self.segment_reads_headers = cfg.segment is not None and "headers" in cfg.segment
        self.segment_reads_query = cfg.segment is not None and "query" in cfg.segment
        self.max_wait_s = cfg.assisted.max_wait_ms / 1000.0
        self.primary_sample = cfg.autonomous.primary_sample
        self.min_confidence = cfg.autonomous.min_confidence
        self.checks_confidence = cfg.decision.confidence is not None
        self.stage = cfg.stage
        self.sample_rate = cfg.mirror.sample
        m = self.metrics
        self._primary_latency = m.upstream_latency.labels(self.name, "primary")
        self._overhead = m.overhead.labels(self.name)

    def set_state(self, state: RouteState) -> None:
        """Adopt a stored state: the handler reads ``stage`` and ``epoch`` per request."""
        self.state = state
        self.stage = state.stage
        self.epoch = state.epoch

    def budget_view(self) -> dict[str, float]:
        """What is left of the route's budgets (last known; for the admin API and the gauge)."""
        gate = self.model.budget
        return gate.remaining() if gate is not None else {}

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.prefix) and (self.methods is None or method in self.methods)

    def observe_primary(self, reply: Reply) -> None:
        if reply.latency_ms is not None:
            self._primary_latency.observe(reply.latency_ms / 1000.0)

    def observe_overhead(self, seconds: float) -> None:
        self._overhead.observe(seconds)

    def count_request(self, served_by: ServedBy, status: int) -> None:
        key = (served_by, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.metrics.requests.labels(self.name, served_by.value, str(status))
        child.inc()

    def count_fallback(self, reason: Fallback) -> None:
        child = self._fallbacks.get(reason)
        if child is None:
            child = self._fallbacks[reason] = self.metrics.fallbacks.labels(self.name, reason.value)
        child.inc()


def model_counter(metrics: Metrics, route: str) -> Callable[[str], None]:
    """``model_calls_total{route,result}`` increments with children cached per result."""
    children: dict[str, Any] = {}

    def count(result: str) -> None:
        child = children.get(result)
        if child is None:
            child = children[result] = metrics.model_calls.labels(route, result)
        child.inc()

    return count


class RouteTable:
    """First route in config order whose prefix and methods match wins (as Envoy's route list)."""

    def __init__(self, routes: list[RouteRuntime]) -> None:
        self.routes = routes
        self.by_name = {r.name: r for r in routes}

    def match(self, method: str, path: str) -> RouteRuntime | None:
        for route in self.routes:
            if route.matches(method, path):
                return route
        return None
