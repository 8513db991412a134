"""The policy engine, pure: each gate alone, approval, hold, rollback rules, and the statistics behind them."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.config import Policy
from proxy.policy import Action, BudgetTerms, evaluate, windows_needed
from proxy.stages import RouteState, Stage
from proxy.windows import TIERS, WindowStats, bucket_start, bucketize, plan_buckets, retained, sample_state

NOW = 1_000_000.0
GATE = {
    "window": "1h",
    "min_samples": 100,
    "min_dwell": "10m",
    "min_agreement_lower_bound": 0.9,
    "max_error_rate": 0.05,
    "max_p99": "100ms",
    "approval": "auto",
}


def policy(**gate_changes) -> Policy:
    return Policy.model_validate(
        {
            "promote": {"shadow_to_assisted": {**GATE, **gate_changes}, "assisted_to_autonomous": GATE},
            "rollback": [
                {"window": "5m", "min_samples": 50, "agreement_below": 0.8, "error_rate_above": 0.1, "to": "previous"},
                {"window": "1m", "min_samples": 20, "agreement_below": 0.5, "p99_above": "250ms", "to": "shadow"},
            ],
        }
    )


def stats(samples: int, agreed: int, *, attempts: int | None = None, errors: int = 0, latency_ms: float = 20.0,
          requests: int | None = None, cost: float = 0.0) -> WindowStats:  # fmt: skip
    w = WindowStats()
    w.counts.update(samples=samples, agreed=agreed, attempts=attempts if attempts is not None else samples,
                    errors=errors, requests=requests if requests is not None else samples)  # fmt: skip
    w.cost = cost
    w.latency.record(latency_ms, max(1, w.counts["attempts"]))
    return w


def state(stage: Stage = Stage.SHADOW, dwell_s: float = 3600.0, **fields) -> RouteState:
    return RouteState(stage, entered_at=NOW - dwell_s, **fields)


def verdict(p: Policy, s: RouteState, w: WindowStats, budget: BudgetTerms | None = None):
    return evaluate(p, s, dict.fromkeys(windows_needed(p, s.stage), w), NOW, budget)


GOOD = stats(200, 198)


def test_every_gate_holding_promotes():
    v = verdict(policy(), state(), GOOD)
    assert v.action is Action.PROMOTE and v.to is Stage.ASSISTED
    assert all(c["pass"] for c in v.evidence["checks"])
    assert v.evidence["samples"] == 200 and v.evidence["agreed"] == 198


@pytest.mark.parametrize(
    ("case", "failed"),
    [
        ({"w": stats(99, 99)}, "min_samples"),
        ({"s": state(dwell_s=599.0)}, "min_dwell"),
        ({"w": stats(200, 185)}, "min_agreement_lower_bound"),
        ({"w": stats(200, 200, attempts=200, errors=11)}, "max_error_rate"),
        ({"w": stats(200, 200, latency_ms=105.0)}, "max_p99_ms"),
    ],
)
def test_each_gate_alone_blocks_promotion(case, failed):
    v = verdict(policy(), case.get("s", state()), case.get("w", GOOD))
    assert v.action is Action.STAY
    assert [c["name"] for c in v.evidence["checks"] if not c["pass"]] == [failed]


def test_gates_pass_exactly_at_their_thresholds():
    # 100 samples, dwell exactly 10 min, 5% errors, p99 at the threshold
    w = stats(100, 100, attempts=100, errors=5, latency_ms=99.5)
    assert verdict(policy(), state(dwell_s=600.0), w).action is Action.PROMOTE


def test_lower_bound_just_under_the_threshold_blocks():
    # 196/200: Wilson lower bound 0.9497 (computed independently below); threshold 0.95 blocks, 0.949 passes
    w = stats(200, 196)
    assert verdict(policy(min_agreement_lower_bound=0.95), state(), w).action is Action.STAY
    assert verdict(policy(min_agreement_lower_bound=0.949), state(), w).action is Action.PROMOTE


def independent_wilson_lower(k: int, n: int, z: float = 1.959963984540054) -> float:
    p = k / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / (1 + z * z / n)


@pytest.mark.parametrize(("k", "n"), [(196, 200), (81, 100), (2000, 2000), (0, 10), (4990, 5000)])
def test_wilson_lower_bound_matches_an_independent_computation(k, n):
    assert stats(n, k).interval[0] == pytest.approx(independent_wilson_lower(k, n), abs=1e-4)


def test_window_p99_is_within_two_percent_of_the_exact_value():
    rng = random.Random(3)
    values = [rng.lognormvariate(math.log(30), 0.6) for _ in range(20_000)]
    w = WindowStats()
    for v in values:
        w.latency.record(v)
    exact = sorted(values)[math.ceil(0.99 * len(values)) - 1]  # nearest rank
    assert w.p99_ms == pytest.approx(exact, rel=0.02)


def test_manual_gate_makes_the_promotion_pending_then_waits():
    p = policy(approval="manual")
    v = verdict(p, state(), GOOD)
    assert v.action is Action.PENDING and v.to is Stage.ASSISTED
    again = verdict(p, state(pending="shadow_to_assisted"), GOOD)
    assert again.action is Action.STAY and "waiting for approval" in again.reason


def test_hold_blocks_every_automatic_move():
    assert verdict(policy(), state(hold=True), GOOD).action is Action.STAY
    bad = stats(200, 20)
    assert verdict(policy(), state(Stage.AUTONOMOUS, hold=True), bad).action is Action.STAY


def test_disagreement_rolls_back_one_step():
    v = verdict(policy(), state(Stage.AUTONOMOUS), stats(100, 70))
    assert v.action is Action.ROLLBACK and v.to is Stage.ASSISTED
    assert v.evidence["rule"] == 0 and "agreement 0.7000 < 0.8" in v.evidence["breaches"]


def test_severe_breach_goes_straight_to_shadow_when_the_mild_rule_cannot_fire():
    p = Policy.model_validate({"rollback": [
        {"window": "5m", "min_samples": 500, "agreement_below": 0.8, "to": "previous"},
        {"window": "1m", "min_samples": 20, "agreement_below": 0.5, "to": "shadow"},
    ]})  # fmt: skip
    v = verdict(p, state(Stage.AUTONOMOUS), stats(100, 30))
    assert v.action is Action.ROLLBACK and v.to is Stage.SHADOW and v.evidence["rule"] == 1


def test_first_rule_that_fires_wins():
    v = verdict(policy(), state(Stage.AUTONOMOUS), stats(100, 30))  # both rules fire
    assert v.evidence["rule"] == 0 and v.to is Stage.ASSISTED


def test_error_rate_rolls_back_even_without_samples():
    # a model failing in autonomous stage yields no samples (agree is null) but many attempts
    v = verdict(policy(), state(Stage.AUTONOMOUS), stats(0, 0, attempts=100, errors=30))
    assert v.action is Action.ROLLBACK and "error rate 0.3000 > 0.1" in v.evidence["breaches"]


def test_p99_rule_fires_on_a_slow_model():
    p = Policy.model_validate({"rollback": [{"window": "1m", "min_samples": 20, "p99_above": "250ms", "to": "shadow"}]})
    assert verdict(p, state(Stage.ASSISTED), stats(100, 100, latency_ms=300.0)).to is Stage.SHADOW
    assert verdict(p, state(Stage.ASSISTED), stats(100, 100, latency_ms=200.0)).action is Action.STAY


def test_rules_wait_for_min_samples():
    assert verdict(policy(), state(Stage.AUTONOMOUS), stats(19, 0)).action is not Action.ROLLBACK


def test_shadow_has_nothing_to_roll_back_to():
    assert verdict(policy(), state(Stage.SHADOW, dwell_s=1.0), stats(200, 0)).action is Action.STAY


def test_autonomous_has_no_promotion():
    v = verdict(policy(), state(Stage.AUTONOMOUS), GOOD)
    assert v.action is Action.STAY and "no promotion gate" in v.reason


def test_projected_spend_must_fit_the_cost_budget():
    # 200 requests in the hour (dwell 1 h), 0.01 per call: 0.0556 req/s x 0.01 x 86400 s = 48 per day
    w = stats(200, 198, cost=2.0)
    fits = BudgetTerms(cost_limit=50.0, cost_window_s=86400.0)
    over = BudgetTerms(cost_limit=40.0, cost_window_s=86400.0)
    assert verdict(policy(), state(), w, fits).action is Action.PROMOTE
    v = verdict(policy(), state(), w, over)
    assert v.action is Action.STAY
    (check,) = [c for c in v.evidence["checks"] if c["name"] == "projected_cost_per_window"]
    assert check["value"] == pytest.approx(48.0) and not check["pass"]


def test_projected_call_rate_must_fit_the_rate_budget():
    w = stats(200, 198, requests=7200)  # 2 req/s over the hour
    assert verdict(policy(), state(), w, BudgetTerms(rate_per_s=1.0)).action is Action.STAY
    assert verdict(policy(), state(), w, BudgetTerms(rate_per_s=5.0)).action is Action.PROMOTE


# --- window statistics -----------------------------------------------------------------------------


def decision(stage="shadow", agree=True, *, error=None, skipped=None, latency=12.0, shown=None, sampled=None):
    model = {"error": error, "skipped": skipped, "latency_ms": None if skipped else latency, "cost": 0.001}
    if shown is not None:
        model["suggestion_shown"] = shown
    primary = {} if sampled is None else {"sampled": sampled}
    return {"stage": stage, "agree": agree, "primary": primary, "model": model}


def test_samples_follow_the_stage_rules():
    assert sample_state("shadow", True, {}, {}) == "sample"
    assert sample_state("shadow", None, {}, {}) == "unpaired"
    assert sample_state("assisted", False, {}, {"suggestion_shown": False}) == "excluded"
    assert sample_state("assisted", False, {}, {"suggestion_shown": True}) == "sample"
    assert sample_state("autonomous", True, {"sampled": False}, {}) == "excluded"
    assert sample_state("autonomous", True, {"sampled": True}, {}) == "sample"


def test_skips_are_not_attempts_and_errors_count_their_latency():
    w = WindowStats()
    for record in (decision(), decision(agree=None, error="timeout", latency=300.0),
                   decision(agree=None, skipped="overload"), decision(agree=False)):  # fmt: skip
        w.add_record(record)
    assert w.counts["requests"] == 4 and w.counts["attempts"] == 3 and w.counts["skipped"] == 1
    assert w.samples == 2 and w.counts["agreed"] == 1 and w.error_rate == pytest.approx(1 / 3)
    assert w.latency.count == 3


def test_buckets_sum_back_to_the_window():
    entries = [("r", 1, NOW + i * 0.5, decision()) for i in range(120)]
    buckets = bucketize(entries)
    for resolution in (1, 60, 3600):
        total = WindowStats.total(b for (_, _, res, _), b in buckets.items() if res == resolution)
        assert total.counts["requests"] == 120


# --- which buckets answer a window (plan_buckets) ------------------------------------------------

DAY = 86400
CLOCK = 1_800_000_000.0  # a realistic epoch second; the strategies add fractions and offsets


def oldest_kept_second(now: float) -> int:
    """The first second whose hour bucket is still retained (older data is gone)."""
    hour, retention = TIERS[-1]
    return (int((now - retention - hour) // hour) + 1) * hour


def finest_holding(second: int, now: float) -> int | None:
    """The finest resolution whose bucket containing ``second`` is still retained."""
    return next((r for r, _ in TIERS if retained(r, bucket_start(second, r), now)), None)


@settings(max_examples=3000, deadline=None)
@given(
    now=st.floats(0, 7200).map(lambda x: CLOCK + x),
    age=st.one_of(st.floats(0, 40 * DAY), st.sampled_from([300.0, 900.0, 3600.0, DAY, 3 * DAY, 35 * DAY])),
    length=st.one_of(st.floats(0, 40 * DAY), st.floats(0, 7200), st.just(None)),
)
@example(now=CLOCK + 0.5, age=DAY, length=None)  # the default policy's windows, each up to now
@example(now=CLOCK + 1234.25, age=900.0, length=None)
@example(now=CLOCK + 1234.25, age=300.0, length=None)
@example(now=CLOCK, age=3 * DAY + 1800, length=3600.0)  # across the minute tier's horizon, ending in the past
def test_a_window_plan_is_disjoint_covering_retained_and_small(now, age, length):
    since = now - age
    until = now if length is None else min(since + length, now + 5)
    plan = plan_buckets(since, until, now)
    low, end = int(since // 1), int(until // 1) + 1
    held = oldest_kept_second(now)
    if end <= max(low, held):  # an empty window, or one older than every tier keeps
        assert plan == []
        return
    assert all(start % resolution == 0 and retained(resolution, start, now) for resolution, start in plan)
    spans = sorted((start, start + resolution) for resolution, start in plan)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), "disjoint and without holes"
    first, last = spans[0][0], spans[-1][1]
    # the oldest edge: exact while 1 s buckets reach it, else the containing bucket of the finest tier
    # that still holds it (less than one such bucket more than asked); nothing older than kept data
    if low >= held:
        resolution = finest_holding(low, now)
        assert first == bucket_start(low, resolution)
    else:
        assert first == held
    # the newest edge: up to now, the bucket containing `until` may reach past it (nothing newer
    # exists); otherwise exact while 1 s buckets reach it, else the containing bucket of a coarser tier
    if until >= now - 1.0:
        assert end <= last <= bucket_start(end - 1, 3600) + 3600
    else:
        resolution = finest_holding(end - 1, now)
        assert last == bucket_start(end - 1, resolution) + resolution
    hours = (end - low) // 3600
    bound = 1 + hours + 59 + 59 + 1 if until >= now - 1.0 else 4 * 59 + hours + 2
    assert len(plan) <= bound


def test_the_default_policy_windows_cost_tens_of_buckets_not_thousands():
    """24 h, 15 min and 5 min up to now, at every 7.3 s of an hour: at most 84 + 74 + 64 buckets."""
    worst = dict.fromkeys((DAY, 900, 300), 0)
    for step in range(0, 494):
        now = CLOCK + step * 7.3
        for window in worst:
            worst[window] = max(worst[window], len(plan_buckets(now - window, now, now)))
    assert worst == {DAY: 84, 900: 74, 300: 64}  # was 1,440 + 900 + 300 HGETALLs a route


def test_a_window_is_answered_exactly_at_its_edges_within_the_retention():
    now = CLOCK + 1234.5
    entries = [("r", 1, now - offset, decision()) for offset in range(0, 7200, 7)]
    buckets = bucketize(entries)
    for since, until in [(now - 300, now), (now - 3000.2, now - 100.7), (now - 3599, now - 3000)]:
        plan = plan_buckets(since, until, now)
        total = WindowStats.total(buckets.get(("r", 1, res, start), WindowStats()) for res, start in plan)
        expected = sum(1 for _, _, ts, _ in entries if int(since) <= int(ts) <= int(until))
        assert total.counts["requests"] == expected
