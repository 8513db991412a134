"""The terminal report: rich tables over the summary dict (colour on a terminal, plain in a file)."""

from __future__ import annotations

from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table

from proxy.report import fmt


def _table(title: str, by: str | None, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("route")
    table.add_column("stage")
    if by:
        table.add_column(by.replace("_", " "))
    for name in columns:
        table.add_column(name, justify="right")
    return table


def _add(table: Table, row: dict[str, Any], by: str | None, *cells: str) -> None:
    lead = [row["route"], row["stage"]] + ([fmt.key(row, by)] if by else [])
    table.add_row(*lead, *cells, style="bold" if row.get("total") else None)


def agreement_table(report: dict[str, Any]) -> Table:
    by = report["by"]
    table = _table(
        "Agreement (Wilson 95% interval)",
        by,
        "requests",
        "samples",
        "agreement",
        "kappa",
        "unpaired",
        "excluded",
    )
    for r in fmt.rows(report):
        kappa = fmt.num(r["kappa"], 3)
        _add(
            table,
            r,
            by,
            fmt.count(r["requests"]),
            fmt.count(r["samples"]),
            fmt.interval(r["agreement"]),
            kappa,
            fmt.count(r["unpaired"]),
            fmt.count(r["excluded"]),
        )
    return table


def model_table(report: dict[str, Any]) -> Table:
    by = report["by"]
    table = _table(
        "Model calls",
        by,
        "attempted",
        "ok",
        "error",
        "timeout",
        "invalid",
        "error rate",
        "skipped",
        "fallbacks",
    )
    for r in fmt.rows(report):
        m = r["model"]
        _add(
            table,
            r,
            by,
            fmt.count(m["attempted"]),
            fmt.count(m["ok"]),
            fmt.count(m["error"]),
            fmt.count(m["timeout"]),
            fmt.count(m["invalid"]),
            fmt.pct(m["error_rate"], 2),
            fmt.counts(m["skipped"]),
            fmt.counts(r["fallback"]),
        )
    return table


def latency_table(report: dict[str, Any]) -> Table:
    by = report["by"]
    table = _table(
        "Latency (ms) and cost",
        by,
        "primary p50",
        "p95",
        "p99",
        "model p50",
        "p95",
        "p99",
        "cost",
        "per 1k req",
    )
    for r in fmt.rows(report):
        p, m = r["latency_ms"]["primary"], r["latency_ms"]["model"]
        _add(
            table,
            r,
            by,
            *(fmt.ms(p[q]) for q in ("p50", "p95", "p99")),
            *(fmt.ms(m[q]) for q in ("p50", "p95", "p99")),
            fmt.num(r["cost"]["total"], 4),
            fmt.num(r["cost"]["per_1k_requests"], 4),
        )
    return table


def outcomes_table(report: dict[str, Any]) -> Table:
    by = report["by"]
    table = _table("Accuracy against outcomes", by, "matched", "awaiting", "primary", "model")
    for r in fmt.rows(report):
        o = r["outcomes"]
        _add(
            table,
            r,
            by,
            fmt.count(o["matched"]),
            fmt.count(o["awaiting"]),
            fmt.interval(o["primary"]),
            fmt.interval(o["model"]),
        )
    return table


def confusion_table(total: dict[str, Any]) -> Table:
    c = total["confusion"]
    labels = [fmt.value(v) for v in c["labels"]]
    table = Table(
        title=f"Confusion {total['route']} / {total['stage']} (rows: primary, columns: model)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("primary \\ model")
    for name in labels:
        table.add_column(name, justify="right")
    for name, line in zip(labels, c["matrix"], strict=True):
        table.add_row(name, *(fmt.count(n) for n in line))
    return table


def transitions_table(report: dict[str, Any]) -> Table:
    table = Table(
        title="Transitions", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for name in ("time (UTC)", "route", "event", "from → to", "actor", "reason", "evidence"):
        table.add_column(name, overflow="fold")
    for t in report["transitions"]:
        table.add_row(
            t["ts"][:19].replace("T", " "),
            t["route"],
            str(t["event"]),
            f"{t['from']} → {t['to']}",
            str(t["actor"]),
            str(t["reason"] or ""),
            fmt.evidence(t["evidence"]),
        )
    return table


def headline(report: dict[str, Any]) -> str:
    i = report["inputs"]
    span = (
        f"{report['first_ts'][:16]} → {report['last_ts'][:16]} UTC" if report["first_ts"] else "no decisions"
    )
    parts = [f"{i['decisions']:,} decisions", span, f"{i['files']:,} files"]
    parts += [f"{i[k]:,} {k.replace('_', ' ')}" for k in ("malformed", "duplicates", "out_of_scope") if i[k]]
    return "Shadow-proxy agreement report: " + " · ".join(parts)


def render(report: dict[str, Any], out: IO[str], *, color: bool = False, width: int = 160) -> None:
    """Write the report as tables to ``out``; ``color`` only for a terminal."""
    console = Console(file=out, width=width, color_system="auto" if color else None, highlight=False)
    console.print(headline(report), style="bold")
    console.print(agreement_table(report), model_table(report), latency_table(report))
    if report["outcomes"]["known"]:
        console.print(outcomes_table(report))
        console.print(f"{report['outcomes']['unmatched']:,} outcomes matched no decision in this report.")
    for total in report["totals"]:
        if total["samples"]:
            console.print(confusion_table(total))
    if report["transitions"]:
        console.print(transitions_table(report))
