"""``shadow-proxy demo``: the main job on embedded defaults, with nothing to set up.

Starts the legacy and model stubs and the proxy on free loopback ports (memory store, file audit
trail in a temporary or given folder), drives synthetic loan applications through the proxy with a
progress bar, and prints what an analyst would look at first.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from proxy.config import Config
from proxy.loading import loaded_from_config
from proxy.log import configure_logging
from proxy.server import Server
from proxy.stats import LatencyHistogram, wilson_interval
from proxy.stubs import StubSettings, start_stubs, synthetic_request
from proxy.verify import verify

DEFAULT_REQUESTS = 3000
CONCURRENCY = 16
SEGMENTS = ("eu", "us", "apac")


def demo_config(legacy_url: str, model_url: str, audit_dir: Path) -> dict[str, Any]:
    """The bundled demo config: the spec's loan-decision route on loopback ports."""
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "log": {"level": "warning", "format": "json", "access_sample": 0.0},
        "store": {"url": "memory://"},
        "audit": {"sink": f"file://{audit_dir}", "redact": ["body.applicant.ssn", "headers.authorization"]},
        "routes": [
            {
                "name": "loan-decision",
                "match": {"path_prefix": "/v1/decide", "methods": ["POST"]},
                "primary": {"url": legacy_url, "timeout": "2s"},
                "model": {"url": model_url, "timeout": "300ms", "version": "credit-v7"},
                "decision": {
                    "primary": "decision",
                    "model": "decision",
                    "confidence": "confidence",
                    "explanation": "reasons",
                    "usage": "usage.total_tokens",
                },
                "segment": "body.region",
                "budget": {
                    "rate": "2000/s",
                    "cost": {"per_request": 0.0004, "per_1k_units": 0.002, "limit": 50.0, "window": "1d"},
                },
            }
        ],
    }


@dataclass
class Traffic:
    """What the demo's client saw."""

    sent: int = 0
    errors: int = 0
    served_by: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


async def drive(url: str, *, total: int | None, seconds: float | None, seed: int, progress: Progress) -> Traffic:
    """Send synthetic applications with CONCURRENCY clients until ``total`` or ``seconds`` is reached."""
    rng = random.Random(seed)
    traffic = Traffic()
    task = progress.add_task("shadow", total=total)
    deadline = time.monotonic() + seconds if seconds else None

    def more() -> bool:
        if deadline is not None:
            return time.monotonic() < deadline
        return traffic.sent < (total or DEFAULT_REQUESTS)

    async def client(session: aiohttp.ClientSession) -> None:
        while more():
            traffic.sent += 1
            body = orjson.dumps(synthetic_request(rng, SEGMENTS))
            started = time.perf_counter()
            try:
                async with session.post(url + "/v1/decide", data=body) as r:
                    await r.read()
                    by = r.headers.get("X-Served-By", "?")
                    traffic.served_by[by] = traffic.served_by.get(by, 0) + 1
                    traffic.errors += r.status >= 500
            except aiohttp.ClientError:
                traffic.errors += 1
            traffic.latency.record((time.perf_counter() - started) * 1000.0)
            progress.update(task, advance=1)

    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
    return traffic


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    decisions = [r for r in records if r["type"] == "decision"]
    paired = [r for r in decisions if r["agree"] is not None]
    agreed = sum(1 for r in paired if r["agree"])
    skips: dict[str, int] = {}
    errors: dict[str, int] = {}
    latency = {"primary": LatencyHistogram(), "model": LatencyHistogram()}
    for r in decisions:
        model = r["model"]
        if model["skipped"]:
            skips[model["skipped"]] = skips.get(model["skipped"], 0) + 1
        elif model["error"]:
            errors[model["error"]] = errors.get(model["error"], 0) + 1
        for side in ("primary", "model"):
            if r[side]["latency_ms"] is not None:
                latency[side].record(r[side]["latency_ms"])
    low, high = wilson_interval(agreed, len(paired))
    return {
        "decisions": len(decisions),
        "samples": len(paired),
        "agreement": agreed / len(paired) if paired else None,
        "interval": (low, high),
        "skips": skips,
        "errors": errors,
        "latency": latency,
        "cost": sum(r["model"]["cost"] for r in decisions),
    }


