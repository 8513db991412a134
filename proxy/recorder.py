"""The recorder: turns finished exchanges into chained audit records, off the request path.

The request path only appends to a bounded queue (:meth:`Recorder.submit`, O(1), never blocks).
One owned task builds records in small slices (yielding to the event loop between them, so a batch
never stalls client requests), lets observers see them (metrics, window statistics), and hands
them to the sink in batches. When the queue is full, a record is dropped and counted rather than
slowing the client: the client's answer always comes first (fail safe toward the primary).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.audit import Chain
from proxy.exchange import Exchange
from proxy.log import get_logger
from proxy.metrics import Metrics
from proxy.records import RecordBuilder
from proxy.sinks import Sink

log = get_logger("proxy.audit")

Item = Any  # an Exchange, or a record built elsewhere (transition, outcome)
Observer = Callable[[list[tuple[Item, dict[str, Any]]]], Awaitable[None] | None]
_SLICE = 64  # records built per event-loop turn: ~1-2 ms of CPU at most
_RETRY_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class Recorder:
    """Owns the audit queue, the chain and the sink."""

    def __init__(
        self,
        sink: Sink,
        chain: Chain,
        builder: RecordBuilder,
        metrics: Metrics,
        *,
        queue_records: int = 100_000,
        batch_records: int = 1024,
        flush_interval_s: float = 0.2,
    ) -> None:
        self.sink = sink
        self.chain = chain
        self.builder = builder
        self._metrics = metrics
        self._max = queue_records
        self._batch = batch_records
        self._interval = flush_interval_s
        self._queue: deque[Exchange | dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._failures = 0
        self._observers: list[Observer] = []
        self._idle = asyncio.Event()
        self.dropped = 0
        self.written = 0

    def observe(self, observer: Observer) -> None:
        """Call ``observer([(item, record), ...])`` with every built batch, before it is written."""
        self._observers.append(observer)

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def has_room(self, count: int) -> bool:
        return len(self._queue) + count <= self._max

    def submit(self, item: Exchange | dict[str, Any]) -> bool:
        """Queue a finished exchange or a built record (transition, outcome). Never blocks."""
        if len(self._queue) >= self._max:
            self.dropped += 1
            self._metrics.audit_dropped.inc()
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error("audit.queue_full", dropped=self.dropped, queue_records=self._max)
            return False
        self._queue.append(item)
        if len(self._queue) >= self._batch or self._closing:
            self._wake.set()
        return True

    async def run(self) -> None:
        """The writer loop; returns after :meth:`close` once everything is written."""
        while True:
            if not self._queue and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            self._idle.clear()
            await self._drain()
            if not self._queue and not self.sink.pending:
                self._idle.set()
            if self._closing and not self._queue and not self.sink.pending:
                return

    async def _drain(self) -> None:
        while self._queue or self.sink.pending:
            if not self.sink.pending:
                await self._plan(min(self._batch, len(self._queue)))
            try:
                await self.sink.flush()
            except OSError as exc:
                self._metrics.audit_errors.inc()
                delay = _RETRY_S[min(self._failures, len(_RETRY_S) - 1)]
                self._failures += 1
                log.error("audit.write_failed", error=str(exc), retry_in_s=delay, backlog=len(self._queue))
                await asyncio.sleep(delay)
                return
            self._failures = 0

    async def _plan(self, count: int) -> None:
        built: list[dict[str, Any]] = []
        while count > 0:
            take = min(_SLICE, count)
            count -= take
            items = [self._queue.popleft() for _ in range(take)]
            pairs = [(item, record) for item in items if (record := self._build(item)) is not None]
            for observer in self._observers:
                try:
                    result = observer(pairs)
                    if result is not None:
                        await result
                except Exception as exc:  # statistics are not worth losing records over
                    log.warning("audit.observer_failed", observer=getattr(observer, "__name__", "?"), error=str(exc))
            built.extend(record for _, record in pairs)
            await asyncio.sleep(0)  # let client requests run between slices
        self.sink.plan(built, self.chain)
        self.written += len(built)
        for kind, n in Counter(r["type"] for r in built).items():
            self._metrics.audit_records.labels(kind).inc(n)

    def _build(self, item: Exchange | dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(item, dict):
            return item
        try:
            return self.builder.decision(item)
        except Exception as exc:  # one bad exchange must not stop the trail
            log.exception("audit.build_failed", route=getattr(item.route, "name", None), error=str(exc))
            return None

    async def wait_idle(self) -> None:
        """Return once everything submitted so far is written (for tests and the demo)."""
        self._idle.clear()
        self._wake.set()
        await self._idle.wait()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued, seal, fsync. Called after client traffic and model calls stop."""
        self._closing = True
        self._wake.set()

    async def finish(self, runner: asyncio.Task[None], timeout_s: float = 30.0) -> None:
        """Wait for the writer loop to empty the queue, then seal and close the sink."""
        await self.close()
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(runner), timeout_s)
        except TimeoutError:
            log.error("audit.flush_timeout", backlog=len(self._queue), waited_s=time.monotonic() - started)
            runner.cancel()
        await self.sink.close(self.chain)
