"""``shadow-proxy run --workers N``: N processes serving one port (SO_REUSEPORT), sharing state.

The kernel spreads connections over the workers. They share budgets, stage state and window
statistics through the store, so N > 1 needs a shared store: with ``memory://`` each worker would
hold its own budgets (N times the limit) and its own stage, and the command refuses. Each worker is
its own audit writer (its own files and hash chain). Metrics use prometheus-client's multiprocess
mode, so ``/metrics`` on any worker reports the counters and histograms of all of them (the live
gauges — in flight, audit backlog — are the answering worker's own).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from multiprocessing.process import BaseProcess
from types import FrameType

from proxy.loading import Loaded
from proxy.log import configure_logging, get_logger

log = get_logger("proxy.workers")


def shared_store_problem(loaded: Loaded, workers: int) -> str | None:
    if workers > 1 and loaded.config.store.url == "memory://":
        return (
            f"--workers {workers} needs a shared store: set store.url to redis://... "
            "(with memory:// each worker would keep its own budgets and stage)"
        )
    return None


def _worker(loaded: Loaded) -> None:
    from proxy.server import serve

    configure_logging(loaded.config.log.level, loaded.config.log.format)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(loaded, reuse_port=True))
    except OSError as exc:
        print(f"shadow-proxy: worker {os.getpid()} cannot start: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass


def run_workers(loaded: Loaded, workers: int) -> int:
    """Start the workers, forward SIGTERM/SIGINT to them, return when all have stopped."""
    metrics_dir = tempfile.mkdtemp(prefix="shadow-proxy-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited event loop
    procs: list[BaseProcess] = [
        context.Process(target=_worker, args=(loaded,), name=f"worker-{i}") for i in range(workers)
    ]
    for proc in procs:
        proc.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    try:
        for proc in procs:
            proc.join()
            if proc.exitcode not in (0, None):
                code = 1
                log.error("workers.exited", worker=proc.name, exitcode=proc.exitcode)
                forward(signal.SIGTERM, None)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code
