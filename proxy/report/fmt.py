"""Small text formatters shared by the table and HTML renderers. Pure."""

from __future__ import annotations

from typing import Any

import orjson

DASH = "\u2013"  # en dash: "no value" in tables


def count(n: int | None) -> str:
    return DASH if n is None else f"{n:,}"


def plural(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def pct(rate: float | None, places: int = 1) -> str:
    return DASH if rate is None else f"{rate * 100:.{places}f}%"


def interval(p: dict[str, Any]) -> str:
    """``97.1% [96.4-97.7]`` (an en dash in the output) from a ``{"rate", "low", "high"}`` proportion."""
    if p["rate"] is None:
        return DASH
    return f"{pct(p['rate'])} [{p['low'] * 100:.1f}{DASH}{p['high'] * 100:.1f}]"


def num(x: float | None, places: int = 2) -> str:
    return DASH if x is None else f"{x:,.{places}f}"


def ms(x: float | None) -> str:
    if x is None:
        return DASH
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def value(v: Any) -> str:
    """A decision or group value for display: strings bare, everything else as JSON."""
    if isinstance(v, str):
        return v
    return orjson.dumps(v).decode()


def key(group: dict[str, Any], by: str | None) -> str:
    """The group column: its --by value, or ``all`` for a route x stage total."""
    if by is None:
        return ""
    return "all" if group.get("total") else ("(none)" if group["key"] is None else value(group["key"]))


def counts(d: dict[str, int]) -> str:
    """``rate 3, cost 1`` (largest first), or a dash."""
    if not d:
        return DASH
    return ", ".join(f"{k} {n:,}" for k, n in sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))


# The figures a reader of a terminal table needs; JSON and HTML keep the whole evidence.
_EVIDENCE_KEYS = ("samples", "agreement", "agreement_lower", "error_rate", "p99_ms", "dwell_s", "breaches")


def evidence(e: Any) -> str:
    """Transition evidence on one line: ``samples=2400 agreement=0.971 ... checks: all passed``."""
    if not isinstance(e, dict):
        return "" if e is None else value(e)
    parts = [f"{k}={value(e[k])}" for k in _EVIDENCE_KEYS if e.get(k) is not None]
    checks = e.get("checks")
    if isinstance(checks, list) and checks:
        failed = [str(c.get("name")) for c in checks if isinstance(c, dict) and not c.get("pass")]
        parts.append("failed: " + ", ".join(failed) if failed else "checks: all passed")
    if not parts:
        parts = [f"{k}={value(v)}" for k, v in e.items()]
    return " ".join(parts)


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for a table: without ``--by`` the route x stage totals; with it, each route x stage's
    groups followed by its total (marked ``"total": True``).
    """
    if report["by"] is None:
        return report["totals"]
    out: list[dict[str, Any]] = []
    for total in report["totals"]:
        pair = (total["route"], total["stage"])
        out.extend(g for g in report["groups"] if (g["route"], g["stage"]) == pair)
        out.append(total | {"total": True})
    return out


# --- the report's tables: (title, value columns, row -> cells), shared by the table and HTML renderers


def _agreement(r: dict[str, Any]) -> list[str]:
    return [
        count(r["requests"]),
        count(r["samples"]),
        interval(r["agreement"]),
        num(r["kappa"], 3),
        count(r["unpaired"]),
        count(r["excluded"]),
    ]


def _model(r: dict[str, Any]) -> list[str]:
    m = r["model"]
    return [
        count(m["attempted"]),
        count(m["ok"]),
        count(m["error"]),
        count(m["timeout"]),
        count(m["invalid"]),
        pct(m["error_rate"], 2),
        counts(m["skipped"]),
        counts(r["fallback"]),
    ]


def _latency(r: dict[str, Any]) -> list[str]:
    p, m = r["latency_ms"]["primary"], r["latency_ms"]["model"]
    quantiles = [ms(side[q]) for side in (p, m) for q in ("p50", "p95", "p99")]
    return [*quantiles, num(r["cost"]["total"], 4), num(r["cost"]["per_1k_requests"], 4)]


def _outcomes(r: dict[str, Any]) -> list[str]:
    o = r["outcomes"]
    return [count(o["matched"]), count(o["awaiting"]), interval(o["primary"]), interval(o["model"])]


TABLES = (
    (
        "Agreement (Wilson 95% interval)",
        ["requests", "samples", "agreement", "kappa", "unpaired", "excluded"],
        _agreement,
    ),
    (
        "Model calls",
        ["attempted", "ok", "error", "timeout", "invalid", "error rate", "skipped", "fallbacks"],
        _model,
    ),
    (
        "Latency (ms) and cost",
        ["primary p50", "p95", "p99", "model p50", "p95", "p99", "cost", "per 1k req"],
        _latency,
    ),
    ("Accuracy against outcomes", ["matched", "awaiting", "primary accuracy", "model accuracy"], _outcomes),
)


TRANSITION_COLUMNS = ["time (UTC)", "route", "event", "from → to", "actor", "reason", "evidence"]


def transition_row(t: dict[str, Any]) -> list[str]:
    """One transition as the table and HTML renderers show it (columns: :data:`TRANSITION_COLUMNS`)."""
    return [
        t["ts"][:19].replace("T", " "),
        t["route"],
        str(t["event"]),
        f"{t['from']} → {t['to']}",
        str(t["actor"]),
        str(t["reason"] or ""),
        evidence(t["evidence"]),
    ]
