"""The HTML report: one self-contained page (plotly.js embedded, no network) for a decision memo.

Charts: agreement over time per route with its Wilson 95 % band, stage periods shaded and
transitions marked; the confusion matrix of each route x stage as a heat map; the latency
distribution of both sides per route. Then the same tables as the terminal report.
"""

from __future__ import annotations

import html
from typing import Any

from proxy.report import fmt
from proxy.report.charts import agreement_figure, axis_time, confusion_figure, latency_figure, plotly

PLOT_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "toImageButtonOptions": {"format": "png", "scale": 2},
}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --- tables -----------------------------------------------------------------------------------------


def _table(head: list[str], rows: list[list[str]], bold: list[bool] | None = None, cls: str = "") -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        total = ' class="total"' if bold and bold[i] else ""
        body.append(f"<tr{total}>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>")
    table = f' class="{cls}"' if cls else ""
    return f"<table{table}><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def tables(report: dict[str, Any]) -> str:
    """The report's tables as HTML, built from the same rows as the terminal tables."""
    parts = []
    for title, head, cells in fmt.TABLES:
        if title.startswith("Accuracy") and not report["outcomes"]["known"]:
            continue
        rows = fmt.rows(report)
        lead = ["route", "stage"] + ([report["by"].replace("_", " ")] if report["by"] else [])
        body = [
            [r["route"], r["stage"]] + ([fmt.key(r, report["by"])] if report["by"] else []) + cells(r) for r in rows
        ]
        parts.append(f"<h3>{_esc(title)}</h3>" + _table(lead + head, body, [bool(r.get("total")) for r in rows]))
    if report["transitions"]:
        head = fmt.TRANSITION_COLUMNS
        body = [fmt.transition_row(t) for t in report["transitions"]]
        parts.append("<h3>Transitions</h3>" + _table(head, body, cls="text"))
    return "\n".join(parts)


# --- page -------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1320px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:32px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:20px 0 6px}.sub{color:#555;font-size:13px;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #e3e3e3;border-radius:6px;padding:10px 14px;min-width:230px;background:#fcfcfd}
.card b{font-size:13px}
.card .big{font-size:22px;font-weight:600;margin:4px 0}.card .small{font-size:12px;color:#555}
.grid{display:flex;flex-wrap:wrap;gap:8px}
table{border-collapse:collapse;font-size:12px;margin:4px 0 8px;font-variant-numeric:tabular-nums}
th,td{padding:3px 9px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f3f4f6;font-weight:600}th:nth-child(-n+3),td:nth-child(-n+3){text-align:left}
tr.total td{font-weight:600;border-bottom:1px solid #bbb}
table.text td,table.text th{text-align:left}
.js-plotly-plot .plotly .modebar{opacity:0;transition:opacity .2s}
.js-plotly-plot .plotly:hover .modebar{opacity:1}.note{font-size:12px;color:#555;max-width:960px}
"""


def _cards(report: dict[str, Any]) -> str:
    """One card per route: its latest stage's figures, the ones a memo quotes."""
    latest: dict[str, dict] = {}
    for t in report["totals"]:
        if t["route"] not in latest or t["last_ts"] > latest[t["route"]]["last_ts"]:
            latest[t["route"]] = t
    cards = []
    for route, t in sorted(latest.items()):
        a, m = t["agreement"], t["model"]
        acc = t["outcomes"]["model"]
        extra = f" · model accuracy {fmt.interval(acc)}" if acc["n"] else ""
        ci = f"95% CI {fmt.pct(a['low'])}{fmt.DASH}{fmt.pct(a['high'])}" if a["rate"] is not None else ""
        cards.append(
            f'<div class="card"><b>{_esc(route)}</b> · {_esc(t["stage"])}'
            f'<div class="big">{fmt.pct(a["rate"])}</div><div class="small">agreement, {ci} · '
            f"{t['samples']:,} sample{'' if t['samples'] == 1 else 's'}<br>kappa {fmt.num(t['kappa'], 3)}"
            " · error rate "
            f"{fmt.pct(m['error_rate'], 2)} · model p99 {fmt.ms(t['latency_ms']['model']['p99'])} ms{extra}"
            "</div></div>"
        )
    return '<div class="cards">' + "".join(cards) + "</div>"


NOTES = (
    "A <i>sample</i> is a decision with both decisions present (agree not null); in assisted stage only "
    "where the suggestion was shown, in autonomous stage only the primary_sample share. Intervals are "
    "two-sided 95% Wilson score intervals. Kappa is Cohen's kappa of primary vs model labels. Error "
    "rate: model calls ending in error, timeout or invalid ÷ calls attempted (skipped calls are not "
    "attempts). Latency percentiles come from 1%-wide log buckets (within 1%). Accuracy joins each "
    "outcome to the latest decision with its request id."
)


def render(report: dict[str, Any]) -> str:
    """The whole page as one string; raises :class:`ReportError` when plotly is missing."""
    _, pio, po = plotly()

    def div(fig: Any) -> str:
        return pio.to_html(fig, full_html=False, include_plotlyjs=False, config=PLOT_CONFIG)

    timeline, period = report["timeline"], _period(report)
    over_time = [
        div(agreement_figure(r, bins, report["transitions"], timeline["bin_minutes"], period))
        for r, bins in timeline["routes"].items()
    ]
    heat = [div(confusion_figure(t)) for t in report["totals"] if t["samples"]]
    routes = sorted({t["route"] for t in report["totals"]})
    latency = [div(latency_figure(r, [t for t in report["totals"] if t["route"] == r])) for r in routes]
    from proxy.report.render_table import headline

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Shadow-proxy agreement report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style>
<script type="text/javascript">{po.get_plotlyjs()}</script></head>
<body><main>
<h1>Model agreement report</h1><p class="sub">{_esc(headline(report).split(": ", 1)[1])}{_filters(report)}</p>
{_cards(report)}
<h2>Agreement over time</h2>{"".join(over_time) or "<p>No samples.</p>"}
<h2>Confusion matrices</h2><p class="note">Rows: primary decision; columns: model decision; colour and
percentage: share of the row.</p><div class="grid">{"".join(heat)}</div>
<h2>Latency</h2>{"".join(latency)}
<h2>Tables</h2>{tables(report)}
<h2>Definitions</h2><p class="note">{NOTES}</p>
</main></body></html>
"""


def _period(report: dict[str, Any]) -> tuple[str, str]:
    """The time axis of every timeline: all bins and transitions, as plotly date strings."""
    times = [t["ts"] for t in report["transitions"]]
    for bins in report["timeline"]["routes"].values():
        times += [bins[0]["start"], bins[-1]["end"]]
    if not times:
        return ("", "")
    return axis_time(min(times)), axis_time(max(times))


def _filters(report: dict[str, Any]) -> str:
    f = report["filters"]
    parts = [
        f"routes {', '.join(f['routes'])}" if f["routes"] else "",
        f"since {f['since']}" if f["since"] else "",
        f"until {f['until']}" if f["until"] else "",
        f"by {report['by']}" if report["by"] else "",
    ]
    shown = " · ".join(p for p in parts if p)
    return f" · {_esc(shown)}" if shown else ""
