"""Plotly figures of the HTML report, built from the summary dict. Pure: dicts in, figures out."""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

from proxy.report import fmt
from proxy.report.read import ReportError

PRIMARY, MODEL = "#4c6a92", "#e07b39"
STAGE_FILL = {
    "shadow": "rgba(120,120,120,0.07)",
    "assisted": "rgba(76,106,146,0.09)",
    "autonomous": "rgba(224,123,57,0.10)",
}
LAYOUT = {
    "template": "plotly_white",
    "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12},
    "margin": {"l": 60, "r": 20, "t": 40, "b": 45},
}


def plotly() -> tuple[Any, Any, Any]:
    """``(graph_objects, io, offline)``; raises :class:`ReportError` when plotly is missing."""
    try:
        import plotly.graph_objects as go
        import plotly.io as pio
        import plotly.offline as po
    except ImportError:
        raise ReportError("--format html needs plotly: pip install 'shadow-proxy[report]'") from None
    return go, pio, po


def _stage_periods(route: str, transitions: list[dict], start: str, end: str) -> list[tuple[str, str, str]]:
    """``(stage, from, to)`` spans of a route, from its stage-changing transitions."""
    moves = [t for t in transitions if t["route"] == route and t["from"] != t["to"] and t["to"]]
    if not moves:
        return []
    periods, since, stage = [], start, moves[0]["from"]
    for t in moves:
        periods.append((stage, since, axis_time(t["ts"])))
        since, stage = axis_time(t["ts"]), t["to"]
    periods.append((stage, since, end))
    return [(s, a, b) for s, a, b in periods if a < b]


def axis_time(ts: str) -> str:
    """``2026-11-21 10:00:00``: a timestamp as plotly reads it on a date axis (UTC, no zone suffix)."""
    return ts[:19].replace("T", " ")


def _segments(bins: list[dict]) -> list[list[dict]]:
    """Runs of adjacent bins: lines and bands break where there was no sample."""
    runs: list[list[dict]] = []
    for b in bins:
        if runs and runs[-1][-1]["end"] == b["start"]:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def _steps(run: list[dict], field: str) -> tuple[list[str], list[float]]:
    """A step per bin, from its start to its end (each figure holds for the whole bin)."""
    return [b["start"] for b in run] + [run[-1]["end"]], [b[field] * 100 for b in run] + [run[-1][field] * 100]


def agreement_figure(
    route: str, bins: list[dict], transitions: list[dict], bin_minutes: int, period: tuple[str, str]
) -> Any:
    """Agreement per time bin with its Wilson band; stage periods shaded, transitions as lines."""
    go, _, _ = plotly()
    fig = go.Figure()
    step = {"shape": "hv", "width": 0}
    for i, run in enumerate(_segments(bins)):
        (x, high), (_, low) = _steps(run, "high"), _steps(run, "low")
        fig.add_trace(go.Scatter(x=x, y=high, mode="lines", line=step, hoverinfo="skip", showlegend=False))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=low,
                mode="lines",
                line=step,
                hoverinfo="skip",
                fill="tonexty",
                fillcolor="rgba(76,106,146,0.22)",
                name="Wilson 95% interval",
                legendgroup="band",
                showlegend=i == 0,
            )
        )
        x, y = _steps(run, "rate")
        data = [[b["samples"], b["low"] * 100, b["high"] * 100] for b in run]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line={"color": PRIMARY, "width": 2, "shape": "hv"},
                name="agreement",
                legendgroup="rate",
                showlegend=i == 0,
                customdata=[*data, data[-1]],
                hovertemplate="from %{x}<br>%{y:.1f}% [%{customdata[1]:.1f}-%{customdata[2]:.1f}]"
                "<br>%{customdata[0]:,} samples<extra></extra>",
            )
        )
    _mark_stages(fig, route, transitions, period)
    floor = min((b["low"] * 100 for b in bins), default=0)
    fig.update_layout(
        **LAYOUT,
        height=340,
        legend={"orientation": "h", "y": -0.18},
        title={"text": f"{html.escape(route)}: agreement per {_bin_name(bin_minutes)}", "x": 0},
    )
    fig.update_xaxes(range=list(period))
    fig.update_yaxes(title="agreement %", range=[max(0, math.floor(floor) - 2), 103], ticksuffix="%")
    return fig


