"""Wiring: build one proxy instance from a loaded config (no sockets bound here).

:class:`ShadowProxy` owns every long-lived part — upstream sessions, model paths, the recorder,
background tasks — and stops them in order: model calls drain (bounded), then the audit trail is
written, sealed and fsynced. :mod:`proxy.server` binds the sockets and handles signals.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.admin import build_admin_app
from proxy.audit import Chain, Redactor
from proxy.budgets import BudgetGate, Pacer
from proxy.circuit import Circuit
from proxy.config import Route
from proxy.controller import StageController
from proxy.decisions import RouteDecisions
from proxy.exchange import Exchange
from proxy.handler import ProxyHandler
from proxy.ids import ulid
from proxy.loading import Loaded
from proxy.log import get_logger
from proxy.metrics import Metrics
from proxy.mirror import ModelPath
from proxy.recorder import Recorder
from proxy.records import RecordBuilder
from proxy.routes import RouteRuntime, RouteTable, model_counter
from proxy.sinks import FileSink, Sink
from proxy.stages import Stage
from proxy.store import Store, StoreError, open_store
from proxy.tasks import TaskOwner
from proxy.upstream import Upstream
from proxy.windows import bucketize

log = get_logger("proxy.app")
STATS_RETRY_S = 5.0


class ShadowProxy:
    """One running proxy: routes, upstreams, recorder, owned tasks."""

    def __init__(
        self,
        loaded: Loaded,
        *,
        store: Store | None = None,
        environ: Mapping[str, str] | None = None,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.loaded = loaded
        self.config = config = loaded.config
        self.metrics = Metrics()
        self.start_id = ulid()
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{self.start_id}"
        self.model_tasks = TaskOwner("model-calls")
        self.background = TaskOwner("background")  # the audit writer
        self.loops = TaskOwner("loops")  # stage evaluation, pub/sub, pacing: stopped before the writer
        self._rng, self._clock = rng, clock
        self._environ = os.environ if environ is None else environ
        self.store = store if store is not None else open_store(config.store)
        self.routes = RouteTable([self._route(r) for r in config.routes])
        self.default = Upstream(config.default_upstream, 30.0, name="default") if config.default_upstream else None
        self.recorder = Recorder(
            self._sink(),
            Chain(self.writer),
            RecordBuilder(Redactor(config.audit.redact), config.audit.include_bodies),
            self.metrics,
            queue_records=config.audit.queue_records,
            batch_records=config.audit.batch_records,
            flush_interval_s=config.audit.flush_interval,
        )
        self.recorder.observe(self._count_decisions)
        self.recorder.observe(self._record_stats)
        self.controller = StageController(
            self.routes,
            self.store,
            loaded.policies,
            self.recorder.submit,
            self.metrics,
            self.loops,
            clock=clock,
            room=lambda: self.recorder.has_room(1),
        )
        self.handler = ProxyHandler(
            routes=self.routes,
            default=self.default,
            submit=self.recorder.submit,
            metrics=self.metrics,
            owner=self.model_tasks,
            max_body_bytes=config.max_body_bytes,
            access_sample=config.log.access_sample,
            rng=rng,
            clock=clock,
        )
        self._recorder_task: asyncio.Task[None] | None = None
        self.draining = False
        self._stats_failing = False
        self._stats_retry_at = 0.0
        self._live_gauges()

    def _route(self, cfg: Route) -> RouteRuntime:
        primary = Upstream(cfg.primary.url, cfg.primary.timeout, name=f"{cfg.name}/primary")
        model_upstream = Upstream(cfg.model.url, cfg.model.timeout, name=f"{cfg.name}/model")
        decisions = RouteDecisions(cfg)
        gate = BudgetGate(
            cfg.name, cfg.budget, self.store, clock=self._clock, on_store_failure=self._store_failed,
            owner=self.model_tasks,
        )  # fmt: skip
        model = ModelPath(
            route=cfg.name,
            upstream=model_upstream,
            extractor=decisions.model,
            max_in_flight=cfg.mirror.max_in_flight,
            max_queued_bytes=cfg.mirror.max_queued_bytes,
            circuit=Circuit(cfg.model.circuit.failures, cfg.model.circuit.cooldown),
            owner=self.model_tasks,
            count=model_counter(self.metrics, cfg.name),
            observe_latency=self.metrics.upstream_latency.labels(cfg.name, "model").observe,
            budget=gate if gate.active else None,
        )
        return RouteRuntime(cfg=cfg, primary=primary, model=model, decisions=decisions, metrics=self.metrics)

    def _store_failed(self, operation: str) -> None:
        self.metrics.store_errors.labels(operation).inc()

    def _sink(self) -> Sink:
        sink = self.config.audit.sink
        if sink.startswith("file://"):
            return FileSink(
                Path(sink[len("file://") :]),
                start_id=self.start_id,
                rotate_bytes=self.config.audit.rotate_bytes,
                compress_rotated=self.config.audit.compress_rotated,
                fsync_each_batch=self.config.audit.fsync == "batch",
            )
        from proxy.sink_redis import RedisSink  # redis:// or rediss:// (the config accepts nothing else)

        return RedisSink(sink, Path(self.config.audit.spill_dir), start_id=self.start_id)

    def _live_gauges(self) -> None:
        routes = self.routes.routes
        live = self.metrics.live
        live.add(
            "shadow_proxy_mirror_in_flight", "Model calls in flight.", ["route"],
            lambda: [((r.name,), r.model.in_flight) for r in routes],
        )  # fmt: skip
        live.add(
            "shadow_proxy_sample_rate", "Shadow sample rate in force.", ["route"],
            lambda: [((r.name,), r.sample_rate) for r in routes],
        )  # fmt: skip
        live.add(
            "shadow_proxy_stage", "Stage: 0 shadow, 1 assisted, 2 autonomous.", ["route"],
            lambda: [((r.name,), r.stage.level) for r in routes],
        )  # fmt: skip
        live.add(
            "shadow_proxy_budget_remaining", "Budget left: calls now (rate), spend this window (cost).",
            ["route", "kind"],
            lambda: [((r.name, kind), left) for r in routes for kind, left in r.budget_view().items()],
        )  # fmt: skip
        live.add(
            "shadow_proxy_audit_queue_records", "Records waiting to be written.", [],
            lambda: [((), self.recorder.backlog)],
        )  # fmt: skip
        live.add(
            "shadow_proxy_audit_spilled_records", "Records in the spill folder awaiting replay.", [],
            lambda: [((), getattr(self.recorder.sink, "spilled", 0))],
        )  # fmt: skip

    def _count_decisions(self, pairs: list[tuple[Any, dict[str, Any]]]) -> None:
        counts: dict[tuple[str, str, str], int] = {}
        for _, record in pairs:
            if record["type"] == "decision":
                agree = record["agree"]
                key = (record["route"], record["stage"], "null" if agree is None else "true" if agree else "false")
                counts[key] = counts.get(key, 0) + 1
        for labels, n in counts.items():  # once per label set and batch, not once per record
            self.metrics.decisions.labels(*labels).inc(n)

    async def _record_stats(self, pairs: list[tuple[Any, dict[str, Any]]]) -> None:
        """Add decisions to the window statistics the policies read (shared through the store).

        The audit writer awaits this, so a failing store must not slow it: after a failure the
        statistics of the next ``STATS_RETRY_S`` are not sent (the policies see a thinner window).
        """
        if self._stats_failing and self._clock() < self._stats_retry_at:
            self.metrics.store_errors.labels("stats_skipped").inc()
            return
        deltas = bucketize(
            (item.route.name, item.epoch, item.ts, record) for item, record in pairs if isinstance(item, Exchange)
        )
        if not deltas:
            return
        try:
            await self.store.add_stats(deltas)
        except StoreError as exc:
            self.metrics.store_errors.labels("stats").inc()
            if not self._stats_failing:  # once per outage, not once per batch
                log.warning("stats.store_failed", error=str(exc), buckets=len(deltas))
            self._stats_failing = True
            self._stats_retry_at = self._clock() + STATS_RETRY_S
            return
        if self._stats_failing:
            log.info("stats.store_recovered")
            self._stats_failing = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        for route in self.routes.routes:
            await route.primary.start()
            await route.model.upstream.start()
        if self.default is not None:
            await self.default.start()
        await self.recorder.sink.open()
        await self._probe_upstreams()
        self._recorder_task = self.background.spawn(self.recorder.run(), name="audit-writer")
        await self.controller.start()
        for route in self.routes.routes:
            gate = route.model.budget
            if gate is not None and gate.limit is not None and gate.window_s is not None:
                pacer = Pacer(gate, route.cfg.mirror.sample, self._clock)
                self.loops.spawn(self._pace(route, pacer), name=f"pacing-{route.name}")

    async def _probe_upstreams(self) -> None:
        """Warn, in one line each, about upstreams not reachable now (a sidecar's may start later)."""
        upstreams = [u for r in self.routes.routes for u in (r.primary, r.model.upstream)]
        upstreams += [self.default] if self.default is not None else []
        unique = {u.base_url: u for u in upstreams}
        reasons = await asyncio.gather(*(u.probe() for u in unique.values()))
        for upstream, reason in zip(unique.values(), reasons, strict=True):
            if reason is not None:
                log.warning("upstream.unreachable", upstream=upstream.name, url=upstream.base_url, reason=reason)

    async def _pace(self, route: RouteRuntime, pacer: Pacer, every_s: float = 1.0) -> None:
        """Keep the route's shadow sample rate where its cost budget lasts the window."""
        while True:
            await asyncio.sleep(every_s)
            if route.stage is Stage.SHADOW:
                route.sample_rate = pacer.update()
            else:
                route.sample_rate = pacer.configured

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until in-flight model calls finish and their records are written (tests, demo)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        await self.model_tasks.wait(timeout_s)
        await asyncio.wait_for(self.recorder.wait_idle(), max(0.1, deadline - loop.time()))

    async def stop(self) -> None:
        """After client traffic has stopped: drain model calls, then write and seal the audit trail."""
        grace = self.config.shutdown.mirror_grace
        cancelled = await self.model_tasks.drain(grace)
        if cancelled:
            log.warning("shutdown.model_calls_cancelled", count=cancelled, grace_s=grace)
        await self.loops.cancel()  # no transition may be committed after the trail's last write
        if self._recorder_task is not None:
            await self.recorder.finish(self._recorder_task)
        await self.background.cancel()
        await self.store.close()
        for route in self.routes.routes:
            await route.primary.close()
            await route.model.upstream.close()
        if self.default is not None:
            await self.default.close()
        log.info("shutdown.audit_flushed", records=self.recorder.written, dropped=self.recorder.dropped)

    # --- aiohttp applications -----------------------------------------------------------------

    def proxy_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, handler_args={"max_field_size": 16384})
        app.router.add_route("*", "/{tail:.*}", self.handler.__call__)
        return app

    def admin_app(self) -> web.Application:
        admin = self.config.admin
        admin_token = self._environ.get(admin.token_env) or None
        outcomes_token = self._environ.get(admin.outcomes_token_env) or None if admin.outcomes_token_env else None
        if admin_token is None:
            log.warning("admin.disabled", reason=f"{admin.token_env} is not set: only health and metrics answer")
        return build_admin_app(self, admin_token, outcomes_token)
