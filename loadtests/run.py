#!/usr/bin/env python3
"""Run one shadow-proxy load-test scenario end to end and print its latency budget.

    loadtests/run.sh SCENARIO      # or: .venv/bin/python loadtests/run.py SCENARIO
    loadtests/run.sh all           # every scenario in turn, then one summary table
    loadtests/run.sh list          # the scenarios and what each checks

For one scenario it: checks that its ports are free; starts ``shadow-proxy stubs`` with the fault flags
the scenario needs; starts ``shadow-proxy run -c loadtests/configs/<config>`` with the audit trail in a
temp dir; runs a short locust warm-up, scrapes the proxy's ``/metrics``, runs locust headless for
DURATION (one process, or a master and WORKERS workers), scrapes again; stops everything it started (by
PID) and verifies the audit trail; then prints the latency budget (proxy overhead = proxied - primary,
from the proxy's own histograms and from locust's figures) and the scenario's pass/fail checks.

Exit status: 0 all checks pass (N/A and WARN allowed), 1 a check failed, 2 bad usage or setup.
Knobs (environment): USERS SPAWN_RATE DURATION RATE WARMUP WORKERS PRIMARY_LATENCY MODEL_LATENCY SEED
PIN PROXY_CPUS LOADGEN_CPUS STUB_CPUS PROXY_PORT ADMIN_PORT LEGACY_PORT MODEL_PORT MASTER_PORT OUT_DIR;
any SHADOW_PROXY_* variable overrides the proxy's config as usual. See loadtests/README.md.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
LOCUSTFILES = HERE / "locustfiles"
BIN = Path(sys.executable).parent
ROUTE = "loan-decision"
DEFAULT_RATE = 300.0
NOISY_SHARE = 0.25  # other processes' CPU (share of one core) above which a run counts as noisy
PROXY_BIN = [str(BIN / "shadow-proxy")] if (BIN / "shadow-proxy").exists() else [sys.executable, "-m", "proxy"]
LOCUST_BIN = [str(BIN / "locust")] if (BIN / "locust").exists() else [sys.executable, "-m", "locust"]


class SetupError(Exception):
    """A problem before or around the run: one line for the user, exit 2."""


# --------------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    config: str
    locustfile: str
    stage: str
    stub_flags: tuple[str, ...] = ()
    model_latency: str | None = None  # overrides MODEL_LATENCY (the fault)
    rate: float | None = None  # default RATE for this scenario
    expect: str = ""  # what must hold, one line (README and `list`)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "direct",
            "baseline: no proxy, locust straight to the legacy stub",
            "-",
            "direct.py",
            "direct",
            expect="no client failure (the figures to subtract: proxied - direct = what the proxy costs a client)",
        ),
        Scenario(
            "shadow",
            "shadow stage, fast model",
            "shadow.yaml",
            "shadow.py",
            "shadow",
            expect="no client failure; every answer the primary's; every copy sent to the model and answered",
        ),
        Scenario(
            "assisted",
            "assisted stage, fast model",
            "assisted.yaml",
            "assisted.py",
            "assisted",
            expect="no client failure; suggestions shown in time for >= 95% of requests",
        ),
        Scenario(
            "autonomous",
            "autonomous stage, fast model",
            "autonomous.yaml",
            "autonomous.py",
            "autonomous",
            expect="no client failure; >= 90% of answers served by the model",
        ),
        Scenario(
            "slow-model",
            "shadow stage, model answers after 200 ms",
            "shadow.yaml",
            "slow_model.py",
            "shadow",
            model_latency="200ms",
            expect="client p99 < the model's latency: the client never waits (responses >= 200 ms: WARN)",
        ),
        Scenario(
            "slow-model-assisted",
            "assisted stage, model 200 ms > max_wait_ms 150",
            "assisted.yaml",
            "slow_model.py",
            "assisted",
            model_latency="200ms",
            rate=100,
            expect="client waits max_wait_ms and no more (p99 <= primary p99 + 150 ms + 50 ms); no suggestion shown",
        ),
        Scenario(
            "failing-model",
            "shadow stage, model answers 500 to 50%",
            "shadow.yaml",
            "failing_model.py",
            "shadow",
            stub_flags=("--model-error-rate", "0.5"),
            expect="no client failure, every answer the primary's; ~50% model errors counted",
        ),
        Scenario(
            "failing-model-autonomous",
            "autonomous stage, model answers 500 to 50%",
            "autonomous.yaml",
            "failing_model.py",
            "autonomous",
            stub_flags=("--model-error-rate", "0.5"),
            expect="no client failure; ~50% fallbacks (reason error) answered by the primary",
        ),
        Scenario(
            "over-budget",
            "shadow stage, budget.rate 50/s",
            "over-budget.yaml",
            "over_budget.py",
            "shadow",
            expect="no client failure; model calls <= 50/s x duration + burst, the rest skipped_rate",
        ),
        Scenario(
            "over-budget-autonomous",
            "autonomous stage, budget.rate 50/s",
            "over-budget-autonomous.yaml",
            "over_budget.py",
            "autonomous",
            expect="no client failure; model answers <= 50/s x duration + burst, the rest fallback budget",
        ),
    )
}


# --------------------------------------------------------------------------------------------------
# Settings from the environment


def _env_int(name: str, default: int, low: int = 0) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise SetupError(f"{name}={text!r} is not an integer") from None
    if value < low:
        raise SetupError(f"{name}={value} must be >= {low}")
    return value


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SetupError(f"{name}={text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise SetupError(f"{name}={text!r} must be a number >= 0")
    return value


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|h)?", text)
    if not match:
        raise SetupError(f"{name}={text!r} is not a duration (15, 15s, 2m, 1h)")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


@dataclass
class Settings:
    users: int
    spawn_rate: float
    duration: float
    rate: float | None  # None: scenario default
    warmup: float
    workers: int
    primary_latency: str
    model_latency: str
    seed: int
    pin: bool
    proxy_cpus: str
    loadgen_cpus: str
    stub_cpus: str
    proxy_port: int
    admin_port: int
    legacy_port: int
    model_port: int
    master_port: int
    out_dir: Path

    @classmethod
    def from_env(cls) -> Settings:
        users = _env_int("USERS", 32, 1)
        rate_text = os.environ.get("RATE", "").strip()
        pin_text = os.environ.get("PIN", "auto").strip().lower()
        cpus = os.cpu_count() or 1
        if pin_text in ("auto", ""):
            pin = cpus >= 2 and shutil.which("taskset") is not None
        elif pin_text in ("1", "yes", "true", "on"):
            if shutil.which("taskset") is None:
                raise SetupError("PIN=1 but taskset is not installed (apt-get install util-linux)")
            pin = True
        else:
            pin = False
        out = os.environ.get("OUT_DIR", "").strip()
        settings = cls(
            users=users,
            spawn_rate=_env_float("SPAWN_RATE", float(users)) or float(users),
            duration=_env_seconds("DURATION", 15.0),
            rate=None if not rate_text else _env_float("RATE", 0.0),
            warmup=_env_seconds("WARMUP", 3.0),
            workers=_env_int("WORKERS", 0),
            primary_latency=os.environ.get("PRIMARY_LATENCY", "5ms").strip() or "5ms",
            model_latency=os.environ.get("MODEL_LATENCY", "2ms").strip() or "2ms",
            seed=_env_int("SEED", 1),
            pin=pin,
            proxy_cpus=os.environ.get("PROXY_CPUS", "1" if cpus >= 2 else "0"),
            loadgen_cpus=os.environ.get("LOADGEN_CPUS", "0"),
            stub_cpus=os.environ.get("STUB_CPUS", "0"),
            proxy_port=_env_int("PROXY_PORT", 18180, 1),
            admin_port=_env_int("ADMIN_PORT", 18190, 1),
            legacy_port=_env_int("LEGACY_PORT", 18101, 1),
            model_port=_env_int("MODEL_PORT", 18102, 1),
            master_port=_env_int("MASTER_PORT", 18157, 1),
            out_dir=Path(out) if out else Path(),
        )
        if not out:  # only once every other knob is valid: a bad one leaves no empty folder behind
            settings.out_dir = Path(tempfile.mkdtemp(prefix="shadow-proxy-loadtest-"))
        return settings


def _latency_s(spec: str) -> float:
    """The typical delay of a stub latency spec, in seconds (fixed value, uniform low, lognormal median)."""
    from proxy.stubs import parse_latency

    try:
        return parse_latency(spec).a
    except ValueError as exc:
        raise SetupError(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# Processes: started here, stopped here, by PID only


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    rusage_cpu: float | None = None  # CPU seconds, when reaped by wait4

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 3) -> str:
        return _tail(self.log, lines)


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


CHILDREN: list[Child] = []


def start(name: str, cmd: list[str], log: Path, cpus: str | None, env: dict[str, str] | None = None) -> Child:
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]  # taskset execs the command: same PID
    with open(log, "wb") as fh:
        # Own session: a Ctrl-C at the terminal reaches only this runner, which stops children in order.
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    child = Child(name, proc, log)
    CHILDREN.append(child)
    return child


def stop(child: Child, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
    """Signal one child by its PID, wait, then SIGKILL it if it is still there. Returns its exit code."""
    if child.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)
        try:
            child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"  {child.name} (pid {child.pid}) did not stop in {timeout:.0f}s: killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            child.proc.wait(5)
    if child in CHILDREN:
        CHILDREN.remove(child)
    return child.proc.returncode


def stop_all() -> None:
    """Stop every child still running, newest first (locust, then the proxy, then the stubs)."""
    for child in reversed(list(CHILDREN)):
        stop(child, signal.SIGTERM, 30.0 if child.name == "proxy" else 10.0)


def wait_reaped(child: Child, timeout: float) -> int:
    """Wait for a child to exit, reaping it with wait4 to learn its CPU time. Raises SetupError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid == child.pid:
            child.proc.returncode = os.waitstatus_to_exitcode(status)
            child.rusage_cpu = usage.ru_utime + usage.ru_stime
            if child in CHILDREN:
                CHILDREN.remove(child)
            return child.proc.returncode
        if time.monotonic() > deadline:
            raise SetupError(f"{child.name} (pid {child.pid}) still running {timeout:.0f}s after it should have ended")
        time.sleep(0.1)


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_port(port: int, child: Child, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise SetupError(f"{child.name} exited ({child.proc.returncode}) before listening: {child.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise SetupError(f"{child.name} is not listening on 127.0.0.1:{port} after {timeout:.0f}s: {child.tail()}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a running process, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------------------------------
# Prometheus text: parse, diff, quantiles

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
Labels = tuple[tuple[str, str], ...]


def parse_metrics(text: str) -> dict[tuple[str, Labels], float]:
    out: dict[tuple[str, Labels], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, raw_labels, value = match.groups()
        labels = tuple(sorted(_LABEL.findall(raw_labels or "")))
        try:
            out[(name, labels)] = float(value)
        except ValueError:
            continue
    return out


@dataclass
class Snapshot:
    samples: dict[tuple[str, Labels], float]

    def minus(self, before: Snapshot) -> Snapshot:
        """Counters and histograms over the window (gauges keep their value after)."""
        return Snapshot({k: v - before.samples.get(k, 0.0) for k, v in self.samples.items()})

    def select(self, name: str, **labels: str) -> Iterable[tuple[dict[str, str], float]]:
        for (n, lab), value in self.samples.items():
            if n == name:
                d = dict(lab)
                if all(d.get(k) == v for k, v in labels.items()):
                    yield d, value

    def total(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.select(name, **labels))

    def by(self, name: str, key: str, **labels: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for d, v in self.select(name, **labels):
            out[d.get(key, "")] = out.get(d.get(key, ""), 0.0) + v
        return out

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.samples)

    def histogram(self, name: str, **labels: str) -> Hist:
        buckets: dict[float, float] = {}
        for d, v in self.select(name + "_bucket", **labels):
            le = math.inf if d["le"] == "+Inf" else float(d["le"])
            buckets[le] = buckets.get(le, 0.0) + v
        return Hist(sorted(buckets.items()), self.total(name + "_count", **labels), self.total(name + "_sum", **labels))


@dataclass
class Hist:
    """A Prometheus histogram (cumulative buckets, seconds) over the window."""

    buckets: list[tuple[float, float]]
    count: float
    sum: float

    def quantile(self, q: float) -> float | None:
        """histogram_quantile(): linear interpolation inside the bucket; ms."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cum in self.buckets:
            if cum >= rank:
                if math.isinf(le):
                    return lower * 1000.0  # Prometheus: the highest finite bound
                if cum == below:
                    return le * 1000.0
                return (lower + (le - lower) * (rank - below) / (cum - below)) * 1000.0
            lower, below = le, cum
        return lower * 1000.0

    def mean(self) -> float | None:
        return self.sum / self.count * 1000.0 if self.count > 0 else None

    def overflows(self, q: float) -> bool:
        """True when the q-quantile lies above the highest finite bucket."""
        finite = [cum for le, cum in self.buckets if not math.isinf(le)]
        return self.count > 0 and bool(finite) and finite[-1] < q * self.count


# --------------------------------------------------------------------------------------------------
# Locust figures (loadtests/locustfiles/_base.py writes them)


@dataclass
class Exact:
    """A locust-side latency histogram (µs keys -> counts), in ms."""

    counts: dict[int, int] = field(default_factory=dict)

    @classmethod
    def merged(cls, parts: Iterable[dict[str, int]]) -> Exact:
        out: dict[int, int] = {}
        for part in parts:
            for k, v in part.items():
                out[int(k)] = out.get(int(k), 0) + int(v)
        return cls(out)

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float | None:
        n = self.n
        if n == 0:
            return None
        rank = max(1, math.ceil(q * n))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return key / 1000.0
        return max(self.counts) / 1000.0

    def mean(self) -> float | None:
        n = self.n
        return sum(k * v for k, v in self.counts.items()) / n / 1000.0 if n else None

    def max(self) -> float | None:
        return max(self.counts) / 1000.0 if self.counts else None


QS = (0.5, 0.9, 0.99, 0.999)


def _fmt(ms: float | None, width: int = 8) -> str:
    if ms is None:
        return "-".rjust(width)
    return (f"{ms:.2f}" if abs(ms) < 100 else f"{ms:.0f}").rjust(width)


def _row(label: str, n: float | None, mean: float | None, qs: list[float | str | None], extra: str = "") -> str:
    count = "-" if n is None else f"{int(n)}"
    cells = "".join(q.rjust(8) if isinstance(q, str) else _fmt(q) for q in qs)
    return f"  {label:<50}{count:>7}{_fmt(mean)}" + cells + (f"  {extra}" if extra else "")


# --------------------------------------------------------------------------------------------------
# One run


@dataclass
class Check:
    status: str  # PASS FAIL WARN N/A INFO
    text: str


@dataclass
class Result:
    scenario: Scenario
    settings: Settings
    run_dir: Path
    rate: float
    model_latency: str
    duration: float = 0.0
    requests: int = 0
    failures: int = 0
    rps: float = 0.0
    failure_kinds: list[tuple[str, int]] = field(default_factory=list)
    csv_row: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    window: Snapshot = field(default_factory=lambda: Snapshot({}))
    after: Snapshot = field(default_factory=lambda: Snapshot({}))
    cpu: dict[str, float | None] = field(default_factory=dict)
    proxy_rss_mb: float | None = None
    proxy_alive_at_end: bool = True
    verify_ok: bool | None = None
    verify_line: str = ""
    checks: list[Check] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    previous: dict[str, Result] = field(default_factory=dict)  # earlier results of the same invocation
    loadavg_before: str = "?"
    version: str = "unknown"
    cpu_wall: float = 0.0  # wall time over which ``cpu`` was measured (locust start to exit)

    # --- locust side ---

    def exact(self, kind: str = "raw", side: str | None = None) -> Exact:
        hists = self.figures.get(kind, {})
        parts = [hists.get(side, {})] if side is not None else list(hists.values())
        return Exact.merged(p for p in parts if p)

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.figures.get("counts", {}).items()}

    def served(self, side: str) -> int:
        return self.counts().get(f"served_by:{side}", 0)

    # --- proxy side ---

    def hist(self, upstream: str | None) -> Hist:
        if upstream is None:
            return self.window.histogram("shadow_proxy_overhead_seconds", route=ROUTE)
        return self.window.histogram("shadow_proxy_upstream_latency_seconds", route=ROUTE, upstream=upstream)

    def model_calls(self) -> dict[str, float]:
        return self.window.by("shadow_proxy_model_calls_total", "result", route=ROUTE)

    def fallbacks(self) -> dict[str, float]:
        return self.window.by("shadow_proxy_fallbacks_total", "reason", route=ROUTE)

    def routed(self) -> float:
        return self.window.total("shadow_proxy_requests_total", route=ROUTE)


def _args(*pairs: object) -> list[str]:
    return [str(p) for p in pairs]


def _free_ports(st: Settings, proxied: bool) -> None:
    roles = {"legacy stub": (st.legacy_port, "LEGACY_PORT"), "model stub": (st.model_port, "MODEL_PORT")}
    if proxied:
        roles |= {"proxy": (st.proxy_port, "PROXY_PORT"), "admin": (st.admin_port, "ADMIN_PORT")}
    if st.workers:
        roles["locust master"] = (st.master_port, "MASTER_PORT")
    ports = [port for port, _ in roles.values()]
    if len(set(ports)) != len(ports):
        raise SetupError("two roles share a port: " + ", ".join(f"{r} {p}" for r, (p, _) in roles.items()))
    for role, (port, env_name) in roles.items():
        if not port_free(port):
            raise SetupError(
                f"port {port} ({role}) on 127.0.0.1 is already in use: stop what holds it or set {env_name}"
            )


def _start_stubs(sc: Scenario, st: Settings, run_dir: Path, model_latency: str) -> Child:
    cmd = [*PROXY_BIN, "stubs", *_args("--host", "127.0.0.1", "--legacy-port", st.legacy_port)]
    cmd += _args("--model-port", st.model_port, "--legacy-latency", st.primary_latency)
    cmd += _args("--model-latency", model_latency, "--seed", st.seed, *sc.stub_flags)
    stubs = start("stubs", cmd, run_dir / "stubs.log", st.stub_cpus if st.pin else None)
    wait_port(st.legacy_port, stubs)
    wait_port(st.model_port, stubs)
    return stubs


def _start_proxy(sc: Scenario, st: Settings, run_dir: Path) -> Child:
    env = dict(os.environ)
    env.update(
        SHADOW_PROXY_ADMIN_TOKEN=secrets.token_hex(16),
        SHADOW_PROXY_AUDIT__SINK=f"file://{run_dir / 'audit'}",
        SHADOW_PROXY_AUDIT__SPILL_DIR=str(run_dir / "audit-spill"),
        SHADOW_PROXY_LISTEN__PORT=str(st.proxy_port),
        SHADOW_PROXY_ADMIN__PORT=str(st.admin_port),
        SHADOW_PROXY_ROUTES__0__PRIMARY__URL=f"http://127.0.0.1:{st.legacy_port}",
        SHADOW_PROXY_ROUTES__0__MODEL__URL=f"http://127.0.0.1:{st.model_port}",
    )
    cmd = [*PROXY_BIN, "run", "-c", str(CONFIGS / sc.config)]
    proxy = start("proxy", cmd, run_dir / "proxy.log", st.proxy_cpus if st.pin else None, env)
    wait_port(st.proxy_port, proxy)
    wait_port(st.admin_port, proxy)
    status, _ = http_get(f"http://127.0.0.1:{st.admin_port}/readyz")
    if status != 200:
        raise SetupError(f"proxy not ready: GET /readyz answered {status}")
    return proxy


def _run_locust(
    sc: Scenario, st: Settings, run_dir: Path, host: str, seconds: float, env: dict[str, str], measured: bool
) -> float:
    """One headless locust run (a master and WORKERS workers when asked); returns the load generator's CPU s."""
    locustfile = str(LOCUSTFILES / sc.locustfile)
    cpus = st.loadgen_cpus if st.pin else None
    args = [*LOCUST_BIN, "-f", locustfile, "--headless", "--host", host, "--loglevel", "WARNING", "--only-summary"]
    args += _args("--exit-code-on-error", 0, "--stop-timeout", 5, "-u", st.users, "-r", st.spawn_rate)
    args += _args("-t", f"{seconds:g}s")
    tag = "locust" if measured else "locust-warmup"
    if measured:
        args += ["--csv", str(run_dir / "locust")]
        env = dict(env, LOADTEST_OUT=str(run_dir / "locust-figures.json"))
    if not (measured and st.workers):
        single = start(tag, args, run_dir / f"{tag}.log", cpus, env)
        code = wait_reaped(single, seconds + 120)
        if code not in (0, 1):
            raise SetupError(f"locust exited {code}: {single.tail()}")
        return single.rusage_cpu or 0.0
    args += _args("--master", "--expect-workers", st.workers, "--master-bind-host", "127.0.0.1")
    args += _args("--master-bind-port", st.master_port)
    master = start("locust-master", args, run_dir / "locust-master.log", cpus, env)
    wait_port(st.master_port, master)
    worker_args = [*LOCUST_BIN, "-f", locustfile, "--worker", "--loglevel", "WARNING"]
    worker_args += _args("--master-host", "127.0.0.1", "--master-port", st.master_port)
    workers = [
        start(f"locust-worker-{i}", worker_args, run_dir / f"locust-worker-{i}.log", cpus, env)
        for i in range(st.workers)
    ]
    code = wait_reaped(master, seconds + 120)
    if code not in (0, 1):
        raise SetupError(f"locust master exited {code}: {master.tail()}")
    cpu = master.rusage_cpu or 0.0
    for worker in workers:
        wait_reaped(worker, 30)
        cpu += worker.rusage_cpu or 0.0
    return cpu


def run_scenario(sc: Scenario, st: Settings, previous: dict[str, Result] | None = None) -> Result:
    run_dir = st.out_dir / sc.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "audit").mkdir(parents=True)
    rate = st.rate if st.rate is not None else (sc.rate if sc.rate is not None else DEFAULT_RATE)
    model_latency = sc.model_latency or st.model_latency
    res = Result(sc, st, run_dir, rate, model_latency, previous=dict(previous or {}))
    proxied = sc.stage != "direct"
    _free_ports(st, proxied)

    stubs = _start_stubs(sc, st, run_dir, model_latency)
    proxy = _start_proxy(sc, st, run_dir) if proxied else None
    admin = f"http://127.0.0.1:{st.admin_port}"
    host = f"http://127.0.0.1:{st.proxy_port if proxied else st.legacy_port}"
    lenv = dict(os.environ)
    lenv.update(
        LOADTEST_PACE=f"{rate / st.users if rate > 0 else 0.0:.6f}",
        LOADTEST_STAGE=sc.stage,
        LOADTEST_SEED=str(st.seed),
        LOADTEST_SLOW_MS=f"{_latency_s(model_latency) * 1000.0:.3f}" if sc.model_latency else "0",
    )
    if st.warmup > 0:
        _run_locust(sc, st, run_dir, host, st.warmup, lenv, measured=False)

    before = scrape(admin) if proxy else Snapshot({})
    cpu_before = {"proxy": cpu_seconds(proxy.pid) if proxy else None, "stubs": cpu_seconds(stubs.pid)}
    busy_before = machine_busy_seconds()
    res.loadavg_before = loadavg()
    res.version = proxy_version()
    t0 = time.monotonic()
    loadgen_cpu = _run_locust(sc, st, run_dir, host, st.duration, lenv, measured=True)
    res.duration = res.cpu_wall = time.monotonic() - t0
    busy = _delta(machine_busy_seconds(), busy_before)
    cpu = {"stubs": _delta(cpu_seconds(stubs.pid), cpu_before["stubs"]), "locust": loadgen_cpu}
    if proxy is not None:
        settle(admin)
        after = scrape(admin)
        cpu["proxy"] = _delta(cpu_seconds(proxy.pid), cpu_before["proxy"])
        res.proxy_rss_mb = rss_mb(proxy.pid)
        res.proxy_alive_at_end = proxy.alive()
        res.window = after.minus(before)
        res.after = after
        stop(proxy, signal.SIGTERM, 40.0)
    if busy is not None:
        cpu["others"] = max(0.0, busy - sum(v for v in cpu.values() if v is not None))
    res.cpu = cpu
    stop(stubs, signal.SIGTERM, 10.0)

    if proxied:
        verify = subprocess.run(
            [*PROXY_BIN, "audit", "verify", str(run_dir / "audit")], capture_output=True, text=True, timeout=120
        )
        res.verify_ok = verify.returncode == 0
        out_lines = (verify.stdout + verify.stderr).strip().splitlines()
        res.verify_line = out_lines[-1].strip() if out_lines else f"exit {verify.returncode}"

    read_locust(res)
    evaluate(res)
    report(res)
    return res


def machine_busy_seconds() -> float | None:
    """CPU time all processes used since boot (all cores), from /proc/stat: user+nice+system+irq+softirq+steal."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields]
    busy = sum(ticks[:3]) + sum(ticks[5:8])  # user nice system | idle iowait | irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def proxy_version() -> str:
    """The git commit the proxy runs from (this checkout, editable install), '+dirty' with local changes."""
    repo = HERE.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "proxy"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def scrape(admin: str) -> Snapshot:
    status, body = http_get(admin + "/metrics")
    if status != 200:
        raise SetupError(f"GET {admin}/metrics answered {status}")
    return Snapshot(parse_metrics(body.decode("utf-8", "replace")))


def settle(admin: str, timeout: float = 10.0) -> None:
    """Wait until in-flight model calls finish and the audit queue is empty (their counters are final)."""
    deadline = time.monotonic() + timeout
    time.sleep(0.3)
    while time.monotonic() < deadline:
        snap = scrape(admin)
        if snap.total("shadow_proxy_mirror_in_flight") == 0 and snap.total("shadow_proxy_audit_queue_records") == 0:
            time.sleep(0.3)  # one more flush interval for the last batch's counters
            return
        time.sleep(0.2)


def read_locust(res: Result) -> None:
    stats = res.run_dir / "locust_stats.csv"
    if not stats.exists():
        raise SetupError(f"locust wrote no statistics ({stats}); see {res.run_dir}/locust*.log")
    with open(stats, newline="") as fh:
        rows = list(csv.DictReader(fh))
    agg = next((r for r in rows if r.get("Name") == "Aggregated"), None)
    if agg is None:
        raise SetupError(f"no Aggregated row in {stats}")
    res.csv_row = agg
    res.requests = int(agg["Request Count"])
    res.failures = int(agg["Failure Count"])
    res.rps = float(agg["Requests/s"])
    figures = res.run_dir / "locust-figures.json"
    if figures.exists():
        # Our own figures see every answer (locust's CSV can miss the last ones before it is written).
        res.figures = json.loads(figures.read_text())
        counts = res.counts()
        res.requests = sum(v for k, v in counts.items() if k.startswith("served_by:"))
        res.failures = sum(v for k, v in counts.items() if k.startswith("failed:"))
        first, last = res.figures.get("first"), res.figures.get("last")
        if first is not None and last is not None and last > first:
            res.duration = last - first
            res.rps = res.requests / res.duration
    failures = res.run_dir / "locust_failures.csv"
    if failures.exists():
        with open(failures, newline="") as fh:
            kinds = [(f"{r['Name']}: {r['Error']}", int(r["Occurrences"])) for r in csv.DictReader(fh)]
        res.failure_kinds = sorted(kinds, key=lambda kv: -kv[1])


# --------------------------------------------------------------------------------------------------
# Checks


def evaluate(res: Result) -> None:
    sc, c = res.scenario, res.checks
    n = res.requests
    routed = res.routed()
    calls = res.model_calls()
    attempted = sum(calls.get(k, 0.0) for k in ("ok", "error", "timeout", "invalid"))
    fallbacks = res.fallbacks()
    client = res.exact()
    primary = res.hist("primary")
    model = res.hist("model")
    model_s = _latency_s(res.model_latency)

    def check(ok: bool, text: str) -> None:
        c.append(Check("PASS" if ok else "FAIL", text))

    others = res.cpu.get("others")
    noisy = others is not None and res.cpu_wall > 0 and others / res.cpu_wall > NOISY_SHARE

    def check_tail(ok: bool, text: str) -> None:
        """A check on tail latency: on a box busy with other work, a miss is a WARN, not a verdict."""
        if ok or not noisy:
            check(ok, text)
        else:
            c.append(Check("WARN", text + " - missed on a noisy run (other processes' CPU), not judged"))

    # Every scenario.
    check(n > 0 and res.failures == 0, f"no client failure ({res.failures} of {n})")
    if res.rate > 0:
        share = res.rps / res.rate if res.rate else 0.0
        c.append(
            Check(
                "PASS" if share >= 0.9 else "WARN",
                f"offered load kept: {res.rps:.0f} of {res.rate:.0f} req/s ({share:.0%})"
                + ("" if share >= 0.9 else " - latency figures include queueing; see the corrected row"),
            )
        )
    if noisy and others is not None:
        c.append(
            Check(
                "WARN",
                f"other processes used {others / res.cpu_wall:.0%} of a core during the run "
                f"(load average before: {res.loadavg_before}): latencies are noisier than this box allows",
            )
        )
    if sc.stage == "direct":
        return
    check(res.proxy_alive_at_end, "proxy still running at the end of the run")
    decisions = res.window.total("shadow_proxy_audit_records_total", type="decision")
    dropped = res.window.total("shadow_proxy_audit_dropped_records_total")
    check(
        routed > 0 and decisions >= routed and dropped == 0,
        f"audit: {decisions:.0f} decision records for {routed:.0f} routed requests, {dropped:.0f} dropped",
    )
    check(bool(res.verify_ok), f"audit verify: {res.verify_line}")
    stage_level = {"shadow": 0, "assisted": 1, "autonomous": 2}[sc.stage]
    end_stage = res.after.total("shadow_proxy_stage", route=ROUTE)
    check(end_stage == stage_level, f"route stayed in {sc.stage} stage (no policy configured)")

    if sc.stage in ("shadow", "assisted"):
        check(res.served("primary") == n and n > 0, f"every answer served by the primary ({res.served('primary')}/{n})")

    name = sc.name
    if name in ("shadow", "slow-model", "failing-model"):
        overload = calls.get("skipped_overload", 0.0)
        check(
            attempted >= 0.99 * routed and overload == 0,
            f"every copy sent to the model: {attempted:.0f} calls for {routed:.0f} requests, "
            f"{overload:.0f} overload skips",
        )
    if name == "shadow":
        check(
            calls.get("ok", 0.0) >= 0.99 * attempted > 0,
            f"model answered ok: {calls.get('ok', 0.0):.0f}/{attempted:.0f}",
        )
    baseline = res.previous.get("shadow")
    if name == "slow-model":
        slow = res.counts().get("slow", 0)
        p99 = client.quantile(0.99)
        check_tail(
            p99 is not None and p99 < model_s * 1000.0,
            f"client did not wait for the model: p99 {_fmt(p99, 0)} ms < {model_s * 1000:.0f} ms",
        )
        # A client that waited for the model would put (nearly) every answer above its latency; a handful
        # in the tail are a stall, most often a neighbour's (see the CPU line), so WARN, not FAIL.
        c.append(
            Check(
                "PASS" if slow == 0 else "WARN",
                f"{slow} of {n} responses took >= the model's {model_s * 1000:.0f} ms"
                + ("" if slow == 0 else " (tail stalls: compare with the shadow run and other processes' CPU)"),
            )
        )
        model_mean = model.mean()
        check(
            model_mean is not None and model_mean >= 0.9 * model_s * 1000.0,
            f"fault active: model mean latency {_fmt(model_mean, 0)} ms (stub latency {res.model_latency})",
        )
        if baseline is not None:
            b99, s99 = baseline.exact().quantile(0.99), p99
            if b99 is not None and s99 is not None:
                c.append(
                    Check(
                        "INFO",
                        f"client p99 {s99:.2f} ms vs {b99:.2f} ms in the shadow run just before "
                        f"({(s99 - b99) / b99:+.0%}; the model adds {model_s * 1000:.0f} ms)",
                    )
                )
    if name in ("failing-model", "failing-model-autonomous"):
        err = calls.get("error", 0.0) / attempted if attempted else 0.0
        check(
            0.4 <= err <= 0.6,
            f"fault active: {err:.0%} of model calls failed ({calls.get('error', 0.0):.0f}/{attempted:.0f})",
        )
    if name == "failing-model-autonomous":
        fb = fallbacks.get("error", 0.0)
        check(
            0.4 * routed <= fb <= 0.6 * routed,
            f"failed model calls fell back to the primary: {fb:.0f} fallbacks (error) for {routed:.0f} requests, "
            f"{res.served('primary')} answers [primary]",
        )
    if name in ("assisted", "slow-model-assisted"):
        counts = res.counts()
        shown = sum(v for k, v in counts.items() if k.startswith("suggestion:") and k != "suggestion:none")
        accepted = counts.get("suggestion:accepted", 0)
        total = shown + counts.get("suggestion:none", 0)
        share = shown / total if total else 0.0
        if name == "assisted":
            check(share >= 0.95, f"suggestion shown in time for {share:.1%} of requests ({shown}/{total})")
            if shown:
                c.append(
                    Check("INFO", f"legacy stub followed {accepted / shown:.0%} of the suggestions (accept rate 0.9)")
                )
        else:
            check(share <= 0.01, f"no suggestion shown (model slower than max_wait_ms): {shown}/{total}")
            p50, p99 = client.quantile(0.5), client.quantile(0.99)
            pp99 = primary.quantile(0.99) or 0.0
            bound = pp99 + 150.0 + 50.0
            check(p50 is not None and p50 >= 140.0, f"client waited for the suggestion: p50 {_fmt(p50, 0)} ms >= 140")
            check_tail(
                p99 is not None and p99 <= bound,
                f"client waited max_wait_ms and no more: p99 {_fmt(p99, 0)} ms "
                f"<= {bound:.0f} (primary p99 + 150 + 50 slack)",
            )
    if name == "autonomous":
        share = res.served("model") / n if n else 0.0
        check(share >= 0.9, f"served by the model: {share:.1%} ({res.served('model')}/{n})")
        fb = ", ".join(f"{k} {v:.0f}" for k, v in sorted(fallbacks.items()) if v) or "none"
        c.append(Check("INFO", f"fallbacks: {fb}"))
    if name in ("over-budget", "over-budget-autonomous"):
        allowed = 50.0 * res.duration + 50.0
        skipped = calls.get("skipped_rate", 0.0)
        budget_fb = fallbacks.get("budget", 0.0)
        enforced = skipped > 0 or budget_fb > 0
        made = attempted if name == "over-budget" else float(res.served("model"))
        what = "model calls made" if name == "over-budget" else "answers served by the model"
        if not enforced:
            c.append(
                Check(
                    "N/A",
                    f"budget not enforced by this proxy build: {what} {made:.0f} for {routed:.0f} "
                    f"requests, 0 skipped_rate / budget fallbacks (a 50/s budget allows ~{allowed:.0f})",
                )
            )
        else:
            check(
                made <= 1.1 * allowed,
                f"{what}: {made:.0f} <= 50/s x {res.duration:.0f} s + burst 50 (+10%) = {1.1 * allowed:.0f}",
            )
            extra = f"{skipped:.0f} skipped_rate" if name == "over-budget" else f"{budget_fb:.0f} fallbacks (budget)"
            check(made + skipped + budget_fb >= 0.99 * routed, f"the rest not sent: {extra}")


# --------------------------------------------------------------------------------------------------
# Report


def report(res: Result) -> None:
    sc, st = res.scenario, res.settings
    out = res.lines
    proxied = sc.stage != "direct"
    pace = f"paced {res.rate:.0f} req/s ({res.rate / st.users:.2f}/user)" if res.rate > 0 else "unpaced (closed loop)"
    gen = f"locust master + {st.workers} workers" if st.workers else "locust 1 process"
    if st.pin:
        cpus = f"{gen} on CPU {st.loadgen_cpus}, stubs on CPU {st.stub_cpus}"
        cpus = (f"proxy on CPU {st.proxy_cpus}, " if proxied else "") + cpus
    else:
        cpus = f"{gen}, no CPU pinning"
    out.append(f"== {sc.name}: {sc.about}")
    where = f"proxy {res.version}, config loadtests/configs/{sc.config} (stage {sc.stage})" if proxied else "no proxy"
    out.append(
        f"   {where}; stubs: primary {st.primary_latency}, model {res.model_latency}"
        + (f", {' '.join(sc.stub_flags)}" if sc.stub_flags else "")
    )
    out.append(f"   {res.duration:.1f} s measured (after {st.warmup:g} s warm-up), {st.users} users, {pace}; {cpus}")
    out.append(
        f"   load: {res.requests} requests, {res.rps:.0f} req/s, {res.failures} failures"
        + (f" ({res.failures / res.requests:.2%})" if res.requests else "")
    )
    for kind, count in res.failure_kinds[:5]:
        out.append(f"     failure x{count}: {kind}")

    out.append(f"  {'latency, ms':<50}{'n':>7}{'mean':>8}" + "".join(f"{f'p{q * 100:g}':>8}" for q in QS))
    sides = [s for s in ("primary", "model") if res.exact("raw", s).n]
    split = len(sides) > 1

    def exact_row(label: str, e: Exact) -> str:
        return _row(label, e.n, e.mean(), [e.quantile(q) for q in QS])

    def hist_row(label: str, h: Hist) -> str:
        # A quantile in the +Inf bucket is only known to be above the top bound: shown as ">100".
        qs: list[float | str | None] = [f">{_fmt(h.quantile(q), 0)}" if h.overflows(q) else h.quantile(q) for q in QS]
        return _row(label, h.count, h.mean(), qs)

    client = res.exact("raw")
    out.append(exact_row("client, locust (10 us resolution)", client))
    if res.rate > 0:
        out.append(exact_row("client, locust, corrected for CO (*)", res.exact("corrected")))
    if split:
        for side in sides:
            out.append(exact_row(f"  of which served by {side}", res.exact("raw", side)))
    row = res.csv_row
    csv_qs = [_csv_ms(row.get(k)) for k in ("50%", "90%", "99%", "99.9%")]
    csv_n = int(row.get("Request Count", "0") or 0)
    out.append(
        _row("client, locust's own stats (1 ms rounding)", csv_n, _csv_ms(row.get("Average Response Time")), csv_qs)
    )
    if proxied:
        primary, model, overhead = res.hist("primary"), res.hist("model"), res.hist(None)
        out.append(hist_row("primary, proxy histogram (bucket interpolated)", primary))
        out.append(hist_row("model, proxy histogram (bucket interpolated)", model))
        out.append(hist_row("PROXY OVERHEAD, overhead_seconds histogram", overhead))
        # Overhead from locust: client latency minus the latency of the upstream that served it.
        for side in sides if split else (sides[:1] or ["primary"]):
            c = res.exact("raw", side) if split else client
            up = primary if side == "primary" else model
            diff = [_sub(c.quantile(q), up.quantile(q)) for q in QS]
            out.append(_row(f"PROXY OVERHEAD, client - {side} (locust - proxy)", None, _sub(c.mean(), up.mean()), diff))
        direct = res.previous.get("direct")
        if direct is not None:
            d = direct.exact("raw")
            diff = [_sub(client.quantile(q), d.quantile(q)) for q in QS]
            out.append(_row("PROXY OVERHEAD, client - direct run (locust)", None, _sub(client.mean(), d.mean()), diff))
    notes = []
    if sc.stage == "assisted":
        notes.append("assisted: the overhead includes the wait for the model's suggestion (<= max_wait_ms)")
    if sc.stage == "autonomous":
        notes.append("autonomous: the primary histogram also holds the 10% background copies and the fallbacks")
    if res.rate > 0:
        notes.append("(*) from each request's scheduled send time: stalls are charged to the requests they delayed")
    for note in notes:
        out.append(f"   note: {note}")

    if proxied:
        calls = res.model_calls()
        out.append("   model calls: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(calls.items()) if v) or "none"))
        if sc.stage == "autonomous":
            fbs = res.fallbacks()
            out.append("   fallbacks: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(fbs.items()) if v) or "none"))
        dec = res.window.by("shadow_proxy_decisions_total", "agree", route=ROUTE)
        out.append("   decisions: " + (", ".join(f"agree={k} {v:.0f}" for k, v in sorted(dec.items()) if v) or "none"))
    cpu = res.cpu
    per_req = (cpu.get("proxy") or 0.0) / res.requests * 1000.0 if res.requests and cpu.get("proxy") else None
    parts = [
        f"{who} {cpu[who] / res.cpu_wall:.0%}"
        for who in ("proxy", "stubs", "locust", "others")
        if cpu.get(who) is not None and res.cpu_wall > 0
    ]
    out.append(
        f"   CPU (share of one core over {res.cpu_wall:.1f} s, locust start to exit): "
        + ", ".join(parts)
        + (f"; proxy {per_req:.2f} ms CPU per request" if per_req is not None else "")
        + (f"; proxy RSS {res.proxy_rss_mb:.0f} MB" if res.proxy_rss_mb is not None else "")
        + f"; load average before {res.loadavg_before}"
    )
    out.append("   checks:")
    for ch in res.checks:
        out.append(f"     {ch.status:<5} {ch.text}")
    out.append(f"   files: {res.run_dir} (report.txt, summary.json, *.log, locust_*.csv, audit/)")
    text = "\n".join(out)
    print(text, flush=True)
    (res.run_dir / "report.txt").write_text(text + "\n")
    (res.run_dir / "summary.json").write_text(json.dumps(summary(res), indent=2) + "\n")


def _csv_ms(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summary(res: Result) -> dict[str, Any]:
    client = res.exact()
    corrected = res.exact("corrected")
    overhead = res.hist(None)
    primary = res.hist("primary")
    return {
        "scenario": res.scenario.name,
        "config": f"loadtests/configs/{res.scenario.config}",
        "stage": res.scenario.stage,
        "proxy_version": res.version,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "users": res.settings.users,
        "target_rps": res.rate,
        "rps": round(res.rps, 1),
        "duration_s": round(res.duration, 1),
        "requests": res.requests,
        "failures": res.failures,
        "client_ms": {f"p{q * 100:g}": client.quantile(q) for q in QS} | {"mean": client.mean()},
        "client_corrected_ms": {f"p{q * 100:g}": corrected.quantile(q) for q in QS},
        "primary_ms": {f"p{q * 100:g}": primary.quantile(q) for q in QS} | {"mean": primary.mean()},
        "overhead_ms": {f"p{q * 100:g}": overhead.quantile(q) for q in QS} | {"mean": overhead.mean()},
        "model_calls": res.model_calls(),
        "fallbacks": res.fallbacks(),
        "cpu_s": res.cpu,
        "cpu_wall_s": round(res.cpu_wall, 2),
        "proxy_rss_mb": res.proxy_rss_mb,
        "checks": [{"status": c.status, "text": c.text} for c in res.checks],
    }


def summary_table(results: list[Result]) -> str:
    """One Markdown row per scenario (what RESULTS.md shows)."""
    rows = [
        "| scenario | req/s (target) | failures | client p50 / p99 ms | serving upstream p50 / p99 ms (proxy) | "
        "overhead_seconds p50 / p99 ms | client - upstream, mean ms | client - direct p50 / p99 ms | "
        "proxy CPU | other processes' CPU | checks |",
        "|" + "---|" * 11,
    ]
    direct = next((r for r in results if r.scenario.stage == "direct"), None)
    for r in results:
        client, overhead = r.exact(), r.hist(None)
        by_model = r.scenario.stage == "autonomous" and r.served("model") > r.served("primary")
        upstream = r.hist("model" if by_model else "primary")
        served = r.exact("raw", "model") if by_model else client
        fails = [c for c in r.checks if c.status == "FAIL"]
        other = sorted({c.status for c in r.checks if c.status in ("WARN", "N/A")})
        verdict = "FAIL: " + "; ".join(c.text for c in fails) if fails else "pass"
        verdict += f" ({', '.join(other)})" if other else ""
        cpu = r.cpu.get("proxy")
        other_cpu = r.cpu.get("others")
        others = f"{other_cpu / r.cpu_wall:.0%}" if other_cpu is not None and r.cpu_wall else "-"
        proxied = r.scenario.stage != "direct"
        cpu_text = f"{cpu / r.requests * 1000:.2f} ms/req" if cpu and r.requests else "-"
        vs_direct = "-"
        if direct is not None and proxied:
            d = direct.exact()
            vs_direct = (
                f"{_fmt(_sub(client.quantile(0.5), d.quantile(0.5)), 0)} / "
                f"{_fmt(_sub(client.quantile(0.99), d.quantile(0.99)), 0)}"
            )
        up = f"{_fmt(upstream.quantile(0.5), 0)} / {_fmt(upstream.quantile(0.99), 0)}" if proxied else "-"
        up += " (model)" if by_model else ""
        oh = f"{_fmt(overhead.quantile(0.5), 0)} / {_fmt(overhead.quantile(0.99), 0)}" if proxied else "-"
        mean = _fmt(_sub(served.mean(), upstream.mean()), 0) if proxied else "-"
        rows.append(
            f"| {r.scenario.name} | {r.rps:.0f} ({r.rate:.0f}) | {r.failures} | "
            f"{_fmt(client.quantile(0.5), 0)} / {_fmt(client.quantile(0.99), 0)} | {up} | {oh} | {mean} | "
            f"{vs_direct} | {cpu_text} | {others} | {verdict} |"
        )
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------------
# Main


def usage() -> str:
    lines = ["usage: loadtests/run.sh SCENARIO [SCENARIO...] | all | list", "", "scenarios:"]
    lines += [f"  {s.name:<26}{s.about}" for s in SCENARIOS.values()]
    lines += ["", "knobs: USERS=32 SPAWN_RATE=USERS DURATION=15 RATE=300 (0: unpaced) WARMUP=3 WORKERS=0 BASELINE=0"]
    lines += ["       PRIMARY_LATENCY=5ms MODEL_LATENCY=2ms PIN=auto PROXY_CPUS=1 LOADGEN_CPUS=0 STUB_CPUS=0 OUT_DIR"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv == ["list"]:
        for s in SCENARIOS.values():
            print(f"{s.name:<26}{s.about}\n{'':<26}expect: {s.expect}")
        return 0
    names = list(SCENARIOS) if argv == ["all"] else list(dict.fromkeys(argv))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"run.sh: unknown scenario {unknown[0]!r}; one of: {', '.join(SCENARIOS)}, all, list", file=sys.stderr)
        return 2
    baseline = os.environ.get("BASELINE", "0").strip().lower() in ("1", "yes", "true", "on")
    if baseline and "direct" not in names:
        names.insert(0, "direct")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    results: dict[str, Result] = {}
    st: Settings | None = None
    try:
        st = Settings.from_env()
        st.out_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            try:
                results[name] = run_scenario(SCENARIOS[name], st, results)
            finally:
                stop_all()
            print(flush=True)
    except SetupError as exc:
        stop_all()
        print(f"run.sh: {exc}", file=sys.stderr)
        if st is not None and not results:
            with contextlib.suppress(OSError):
                st.out_dir.rmdir()  # only when still empty
        return 2
    except KeyboardInterrupt:
        print("\nrun.sh: interrupted; stopped what it started", file=sys.stderr)
        stop_all()
        return 130
    finally:
        stop_all()
    if len(results) > 1:
        table = summary_table(list(results.values()))
        print(table)
        (st.out_dir / "summary.md").write_text(table + "\n")
        print(f"\nresults in {st.out_dir}")
    return 1 if any(c.status == "FAIL" for r in results.values() for c in r.checks) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
