"""proxy.stats against independently computed values and exact percentiles."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.stats import (
    GAMMA,
    MIN_MS,
    RELATIVE_ERROR,
    LatencyHistogram,
    bucket_of,
    bucket_value,
    cohen_kappa,
    wilson_interval,
)


def _exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


# --- Wilson -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        # R: prop.test(81, 100, correct = FALSE)$conf.int -> 0.7222117 0.8748525
        (81, 100, (0.7222, 0.8749)),
        (0, 10, (0.0, 0.2775)),  # upper = z^2 / (n + z^2)
        (10, 10, (0.7225, 1.0)),
        (50, 100, (0.4038, 0.5962)),
        (1, 2, (0.0945, 0.9055)),
    ],
)
def test_wilson_interval_matches_reference_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert (low, high) == pytest.approx(expected, abs=6e-5)


def test_wilson_interval_of_issue_example_truncates_to_its_figures():
    # The issue quotes 81/100 -> [0.722, 0.874]: the bounds cut (not rounded) to 3 decimals.
    low, high = wilson_interval(81, 100)
    assert (math.floor(low * 1000) / 1000, math.floor(high * 1000) / 1000) == (0.722, 0.874)


def test_wilson_interval_of_no_data_is_the_whole_range():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_edges_are_exact():
    assert wilson_interval(0, 7)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0


def test_wilson_upper_bound_of_zero_successes_has_closed_form():
    z = 1.96
    for n in (1, 5, 40, 1000):
        assert wilson_interval(0, n)[1] == pytest.approx(z * z / (n + z * z))


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


@given(st.integers(1, 10_000), st.data())
def test_wilson_interval_contains_the_point_estimate(n, data):
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0


# --- kappa --------------------------------------------------------------------------------------


def _two_by_two(a: int, b: int, c: int, d: int) -> dict[tuple[str, str], int]:
    return {("yes", "yes"): a, ("yes", "no"): b, ("no", "yes"): c, ("no", "no"): d}


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ((20, 5, 10, 15), 0.4),  # Wikipedia "Cohen's kappa", simple example
        ((45, 15, 25, 15), 0.1304),  # Wikipedia, same agreement, different marginals
        ((25, 35, 5, 35), 0.2593),
    ],
)
def test_cohen_kappa_matches_textbook_examples(cells, expected):
    assert cohen_kappa(_two_by_two(*cells)) == pytest.approx(expected, abs=5e-5)


def test_cohen_kappa_three_labels():
    # Fleiss, Levin & Paik, Statistical Methods for Rates and Proportions, table 18.1 (proportions x 100).
    labels = ["psych", "neuro", "organic"]
    cells = [[75, 1, 4], [5, 4, 1], [0, 0, 10]]
    confusion = {(labels[i], labels[j]): cells[i][j] for i in range(3) for j in range(3)}
    assert cohen_kappa(confusion) == pytest.approx(0.676, abs=5e-4)


def test_cohen_kappa_undefined_without_data_or_variation():
    assert cohen_kappa({}) is None
    assert cohen_kappa({("a", "b"): 0}) is None
    assert cohen_kappa({("a", "a"): 12}) is None


def test_cohen_kappa_perfect_and_chance_level():
    assert cohen_kappa({("a", "a"): 5, ("b", "b"): 5}) == pytest.approx(1.0)
    assert cohen_kappa(_two_by_two(25, 25, 25, 25)) == pytest.approx(0.0)


# --- histogram ----------------------------------------------------------------------------------


def test_bucket_formula_is_the_documented_one():
    assert bucket_of(0.0) == 0
    assert bucket_of(MIN_MS) == 0
    assert bucket_of(-3.0) == 0
    assert bucket_of(MIN_MS * 1.0001) == 1
    assert bucket_of(100.0) == math.ceil(math.log(100.0 / MIN_MS) / math.log(GAMMA))
    assert bucket_value(0) == 0.0


@given(st.floats(min_value=MIN_MS * 1.001, max_value=3.6e6))
def test_bucket_value_is_within_relative_error(ms):
    assert abs(bucket_value(bucket_of(ms)) - ms) / ms <= RELATIVE_ERROR * 1.0001


def test_bucket_of_rejects_non_finite_latency():
    with pytest.raises(ValueError):
        bucket_of(float("nan"))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 3000), st.sampled_from([0.5, 0.95, 0.99, 1.0]))
def test_histogram_quantile_tracks_exact_percentile_on_lognormal(seed, n, q):
    rng = random.Random(seed)
    values = [rng.lognormvariate(3.5, 0.8) for _ in range(n)]
    hist = LatencyHistogram()
    for v in values:
        hist.record(v)
    exact = _exact_quantile(values, q)
    assert hist.quantile(q) == pytest.approx(exact, rel=RELATIVE_ERROR * 1.0001)
    assert hist.count == n


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1e5), max_size=200), st.lists(st.floats(0, 1e5), max_size=200))
def test_merge_equals_recording_everything(left, right):
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for v in left:
        a.record(v)
        both.record(v)
    for v in right:
        b.record(v)
        both.record(v)
    a.merge(b)
    assert a == both
    assert a.count == both.count == len(left) + len(right)
    assert a.quantile(0.99) == both.quantile(0.99)


def test_empty_histogram_has_no_quantile():
    assert LatencyHistogram().quantile(0.99) is None
    assert LatencyHistogram().count == 0


def test_record_with_count_weights_the_observation():
    hist = LatencyHistogram()
    hist.record(10.0, count=98)
    hist.record(500.0, count=2)
    assert hist.quantile(0.98) == pytest.approx(10.0, rel=0.01)
    assert hist.quantile(0.99) == pytest.approx(500.0, rel=0.01)
    assert hist.count == 100


def test_histogram_round_trips_through_redis_shaped_dict():
    hist = LatencyHistogram()
    for v in (0.0, 1.5, 1.5, 80.0, 2500.0):
        hist.record(v)
    as_redis = {str(k).encode(): str(v).encode() for k, v in hist.to_dict().items()}
    assert LatencyHistogram.from_dict(as_redis) == hist
    assert LatencyHistogram.from_dict(hist.to_dict()) == hist
    assert LatencyHistogram.from_dict({"3": "0"}).count == 0


def test_quantile_rejects_out_of_range_q():
    with pytest.raises(ValueError):
        LatencyHistogram().quantile(1.5)
