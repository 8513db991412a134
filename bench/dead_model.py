#!/usr/bin/env python3
"""Dead or hung model at full load: client errors, RSS per worker, every dropped copy counted.

    bench/.venv-less: run with the yardstick harness's Python (it has wrk helpers and the nginx stubs):
    ../shared/bench/.venv/bin/python bench/dead_model.py [--seconds 60] [--mode refused|hung] [--workers 1]

The primary is the harness's nginx legacy stub; the model is either a port nobody listens on
(``refused``: every copy fails at once) or a socket that accepts and never answers (``hung``: every
copy holds its in-flight slot until the model timeout). shadow-proxy runs as users run it (bench/peer.sh:
audit, decisions, budgets, access log on). Samples the proxy's RSS every second, then compares the
model-call counters with the requests wrk completed: requests = ok + errors + timeouts + skips.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("SHARED_BENCH", os.path.join(HERE, "..", "..", "shared", "bench"))
sys.path.insert(0, SHARED)
import bench as harness  # noqa: E402 - the yardstick harness (nginx stubs, wrk)

PORT, ADMIN = 18080, 19901


def hung_model() -> tuple[socket.socket, int]:
    """A listener that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


def rss_mb(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                out.append(int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024)
        except (OSError, AttributeError):
            out.append(0.0)
    return out


def worker_pids(root: int) -> list[int]:
    """The serving processes: the peer itself, or its worker children with --workers."""
    try:
        with open(f"/proc/{root}/task/{root}/children") as f:
            children = [int(x) for x in f.read().split()]
    except OSError:
        children = []
    # multiprocessing also starts a resource tracker; keep the processes that run the proxy
    workers = []
    for pid in children:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"resource_tracker" not in f.read():
                    workers.append(pid)
        except OSError:
            pass
    return workers or [root]


def metric_totals(text: str, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            m = re.search(label + r'="([^"]*)"', line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--mode", choices=["refused", "hung"], default="refused")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--conns", type=int, default=32)
    a = p.parse_args()
    os.makedirs(harness.RUN, exist_ok=True)
    harness.start_stubs()
    listener = None
    if a.mode == "hung":
        listener, model_port = hung_model()
    else:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        model_port = probe.getsockname()[1]
        probe.close()
    env = dict(os.environ, BENCH_RUN_DIR=f"/tmp/dead-model-{a.mode}", ADMIN_PORT=str(ADMIN))
    if a.workers > 1:
        env.update(WORKERS=str(a.workers), STORE=os.environ.get("STORE", "redis://127.0.0.1:6379/0"))
    subprocess.run(["rm", "-rf", env["BENCH_RUN_DIR"]], check=False)
    cmd = f"{HERE}/peer.sh {PORT} http://127.0.0.1:{harness.P_LEGACY} http://127.0.0.1:{model_port}"
    cpus = os.environ.get("PEER_CPUS", "1")
    peer = subprocess.Popen(["taskset", "-c", cpus, "sh", "-c", "exec " + cmd], env=env, start_new_session=True)
    samples: list[tuple[float, list[float]]] = []
    try:
        harness.wait_ready(f"http://127.0.0.1:{PORT}/score", "shadow-proxy", timeout=30)
        time.sleep(1.0)
        pids = worker_pids(peer.pid)
        baseline = rss_mb(pids)
        stop = threading.Event()

        def sample() -> None:
            start = time.time()
            while not stop.is_set():
                samples.append((round(time.time() - start, 1), rss_mb(pids)))
                time.sleep(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = harness.wrk(PORT, a.conns, a.seconds)
        stop.set()
        time.sleep(12.0)  # past the model timeout: every held copy has ended
        after = rss_mb(pids)
        with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        os.killpg(peer.pid, signal.SIGTERM)
        peer.wait(60)
        harness.stop_all()
        if listener is not None:
            listener.close()
    calls = metric_totals(text, "shadow_proxy_model_calls_total", "result")
    requests = metric_totals(text, "shadow_proxy_requests_total", "code")
    peak = [max(s[1][i] for s in samples) for i in range(len(baseline))] if samples else baseline
    summary = {
        "mode": a.mode, "workers": a.workers, "seconds": a.seconds, "conns": a.conns,
        "rps": round(result["rps"]), "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
        "client_errors": result["errors"], "wrk_requests": result["requests"],
        "proxy_requests_by_code": requests, "model_calls_by_result": calls,
        "accounted": sum(calls.values()),
        "rss_mb_baseline": baseline, "rss_mb_peak": peak, "rss_mb_after": after,
    }  # fmt: skip
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
