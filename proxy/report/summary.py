"""The report as one JSON-shaped dict: the stable shape every format renders (docs/report.md).

Pure: figures in, plain values out. Rates are rounded to 6 decimals, latencies to 0.001 ms (they
come from histogram buckets, within 1 % of the exact figure), costs to 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from proxy.report.aggregate import Aggregator
from proxy.report.groups import MAX_LABELS, OTHER, STAGE_ORDER, Accuracy, GroupKey, GroupStats
from proxy.stats import LatencyHistogram, bucket_value, cohen_kappa, wilson_interval

SCHEMA = "shadow-proxy.report/1"
MODEL_ERRORS = ("timeout", "error", "invalid")
TIMELINE_BINS = 120
BIN_MINUTES = (1, 5, 15, 60, 180, 360, 720, 1440, 10080)
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def _r(x: float | None, places: int = 6) -> float | None:
    return None if x is None else round(x, places)


def proportion(successes: int, n: int) -> dict[str, Any]:
    """``{"rate", "low", "high"}``: the share and its Wilson 95 % interval (rate null when n == 0)."""
    low, high = wilson_interval(successes, n)
    return {"rate": _r(successes / n) if n else None, "low": _r(low), "high": _r(high)}


def confusion_view(cells: Mapping[tuple[str, str], int], top: int) -> dict[str, Any]:
    """Rows: primary labels, columns: model labels, the ``top`` most frequent labels (by row plus
    column count) in that order, every other label folded into a last row and column ``"(other)"``.
    """
    totals: dict[str, int] = {}
    for (primary, model), n in cells.items():
        totals[primary] = totals.get(primary, 0) + n
        totals[model] = totals.get(model, 0) + n
    ranked = sorted((t for t in totals if t != OTHER), key=lambda t: (-totals[t], t))
    keep = ranked[:top]
    folded = len(ranked) > top or OTHER in totals
    index = {text: i for i, text in enumerate(keep)}
    size = len(keep) + folded
    matrix = [[0] * size for _ in range(size)]
    for (primary, model), n in cells.items():
        matrix[index.get(primary, size - 1)][index.get(model, size - 1)] += n
    labels: list[Any] = [orjson.loads(text) for text in keep] + ([OTHER] if folded else [])
    return {"labels": labels, "folded": folded, "matrix": matrix}


def latency_view(hist: LatencyHistogram, with_histogram: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"count": hist.count}
    out.update((name, _r(hist.quantile(q), 3)) for name, q in QUANTILES)
    if with_histogram:
        out["histogram"] = [[_r(bucket_value(i), 3), n] for i, n in sorted(hist.to_dict().items())]
    return out


def accuracy_view(acc: Accuracy) -> dict[str, Any]:
    return {"n": acc.n, "correct": acc.correct} | proportion(acc.correct, acc.n)


def model_view(g: GroupStats) -> dict[str, Any]:
    errors = {kind: g.errors.get(kind, 0) for kind in MODEL_ERRORS}
    errors["error"] += sum(n for kind, n in g.errors.items() if kind not in MODEL_ERRORS)
    failed = sum(errors.values())
    return {
        "attempted": g.attempted,
        "ok": g.ok,
        **errors,
        "error_rate": _r(failed / g.attempted) if g.attempted else None,
        "skipped": dict(sorted(g.skipped.items())),
    }


def group_view(key: GroupKey, g: GroupStats, top: int, histograms: bool) -> dict[str, Any]:
    """One row of the report (see docs/report.md for every field)."""
    route, stage, value = key
    return {
        "route": route,
        "stage": stage,
        "key": None if value is None else orjson.loads(value),
        "first_ts": g.first_ts or None,
        "last_ts": g.last_ts or None,
        "requests": g.requests,
        "samples": g.samples,
        "agreed": g.agreed,
        "unpaired": g.unpaired,
        "excluded": g.excluded,
        "agreement": proportion(g.agreed, g.samples),
        "kappa": _r(cohen_kappa(g.confusion)),
        "confusion": confusion_view(g.confusion, top) | {"truncated": g.truncated},
        "model": model_view(g),
        "fallback": dict(sorted(g.fallback.items())),
        "latency_ms": {
            "primary": latency_view(g.primary_ms, histograms),
            "model": latency_view(g.model_ms, histograms),
        },
        "cost": {
            "total": _r(g.cost, 9),
            "per_1k_requests": _r(g.cost * 1000 / g.requests, 9) if g.requests else None,
        },
        "outcomes": {
            "matched": g.matched,
            "awaiting": g.awaiting,
            "primary": accuracy_view(g.primary_acc),
            "model": accuracy_view(g.model_acc),
        },
    }


def _order(key: GroupKey) -> tuple:
    route, stage, value = key
    return (route, STAGE_ORDER.get(stage, 9), stage, value is not None, value or "")


def totals(groups: Mapping[GroupKey, GroupStats]) -> dict[GroupKey, GroupStats]:
    """The groups merged per route x stage."""
    merged: dict[GroupKey, GroupStats] = {}
    for (route, stage, _), g in groups.items():
        merged.setdefault((route, stage, None), GroupStats()).merge(g)
    return merged


def _minute(text: str) -> datetime:
    return datetime.fromisoformat(text + ":00+00:00")


def timeline_view(per_route: Mapping[str, Mapping[str, list[int]]]) -> dict[str, Any]:
    """Agreement per time bin and route; the bin is the smallest of :data:`BIN_MINUTES` that keeps
    every route under :data:`TIMELINE_BINS` bins. Bins without samples are left out.
    """
    minutes = [m for cells in per_route.values() for m in cells]
    if not minutes:
        return {"bin_minutes": None, "routes": {}}
    start, end = _minute(min(minutes)), _minute(max(minutes))
    span = (end - start).total_seconds() / 60 + 1
    width = next((w for w in BIN_MINUTES if span / w <= TIMELINE_BINS), BIN_MINUTES[-1])
    epoch = datetime(1970, 1, 5, tzinfo=UTC)  # a Monday, so week bins start on Mondays
    routes = {}
    for route, cells in sorted(per_route.items()):
        bins: dict[int, list[int]] = {}
        for minute, (samples, agreed) in cells.items():
            b = bins.setdefault(math.floor((_minute(minute) - epoch).total_seconds() / 60 / width), [0, 0])
            b[0] += samples
            b[1] += agreed
        routes[route] = [_bin(epoch, width, i, *bins[i]) for i in sorted(bins)]
    return {"bin_minutes": width, "routes": routes}


def _bin(epoch: datetime, width: int, i: int, samples: int, agreed: int) -> dict[str, Any]:
    start = epoch + timedelta(minutes=i * width)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "start": start.strftime(fmt),
        "end": (start + timedelta(minutes=width)).strftime(fmt),
        "samples": samples,
        "agreed": agreed,
    } | proportion(agreed, samples)


def summarize(agg: Aggregator, inputs: Mapping[str, int], *, top_labels: int = 8) -> dict[str, Any]:
    """The whole report. ``inputs``: counts from reading (``files``, ``malformed``, ``duplicates``)."""
    scope = agg.scope
    merged = totals(agg.groups)
    first = min((g.first_ts for g in merged.values()), default=None)
    last = max((g.last_ts for g in merged.values()), default=None)
    return {
        "schema": SCHEMA,
        "by": scope.by,
        "filters": {"routes": sorted(scope.routes), "since": scope.since, "until": scope.until},
        "inputs": dict(inputs) | agg.counts,
        "first_ts": first,
        "last_ts": last,
        "groups": [group_view(k, agg.groups[k], top_labels, False) for k in sorted(agg.groups, key=_order)],
        "totals": [group_view(k, merged[k], top_labels, True) for k in sorted(merged, key=_order)],
        "outcomes": {"known": len(agg.outcomes), "unmatched": agg.unmatched_outcomes},
        "timeline": timeline_view(agg.timeline),
        "transitions": agg.transitions,
        "limits": {"top_labels": top_labels, "max_labels": MAX_LABELS},
    }