def _mark_stages(fig: Any, route: str, transitions: list[dict], period: tuple[str, str]) -> None:
    go, _, _ = plotly()
    for stage, a, b in _stage_periods(route, transitions, *period):
        fig.add_vrect(
            x0=a,
            x1=b,
            fillcolor=STAGE_FILL.get(stage, "rgba(0,0,0,0.04)"),
            line_width=0,
            layer="below",
            annotation_text=stage,
            annotation_position="bottom left",
            annotation_font_color="#666",
        )
    mine = [t for t in transitions if t["route"] == route]
    for t in mine:
        moved = t["from"] != t["to"]
        color = "#b23b3b" if t["event"] == "rollback" else "#555"
        fig.add_vline(x=_ms_epoch(t["ts"]), line_dash="dash" if moved else "dot", line_color=color, line_width=1)
    if mine:  # hover on the triangles at the top tells who moved the route, and why
        fig.add_trace(
            go.Scatter(
                x=[axis_time(t["ts"]) for t in mine],
                y=[101.5] * len(mine),
                mode="markers",
                marker={"symbol": "triangle-down", "size": 9, "color": "#555"},
                name="transition",
                text=[
                    f"{t['event']}: {t['from']} → {t['to']}<br>{t['actor']}: {html.escape(str(t['reason']))}"
                    for t in mine
                ],
                hovertemplate="%{x}<br>%{text}<extra></extra>",
            )
        )


def _ms_epoch(ts: str) -> float:
    # add_vline on a date axis needs epoch milliseconds (plotly cannot average date strings for annotations)
    return datetime.fromisoformat(ts).astimezone(UTC).timestamp() * 1000


def _bin_name(minutes: int) -> str:
    names = {60: "hour", 1440: "day", 10080: "week"}
    return names.get(minutes, f"{minutes} min" if minutes < 60 else f"{minutes // 60} h")


def confusion_figure(total: dict[str, Any]) -> Any:
    go, _, _ = plotly()
    c = total["confusion"]
    labels = [fmt.value(v) for v in c["labels"]]
    matrix = c["matrix"]
    share = [[n / (sum(row) or 1) for n in row] for row in matrix]
    text = [
        [f"{n:,}<br>{s:.0%}" for n, s in zip(row, srow, strict=True)] for row, srow in zip(matrix, share, strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=labels,
            y=labels,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate="primary %{y} · model %{x}<br>%{text}<extra></extra>",
        )
    )
    size = 120 + 55 * len(labels)
    fig.update_layout(
        **LAYOUT,
        height=size + 60,
        width=size + 90,
        title={"text": f"{html.escape(total['route'])} · {total['stage']}", "x": 0},
    )
    fig.update_xaxes(title="model", side="bottom", type="category")
    fig.update_yaxes(title="primary", autorange="reversed", type="category")
    return fig


def _cdf(histogram: list[list[float]]) -> tuple[list[float], list[float]]:
    """Cumulative share (%) of calls at or below each bucket's value, starting from 0 %."""
    total = sum(n for _, n in histogram) or 1
    xs, ys, seen = [histogram[0][0]], [0.0], 0
    for ms, n in histogram:
        seen += n
        xs.append(ms)
        ys.append(seen / total * 100)
    return xs, ys


def latency_figure(route: str, totals: list[dict[str, Any]]) -> Any:
    """Both sides' latency as cumulative distributions (log scale), with p50/p95/p99 marked."""
    go, _, _ = plotly()
    fig = go.Figure()
    for side, color in (("primary", PRIMARY), ("model", MODEL)):
        merged: dict[float, float] = {}
        for t in totals:
            for ms, n in t["latency_ms"][side].get("histogram", []):
                merged[ms] = merged.get(ms, 0) + n
        if not merged:
            continue
        x, y = _cdf(sorted([max(ms, 0.01), n] for ms, n in merged.items()))
        marks = _quantiles(x, y)
        legend = " · ".join(f"{q} {fmt.ms(v)} ms" for q, v in marks)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line={"color": color, "width": 2, "shape": "hv"},
                name=f"{side}: {legend}",
                hovertemplate="≤ %{x:.1f} ms: %{y:.1f}%<extra>" + side + "</extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[v for _, v in marks],
                y=[50, 95, 99],
                mode="markers+text",
                showlegend=False,
                marker={"color": color, "size": 7},
                text=["p50", "", "p99"],  # p95 sits too close to p99 for two labels
                textposition="middle right",
                textfont={"color": color, "size": 10},
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        **LAYOUT,
        height=320,
        legend={"orientation": "h", "y": -0.25},
        title={"text": f"{html.escape(route)}: latency, all stages (share of calls at or below)", "x": 0},
    )
    fig.update_xaxes(type="log", title="latency (ms, log scale)", dtick="D2")
    fig.update_yaxes(title="% of calls", ticksuffix="%", range=[0, 102])
    return fig


def _quantiles(x: list[float], y: list[float]) -> list[tuple[str, float]]:
    """Nearest-rank p50/p95/p99 read off a cumulative curve."""
    return [
        (name, next(v for v, c in zip(x, y, strict=True) if c >= q - 1e-9))
        for name, q in (("p50", 50), ("p95", 95), ("p99", 99))
    ]
