"""Shared locust user for the shadow-proxy load tests (imported by the scenario locust files).

What every scenario user does: POST a realistic loan application (``proxy.stubs.synthetic_request``)
to ``/v1/decide`` through the proxy, check the answer (status 200, a JSON body with a decision, the
``X-Served-By`` the stage allows, the ``X-Stub`` of the upstream that says it answered) and name the
request in locust's statistics by who served it: ``POST /v1/decide [primary]`` / ``[model]``.

Pacing (open-loop-ish, wrk2 style): with ``LOADTEST_PACE`` = requests per second *per user* (the runner
sets it to RATE / USERS), each user sends on a fixed schedule and the latency is also recorded from the
*intended* send time ("corrected", i.e. corrected for coordinated omission: a stall that delays the next
sends is charged to the requests it delayed). ``LOADTEST_PACE=0`` (default when run by hand): no wait,
a closed loop at the proxy's capacity, and corrected == raw.

Extra figures locust does not keep (written as JSON to ``LOADTEST_OUT`` when locust quits; the master
merges its workers' figures, so distributed runs work too):

* ``raw`` / ``corrected``: latency histograms at 10 µs resolution below 10 ms (locust's own percentiles
  round to whole milliseconds, too coarse for a proxy's overhead), keyed by served_by;
* counts by ``X-Served-By``, by ``X-Stub-Suggestion`` (assisted: was a suggestion shown, was it
  followed), of responses slower than ``LOADTEST_SLOW_MS`` (slow-model: did any client wait for the
  model?), and of failed checks by reason.

Environment: ``LOADTEST_PACE`` (req/s per user, default 0), ``LOADTEST_OUT`` (JSON path; unset: not
written), ``LOADTEST_SEED`` (request bodies, default 7), ``LOADTEST_PATH`` (default /v1/decide),
``LOADTEST_SLOW_MS`` (default 0: not counted), ``LOADTEST_STAGE`` (for the fault files that run in
more than one stage: shadow | assisted | autonomous).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from typing import Any, ClassVar

import gevent
import orjson
from locust import FastHttpUser, constant, events, task
from locust.runners import MasterRunner, WorkerRunner

from proxy.stubs import DECISIONS, synthetic_request

PATH = os.environ.get("LOADTEST_PATH", "/v1/decide")
PACE = float(os.environ.get("LOADTEST_PACE", "0") or 0)
SLOW_MS = float(os.environ.get("LOADTEST_SLOW_MS", "0") or 0)
STAGE = os.environ.get("LOADTEST_STAGE", "shadow")
_BODY_POOL = 4096

_rng = random.Random(int(os.environ.get("LOADTEST_SEED", "7")))
BODIES: list[bytes] = [orjson.dumps(synthetic_request(_rng)) for _ in range(_BODY_POOL)]
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_DECISIONS = frozenset(DECISIONS)
# Which upstream answers the client in each stage, and the X-Stub it must carry ("direct": no proxy, the
# legacy stub itself, so no X-Served-By: the baseline run).
SERVED_BY = {"shadow": {"primary"}, "assisted": {"primary"}, "autonomous": {"primary", "model"}, "direct": {"none"}}
_STUB_OF = {"primary": "legacy", "model": "model", "none": "legacy"}


# --- a compact latency histogram (µs keys), mergeable across workers ---------------------------------


def _key_us(ms: float) -> int:
    """Bucket key in µs: 10 µs steps below 10 ms, 100 µs below 100 ms, 1 ms above."""
    us = ms * 1000.0
    step = 10 if us < 10_000 else 100 if us < 100_000 else 1000
    return int(round(us / step) * step)


class Figures:
    """What this process measured since the last report (workers) or since start (standalone)."""

    def __init__(self) -> None:
        self.raw: dict[str, Counter[int]] = {}
        self.corrected: dict[str, Counter[int]] = {}
        self.counts: Counter[str] = Counter()
        self.first: float | None = None  # wall clock of the first request sent, of the last answer
        self.last: float | None = None

    def observe(self, served_by: str, raw_ms: float, corrected_ms: float) -> None:
        now = time.time()
        if self.first is None:
            self.first = now - raw_ms / 1000.0
        self.last = now
        self.raw.setdefault(served_by, Counter())[_key_us(raw_ms)] += 1
        self.corrected.setdefault(served_by, Counter())[_key_us(corrected_ms)] += 1

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def empty(self) -> bool:
        return not self.counts and not self.raw

    def to_dict(self) -> dict[str, Any]:
        def hist(h: dict[str, Counter[int]]) -> dict[str, dict[str, int]]:
            return {side: {str(k): v for k, v in c.items()} for side, c in h.items()}

        return {
            "raw": hist(self.raw),
            "corrected": hist(self.corrected),
            "counts": dict(self.counts),
            "first": self.first,
            "last": self.last,
        }

    def merge(self, data: dict[str, Any]) -> None:
        for attr in ("raw", "corrected"):
            mine = getattr(self, attr)
            for side, buckets in data.get(attr, {}).items():
                target = mine.setdefault(side, Counter())
                for k, v in buckets.items():
                    target[int(k)] += int(v)
        self.counts.update({k: int(v) for k, v in data.get("counts", {}).items()})
        if data.get("first") is not None:
            self.first = data["first"] if self.first is None else min(self.first, data["first"])
        if data.get("last") is not None:
            self.last = data["last"] if self.last is None else max(self.last, data["last"])


FIGURES = Figures()


@events.report_to_master.add_listener
def _send_figures(client_id: str, data: dict[str, Any]) -> None:
    global FIGURES
    data["loadtest_figures"] = FIGURES.to_dict()
    FIGURES = Figures()


@events.worker_report.add_listener
def _receive_figures(client_id: str, data: dict[str, Any]) -> None:
    if "loadtest_figures" in data:
        FIGURES.merge(data["loadtest_figures"])


@events.quitting.add_listener
def _write_figures(environment: Any, **_kwargs: Any) -> None:
    out = os.environ.get("LOADTEST_OUT")
    if not out or isinstance(environment.runner, WorkerRunner):
        return
    payload = FIGURES.to_dict()
    payload["process"] = "master" if isinstance(environment.runner, MasterRunner) else "standalone"
    payload["pace_per_user"] = PACE
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(payload, fh)


# --- the user -------------------------------------------------------------------------------------


class DecisionUser(FastHttpUser):
    """POSTs decisions through the proxy; subclasses say which stage they expect (``stage``)."""

    abstract = True
    wait_time = constant(0)  # pacing, when asked for, is done in the task (see the module docstring)
    stage: ClassVar[str] = "shadow"
    # FastHttpUser defaults: keep-alive, one connection per user; a short network timeout makes a hung
    # proxy visible as failures instead of a silent stall.
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        self._interval = 1.0 / PACE if PACE > 0 else 0.0
        # Stagger the users over one interval so paced users do not fire in lockstep.
        self._next = time.perf_counter() + random.uniform(0.0, self._interval)
        self._i = random.randrange(_BODY_POOL)
        self._allowed = SERVED_BY[self.stage]

    @task
    def decide(self) -> None:
        intended = None
        if self._interval:
            now = time.perf_counter()
            if self._next > now:
                gevent.sleep(self._next - now)
            intended = self._next
            self._next += self._interval
        self._i = (self._i + 1) % _BODY_POOL
        sent = time.perf_counter()
        with self.client.post(
            PATH, data=BODIES[self._i], headers=HEADERS, name=f"POST {PATH}", catch_response=True
        ) as resp:
            end = time.perf_counter()
            served_by = resp.headers.get("X-Served-By") or "none"
            resp.request_meta["name"] = f"POST {PATH} [{served_by}]"
            problem = self.check(resp, served_by)
            raw_ms = (end - sent) * 1000.0
            FIGURES.observe(served_by, raw_ms, (end - intended) * 1000.0 if intended is not None else raw_ms)
            FIGURES.count(f"served_by:{served_by}")
            if SLOW_MS and raw_ms >= SLOW_MS:
                FIGURES.count("slow")
            if problem is None:
                resp.success()
            else:
                FIGURES.count(f"failed:{problem}")
                resp.failure(problem)

    def check(self, resp: Any, served_by: str) -> str | None:
        """None when the answer is what the stage promises, else a short reason (locust's failure)."""
        if resp.status_code != 200:
            return f"status {resp.status_code}"
        if served_by not in self._allowed:
            return f"X-Served-By {served_by!r} in {self.stage} stage"
        stub = resp.headers.get("X-Stub")
        if stub != _STUB_OF[served_by]:
            return f"X-Served-By {served_by} but X-Stub {stub!r}"
        try:
            body = orjson.loads(resp.content or b"")
        except orjson.JSONDecodeError:
            return "body is not JSON"
        if not isinstance(body, dict) or body.get("decision") not in _DECISIONS:
            return "no valid decision in the body"
        suggestion = resp.headers.get("X-Stub-Suggestion")
        FIGURES.count(f"suggestion:{suggestion or 'none'}")
        return None
