"""Policy evaluation (SPEC §6): promotion gates and rollback rules over window statistics. Pure.

:func:`evaluate` takes the policy, the route's stored state, the window statistics of each window the
policy names (fetched by the caller), the time and the route's budget terms, and returns a
:class:`Verdict`. It reads no clock, store or environment: the controller persists what it decides.

Rollback rules are checked before promotion and need no approval; the first that fires wins. A rule's
``min_samples`` guards each figure with its own denominator: agreement needs that many samples, the
error rate and p99 need that many attempted model calls (in autonomous stage a failing model yields
few samples, since agreement counts only the ``primary_sample`` share, but many attempts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from proxy.config import Gate, Policy, RollbackRule
from proxy.stages import RouteState, Stage
from proxy.units import format_duration
from proxy.windows import WindowStats


class Action(StrEnum):
    STAY = "stay"
    PROMOTE = "promote"
    PENDING = "pending"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    value: Any
    threshold: Any
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "threshold": self.threshold, "pass": self.passed}


@dataclass(frozen=True, slots=True)
class GateVerdict:
    gate: str
    to: Stage
    passed: bool
    checks: tuple[Check, ...]
    figures: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "pass": self.passed, "checks": [c.to_json() for c in self.checks]}


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: str
    to: Stage | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BudgetTerms:
    """What a promotion must fit in: model calls per second, and spend per cost window."""

    rate_per_s: float | None = None
    cost_limit: float | None = None
    cost_window_s: float | None = None


def gate_name(stage: Stage) -> str | None:
    nxt = stage.next()
    return f"{stage.value}_to_{nxt.value}" if nxt is not None else None


def next_gate(policy: Policy, stage: Stage) -> tuple[str, Gate] | None:
    name = gate_name(stage)
    gate = getattr(policy.promote, name) if name else None
    return (name, gate) if name and gate is not None else None


def windows_needed(policy: Policy, stage: Stage) -> set[float]:
    """Every window (seconds) :func:`evaluate` will look up for a route in ``stage``."""
    needed = {rule.window for rule in policy.rollback} if stage is not Stage.SHADOW else set()
    if (found := next_gate(policy, stage)) is not None:
        needed.add(found[1].window)
    return needed


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def evaluate_gate(
    name: str, gate: Gate, stats: WindowStats, state: RouteState, now: float, budget: BudgetTerms
) -> GateVerdict:
    dwell_s = max(0.0, now - state.entered_at)
    low, _ = stats.interval
    checks = [
        Check("min_samples", stats.samples, gate.min_samples, stats.samples >= gate.min_samples),
        Check("min_dwell", round(dwell_s, 3), gate.min_dwell, dwell_s >= gate.min_dwell),
        Check(
            "min_agreement_lower_bound",
            round(low, 6) if stats.samples else None,
            gate.min_agreement_lower_bound,
            stats.samples > 0 and low >= gate.min_agreement_lower_bound,
        ),
        _at_most("max_error_rate", stats.error_rate, gate.max_error_rate),
    ]
    if gate.max_p99 is not None:
        checks.append(_at_most("max_p99_ms", stats.p99_ms, _ms(gate.max_p99)))
    checks.extend(_budget_checks(stats, state, now, gate.window, budget))
    figures = {**stats.figures(), "dwell_s": round(dwell_s, 3), "window_s": gate.window}
    nxt = state.stage.next()
    assert nxt is not None
    return GateVerdict(name, nxt, all(c.passed for c in checks), tuple(checks), figures)


def _at_most(name: str, value: float | None, threshold: float | None) -> Check:
    passed = value is not None and threshold is not None and value <= threshold
    return Check(name, None if value is None else round(value, 6), threshold, passed)


def _budget_checks(
    stats: WindowStats, state: RouteState, now: float, window_s: float, budget: BudgetTerms
) -> list[Check]:
    """At the next stage every request calls the model: does that rate fit the budgets?"""
    span = max(1e-9, min(window_s, now - state.entered_at))
    requests_per_s = stats.counts["requests"] / span
    checks = []
    if budget.rate_per_s is not None:
        value = round(requests_per_s, 3)
        checks.append(Check("projected_calls_per_s", value, budget.rate_per_s, value <= budget.rate_per_s))
    if budget.cost_limit is not None and budget.cost_window_s is not None:
        attempts = stats.counts["attempts"]
        per_call = stats.cost / attempts if attempts else 0.0
        spend = round(requests_per_s * per_call * budget.cost_window_s, 6)
        checks.append(Check("projected_cost_per_window", spend, budget.cost_limit, spend <= budget.cost_limit))
    return checks


def rule_fires(rule: RollbackRule, stats: WindowStats) -> list[str]:
    """The breaches of one rollback rule (empty when it does not fire)."""
    breaches = []
    enough_samples = stats.samples >= max(1, rule.min_samples)
    enough_calls = stats.counts["attempts"] >= max(1, rule.min_samples)
    agreement, error_rate, p99 = stats.agreement, stats.error_rate, stats.p99_ms
    below = rule.agreement_below
    if enough_samples and agreement is not None and below is not None and agreement < below:
        breaches.append(f"agreement {agreement:.4f} < {below}")
    above = rule.error_rate_above
    if enough_calls and error_rate is not None and above is not None and error_rate > above:
        breaches.append(f"error rate {error_rate:.4f} > {above}")
    slow = rule.p99_above
    if enough_calls and p99 is not None and slow is not None and p99 > slow * 1000.0:
        breaches.append(f"p99 {p99:.1f}ms > {format_duration(slow)}")
    return breaches


def evaluate(
    policy: Policy,
    state: RouteState,
    stats: Mapping[float, WindowStats],
    now: float,
    budget: BudgetTerms | None = None,
) -> Verdict:
    """What the policy says about a route now. ``stats`` maps each window of
    :func:`windows_needed` to that window's statistics in the current epoch."""
    if state.hold:
        return Verdict(Action.STAY, "on hold: stage changes only by hand")
    if state.stage is not Stage.SHADOW:
        for index, rule in enumerate(policy.rollback):
            window = stats[rule.window]
            breaches = rule_fires(rule, window)
            if breaches:
                to = Stage.SHADOW if rule.to == "shadow" else state.stage.previous()
                evidence = {**window.figures(), "rule": index, "window_s": rule.window, "breaches": breaches}
                reason = f"rollback rule {index} ({format_duration(rule.window)} window): " + "; ".join(breaches)
                return Verdict(Action.ROLLBACK, reason, to, evidence)
    found = next_gate(policy, state.stage)
    if found is None:
        return Verdict(Action.STAY, f"no promotion gate out of {state.stage.value}")
    name, gate = found
    verdict = evaluate_gate(name, gate, stats[gate.window], state, now, budget or BudgetTerms())
    evidence = {**verdict.figures, "checks": [c.to_json() for c in verdict.checks]}
    if not verdict.passed:
        failed = ", ".join(c.name for c in verdict.checks if not c.passed)
        return Verdict(Action.STAY, f"gate {name} not passed: {failed}", None, evidence)
    if gate.approval == "manual":
        if state.pending == name:
            return Verdict(Action.STAY, f"gate {name} passed; waiting for approval")
        return Verdict(Action.PENDING, f"gate {name} passed; approval required", verdict.to, evidence)
    return Verdict(Action.PROMOTE, f"gate {name} passed", verdict.to, evidence)
