"""``shadow-proxy demo``: the main job on embedded defaults, with nothing to set up.

Starts the legacy and model stubs (a child process, so they do not share the proxy's core) and the
proxy on free loopback ports — memory store, file audit trail in a new folder, the bundled
``fast-demo`` policy — then drives synthetic loan applications through it and narrates the ladder:
shadow → assisted → autonomous on evidence, then the model drifts and the policy rolls it back.
Ends with the analyst's report of the run. Under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from proxy.app import ShadowProxy
from proxy.config import Config
from proxy.loading import loaded_from_config
from proxy.log import configure_logging
from proxy.server import Server
from proxy.stages import Stage
from proxy.stubs import synthetic_request
from proxy.tasks import TaskOwner
from proxy.verify import verify

CONCURRENCY = 16
SEGMENTS = ("eu", "us", "apac")
LADDER_TIMEOUT_S = 45.0
DRIFT_RATE = 0.35


def demo_config(legacy_url: str, model_url: str, audit_dir: Path) -> dict[str, Any]:
    """The bundled demo config: the spec's loan-decision route on loopback ports, fast-demo policy."""
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
                "assisted": {"max_wait_ms": 150},
                "autonomous": {"min_confidence": 0.8, "primary_sample": 0.25},
                # Sized for the demo's ~1000 requests a second: enough that pacing leaves the sample
                # rate alone and the gates' spend projection passes; a tighter one shows pacing.
                "budget": {
                    "rate": "5000/s",
                    "cost": {"per_request": 0.0004, "per_1k_units": 0.002, "limit": 20000.0, "window": "1h"},
                },
                "policy": "fast-demo",
            }
        ],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_stub_process(seed: int) -> tuple[asyncio.subprocess.Process, str, str]:
    """``shadow-proxy stubs`` in a child process; returns it and the legacy and model URLs."""
    legacy_port, model_port = _free_port(), _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "stubs", "--legacy-port", str(legacy_port), "--model-port", str(model_port),
        "--legacy-latency", "lognormal:4ms:0.4", "--model-latency", "lognormal:12ms:0.5",
        "--disagree-rate", "0.03", "--segment-disagree", "apac=0.06", "--accept-rate", "0.15", "--seed", str(seed),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    legacy, model = f"http://127.0.0.1:{legacy_port}", f"http://127.0.0.1:{model_port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(legacy + "/_stub/stats") as a, session.get(model + "/_stub/stats") as b:
                    if a.status == b.status == 200:
                        return proc, legacy, model
            if proc.returncode is not None:
                raise RuntimeError(f"the stubs did not start: {(await proc.stderr.read()).decode().strip()}")
            await asyncio.sleep(0.05)
    proc.kill()
    raise RuntimeError("the stubs did not start within 10 s")