def print_summary(console: Console, traffic: Traffic, summary: dict[str, Any], audit_dir: Path, ok: bool) -> None:
    def pct(h: LatencyHistogram) -> str:
        values = [h.quantile(q) for q in (0.5, 0.95, 0.99)]
        return " / ".join("-" if v is None else f"{v:.1f}" for v in values) + " ms"

    console.print()
    console.print("[bold]shadow-proxy demo — summary[/bold]")
    console.print(f"  requests sent         {traffic.sent}  (client errors: {traffic.errors})")
    console.print(f"  served by             {', '.join(f'{k}: {v}' for k, v in sorted(traffic.served_by.items()))}")
    console.print(f"  decision records      {summary['decisions']}  (paired samples: {summary['samples']})")
    if summary["agreement"] is not None:
        low, high = summary["interval"]
        console.print(
            f"  agreement             {summary['agreement']:.1%}  (95% Wilson interval {low:.1%} to {high:.1%})"
        )
    console.print(f"  model errors          {summary['errors'] or 'none'}")
    console.print(f"  model skips           {summary['skips'] or 'none'}")
    console.print(f"  model cost            {summary['cost']:.4f}")
    console.print(f"  client latency        p50 / p95 / p99  {pct(traffic.latency)}")
    console.print(f"  primary latency       p50 / p95 / p99  {pct(summary['latency']['primary'])}")
    console.print(f"  model latency         p50 / p95 / p99  {pct(summary['latency']['model'])}")
    console.print(f"  audit trail           {audit_dir}  ({'verified' if ok else 'VERIFY FAILED'})")
    console.print(f"  next                  shadow-proxy report {audit_dir} --by segment")


async def _demo(args: argparse.Namespace, audit_dir: Path, console: Console) -> int:
    legacy = StubSettings(latency="lognormal:4ms:0.4", seed=args.seed)
    model = StubSettings(latency="lognormal:12ms:0.5", disagree_rate=0.03, segment_disagree={"apac": 0.08},
                         seed=args.seed + 1)  # fmt: skip
    stubs = await start_stubs(legacy, model)
    server = Server(
        loaded_from_config(Config.model_validate(demo_config(stubs.legacy_url, stubs.model_url, audit_dir)))
    )
    try:
        bound = await server.start()
        console.print(
            f"legacy stub {stubs.legacy_url} · model stub {stubs.model_url} · "
            f"proxy http://127.0.0.1:{bound.proxy_port} · admin http://127.0.0.1:{bound.admin_port}"
        )
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            total = None if args.seconds else (args.requests or DEFAULT_REQUESTS)
            traffic = await drive(
                f"http://127.0.0.1:{bound.proxy_port}",
                total=total,
                seconds=args.seconds,
                seed=args.seed,
                progress=progress,
            )
    finally:
        await server.stop()
        await stubs.close()
    from proxy.verify import audit_files, read_lines

    records = [orjson.loads(line) for path in audit_files([audit_dir]) for _, line in read_lines(path)]
    result = verify([audit_dir])
    print_summary(console, traffic, summarise(records), audit_dir, result.ok)
    return 0 if result.ok and traffic.errors == 0 else 1


def run_demo(args: argparse.Namespace) -> int:
    configure_logging("warning", "json")
    console = Console()
    # The trail is kept (not a self-deleting temp dir): the summary points the user at `report`.
    audit_dir = Path(args.audit_dir or tempfile.mkdtemp(prefix="shadow-proxy-demo-")).resolve() / "audit"
    return asyncio.run(_demo(args, audit_dir, console))
