"""Flat exports: JSON, CSV (one row per group) and Parquet (the same rows, pyarrow optional).

The flat columns are fixed (:data:`COLUMNS`): skip and fallback reasons come from the closed sets in
:mod:`proxy.stages`, with an ``_other`` column for anything else, so a file's header never depends
on the data.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any

import orjson

from proxy.report.read import ReportError
from proxy.stages import Fallback, Skip

SKIPS = [s.value for s in Skip]
FALLBACKS = [f.value for f in Fallback]
COLUMNS = [
    "route",
    "stage",
    "by",
    "key",
    "first_ts",
    "last_ts",
    "requests",
    "samples",
    "agreed",
    "unpaired",
    "excluded",
    "agreement",
    "agreement_low",
    "agreement_high",
    "kappa",
    "model_attempted",
    "model_ok",
    "model_error",
    "model_timeout",
    "model_invalid",
    "model_error_rate",
    *(f"skipped_{s}" for s in SKIPS),
    "skipped_other",
    *(f"fallback_{f}" for f in FALLBACKS),
    "fallback_other",
    "primary_p50_ms",
    "primary_p95_ms",
    "primary_p99_ms",
    "model_p50_ms",
    "model_p95_ms",
    "model_p99_ms",
    "cost_total",
    "cost_per_1k_requests",
    "outcomes_matched",
    "outcomes_awaiting",
    "primary_judged",
    "primary_correct",
    "primary_accuracy",
    "primary_accuracy_low",
    "primary_accuracy_high",
    "model_judged",
    "model_correct",
    "model_accuracy",
    "model_accuracy_low",
    "model_accuracy_high",
    "confusion",
]


def _reasons(prefix: str, known: list[str], counts: dict[str, int]) -> dict[str, int]:
    out = {f"{prefix}_{k}": counts.get(k, 0) for k in known}
    out[f"{prefix}_other"] = sum(n for k, n in counts.items() if k not in known)
    return out


def _accuracy(side: str, acc: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{side}_judged": acc["n"],
        f"{side}_correct": acc["correct"],
        f"{side}_accuracy": acc["rate"],
        f"{side}_accuracy_low": acc["low"],
        f"{side}_accuracy_high": acc["high"],
    }


def _key_text(key: Any) -> str | None:
    if key is None or isinstance(key, str):
        return key
    return orjson.dumps(key).decode()


def flat_row(group: dict[str, Any], by: str | None) -> dict[str, Any]:
    """One group of the summary as the :data:`COLUMNS` (``key`` as text; ``confusion`` as JSON text)."""
    m, lat, out = group["model"], group["latency_ms"], group["outcomes"]
    copied = (
        "route",
        "stage",
        "first_ts",
        "last_ts",
        "requests",
        "samples",
        "agreed",
        "unpaired",
        "excluded",
    )
    row: dict[str, Any] = {k: group[k] for k in (*copied, "kappa")}
    row |= {"by": by, "key": _key_text(group["key"])}
    a = group["agreement"]
    row |= {"agreement": a["rate"], "agreement_low": a["low"], "agreement_high": a["high"]}
    row |= {f"model_{k}": m[k] for k in ("attempted", "ok", "error", "timeout", "invalid", "error_rate")}
    row |= _reasons("skipped", SKIPS, m["skipped"]) | _reasons("fallback", FALLBACKS, group["fallback"])
    row |= {f"{side}_{q}_ms": lat[side][q] for side in ("primary", "model") for q in ("p50", "p95", "p99")}
    row |= {"cost_total": group["cost"]["total"], "cost_per_1k_requests": group["cost"]["per_1k_requests"]}
    row |= {"outcomes_matched": out["matched"], "outcomes_awaiting": out["awaiting"]}
    row |= _accuracy("primary", out["primary"]) | _accuracy("model", out["model"])
    row["confusion"] = orjson.dumps(group["confusion"]).decode()
    return {c: row[c] for c in COLUMNS}


def flat_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [flat_row(g, report["by"]) for g in report["groups"]]


def write_json(report: dict[str, Any], out: IO[str]) -> None:
    out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")


def write_csv(report: dict[str, Any], out: IO[str]) -> None:
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat_rows(report))


def write_parquet(report: dict[str, Any], path: Path) -> None:
    """The CSV's rows as a Parquet file; needs pyarrow (``pip install 'shadow-proxy[report]'``)."""
    pa, pq = require_pyarrow()
    rows = flat_rows(report)
    table = pa.Table.from_pylist(rows, schema=_schema(pa)) if rows else _schema(pa).empty_table()
    pq.write_table(table, path)


def require_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ReportError("--format parquet needs pyarrow: pip install 'shadow-proxy[report]'") from None
    return pa, pq


def _schema(pa: Any) -> Any:
    text = {"route", "stage", "by", "key", "first_ts", "last_ts", "confusion"}
    floats = {
        "agreement",
        "agreement_low",
        "agreement_high",
        "kappa",
        "model_error_rate",
        "cost_total",
        "cost_per_1k_requests",
    }

    def kind(column: str) -> Any:
        if column in text:
            return pa.string()
        if column in floats or column.endswith(("_ms", "_accuracy", "_low", "_high")):
            return pa.float64()
        return pa.int64()

    return pa.schema([(c, kind(c)) for c in COLUMNS])
