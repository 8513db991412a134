"""The terminal report: rich tables over the summary dict (colour on a terminal, plain in a file)."""

from __future__ import annotations

from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table

from proxy.report import fmt


def data_table(report: dict[str, Any], title: str, head: list[str], cells: Any) -> Table:
    """One of :data:`fmt.TABLES`: route, stage (and group) columns, then the table's own."""
    by = report["by"]
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ["route", "stage"] + ([by.replace("_", " ")] if by else []):
        table.add_column(name)
    for name in head:
        table.add_column(name, justify="right")
    for r in fmt.rows(report):
        lead = [r["route"], r["stage"]] + ([fmt.key(r, by)] if by else [])
        table.add_row(*lead, *cells(r), style="bold" if r.get("total") else None)
    return table


def confusion_table(total: dict[str, Any]) -> Table:
    c = total["confusion"]
    labels = [fmt.value(v) for v in c["labels"]]
    title = f"Confusion {total['route']} / {total['stage']}"
    table = Table(
        title=title,
        title_style="bold",
        min_width=len(title),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("primary ↓ model →")
    for name in labels:
        table.add_column(name, justify="right")
    for name, line in zip(labels, c["matrix"], strict=True):
        table.add_row(name, *(fmt.count(n) for n in line))
    return table


def transitions_table(report: dict[str, Any]) -> Table:
    table = Table(title="Transitions", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in fmt.TRANSITION_COLUMNS:
        table.add_column(name, overflow="fold")
    for t in report["transitions"]:
        table.add_row(*fmt.transition_row(t))
    return table


def headline(report: dict[str, Any]) -> str:
    i = report["inputs"]
    first, last = report["first_ts"], report["last_ts"]
    parts = [fmt.plural(i["decisions"], "decision", "decisions")]
    parts += [f"{first[:16]} → {last[:16]} UTC"] if first else []
    parts += [fmt.plural(i["files"], "file", "files")]
    notes = {
        "malformed": ("malformed line", "malformed lines"),
        "duplicates": ("duplicate", "duplicates"),
        "out_of_scope": ("record out of scope", "records out of scope"),
    }
    parts += [fmt.plural(i[k], *names) for k, names in notes.items() if i[k]]
    return "Shadow-proxy agreement report: " + " · ".join(parts)


def render(report: dict[str, Any], out: IO[str], *, color: bool = False, width: int = 160) -> None:
    """Write the report as tables to ``out``; ``color`` only for a terminal."""
    console = Console(file=out, width=width, color_system="auto" if color else None, highlight=False)
    console.print(headline(report), style="bold")
    if not report["totals"]:
        console.print("No decision records match.")
        return
    for title, head, cells in fmt.TABLES:
        if title.startswith("Accuracy") and not report["outcomes"]["known"]:
            continue
        console.print(data_table(report, title, head, cells))
    if report["outcomes"]["known"]:
        unmatched = report["outcomes"]["unmatched"]
        console.print(f"Outcomes matching no decision in this report: {unmatched:,}.")
    for total in report["totals"]:
        if total["samples"]:
            console.print(confusion_table(total))
    if report["transitions"]:
        console.print(transitions_table(report))