class Driver:
    """Synthetic clients sending loan applications until stopped."""

    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.rng = random.Random(seed)
        self.sent = 0
        self.errors = 0
        self.served_by: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def run(self) -> None:
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(headers=headers) as session:
            await asyncio.gather(*(self._client(session) for _ in range(CONCURRENCY)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            body = orjson.dumps(synthetic_request(self.rng, SEGMENTS))
            self.sent += 1
            try:
                async with session.post(self.url + "/v1/decide", data=body) as r:
                    await r.read()
                    by = r.headers.get("X-Served-By", "?")
                    self.served_by[by] = self.served_by.get(by, 0) + 1
                    self.errors += r.status >= 500
            except aiohttp.ClientError:
                self.errors += 1


def describe(record: dict[str, Any]) -> str:
    """One line per transition: what moved, why, and the figures that justified it."""
    e = record.get("evidence") or {}
    figures = ""
    if "samples" in e:
        agreement = e.get("agreement")
        figures = (
            f"  [dim]samples {e['samples']}, agreement {agreement:.1%} "
            f"(lower bound {e['agreement_lower']:.1%}), error rate {e.get('error_rate') or 0:.1%}, "
            f"p99 {e.get('p99_ms') or 0:.0f} ms[/dim]"
            if agreement is not None
            else f"  [dim]samples {e['samples']}[/dim]"
        )
    arrow = f"{record['from']} → {record['to']}" if record["from"] != record["to"] else record["to"]
    colour = "red" if record["event"] == "rollback" else "green"
    return f"[bold {colour}]{record['event']:>8}[/bold {colour}] {arrow}: {record['reason']}\n{figures}"


async def _wait_stage(route: Any, stage: Stage, deadline: float) -> bool:
    while route.stage is not stage:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _script(args: argparse.Namespace, route: Any, model_url: str, console: Console) -> None:
    """The ladder, the drift and the rollback; every wait bounded by --seconds."""
    deadline = time.monotonic() + (args.seconds or LADDER_TIMEOUT_S + 20)
    if not await _wait_stage(route, Stage.AUTONOMOUS, min(deadline, time.monotonic() + LADDER_TIMEOUT_S)):
        console.print(f"[yellow]the ladder stopped at {route.stage.value} (see the report below)[/yellow]")
        return
    await asyncio.sleep(min(4.0, max(0.0, deadline - time.monotonic())))
    console.print(f"[bold yellow]   drift[/bold yellow] the model now disagrees on {DRIFT_RATE:.0%} of requests")
    async with (
        aiohttp.ClientSession() as s,
        s.post(model_url + "/_stub/config", json={"disagree_rate": DRIFT_RATE}) as r,
    ):
        r.raise_for_status()
    await _wait_stage(route, Stage.SHADOW, deadline)
    await asyncio.sleep(min(1.5, max(0.0, deadline - time.monotonic())))


async def _demo(args: argparse.Namespace, audit_dir: Path, console: Console) -> int:
    stubs, legacy_url, model_url = await start_stub_process(args.seed)
    loaded = loaded_from_config(Config.model_validate(demo_config(legacy_url, model_url, audit_dir)))
    token = secrets.token_urlsafe(16)
    server = Server(loaded, proxy=ShadowProxy(loaded, environ={"SHADOW_PROXY_ADMIN_TOKEN": token}))
    owner = TaskOwner("demo")
    driver: Driver | None = None
    try:
        bound = await server.start()
        route = server.proxy.routes.by_name["loan-decision"]
        admin = f"http://127.0.0.1:{bound.admin_port}"
        console.print(
            f"[bold]shadow-proxy demo[/bold]: legacy {legacy_url} · model {model_url} · "
            f"proxy http://127.0.0.1:{bound.proxy_port} · admin {admin}"
        )
        console.print(
            f"[dim]while it runs: SHADOW_PROXY_ADMIN_TOKEN={token} shadow-proxy stage show --admin {admin}[/dim]"
        )
        console.print("policy fast-demo: promote on 300+ samples with a 95% lower bound ≥ 90%; roll back under 85%\n")
        server.proxy.controller.listeners.append(lambda record: console.print(describe(record)))
        driver = Driver(f"http://127.0.0.1:{bound.proxy_port}", args.seed)
        owner.spawn(driver.run(), name="demo-traffic")
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("", total=None)
            script = owner.spawn(_script(args, route, model_url, console), name="demo-script")
            while not script.done():
                stage = route.stage.value
                progress.update(task, description=f"{stage:<10} {driver.sent:>7} requests")
                await asyncio.wait({script}, timeout=0.2)
        driver.stop.set()
        await owner.wait(10.0)
    finally:
        if driver is not None:
            driver.stop.set()
        await owner.drain(5.0)
        await server.stop()
        stubs.terminate()
        await stubs.wait()
    return _finish(console, driver, audit_dir)


def _finish(console: Console, driver: Driver | None, audit_dir: Path) -> int:
    from proxy.report import build_report
    from proxy.report.render_table import render

    result = verify([audit_dir])
    console.print()
    if driver is not None:
        served = ", ".join(f"{k}: {v}" for k, v in sorted(driver.served_by.items()))
        console.print(f"[bold]{driver.sent} requests[/bold] ({served}); client errors: {driver.errors}")
    render(build_report([audit_dir]), sys.stdout, color=console.is_terminal, width=max(console.width, 120))
    console.print(f"audit trail: {audit_dir} ({'hash chain verified' if result.ok else 'VERIFY FAILED'})")
    console.print(f"next: shadow-proxy report {audit_dir} --by segment --format html -o report.html")
    return 0 if result.ok and driver is not None and driver.errors == 0 else 1


def run_demo(args: argparse.Namespace) -> int:
    configure_logging("warning", "json")
    console = Console()
    # The trail is kept (not a self-deleting temp dir): the summary points the user at `report`.
    audit_dir = Path(args.audit_dir or tempfile.mkdtemp(prefix="shadow-proxy-demo-")).resolve() / "audit"
    try:
        return asyncio.run(_demo(args, audit_dir, console))
    except RuntimeError as exc:
        print(f"shadow-proxy: demo: {exc}", file=sys.stderr)
        return 1
