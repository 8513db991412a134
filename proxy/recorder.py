"""The recorder: turns finished exchanges into chained audit records, off the request path.

The request path only appends to a bounded queue (:meth:`Recorder.submit`, O(1), never blocks).
One owned task builds records in small slices (yielding to the event loop between them, so a batch
never stalls client requests), lets observers see them (metrics, window statistics), and hands
them to the sink in batches. When the queue is full, a record is dropped and counted rather than
slowing the client: the client's answer always comes first (fail safe toward the primary). A
``transition`` record is never refused: the stage change it reports has already happened.

The writer task never ends before shutdown: whatever fails — building a record, an observer, planning,
writing — is logged (the first time for each kind of failure, then at 10, 100, ... occurrences) and
counted in ``audit_write_errors_total``, and the loop carries on. A record that cannot be built or
chained is dropped (``audit_dropped_records_total``); it is never chained, so the chain has no gap.
A failed write is retried (backoff up to 5 s) with nothing dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self._in_hand = 0  # records taken off the queue and not yet planned
        self._errors: Counter[tuple[str, str]] = Counter()  # (where, exception type) -> occurrences
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
        if len(self._queue) >= self._max and not (isinstance(item, dict) and item.get("type") == "transition"):
            self._drop(1)
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
            try:
                await self._drain()
            except Exception as exc:  # a bug must not end the trail: report it, wait, carry on
                self._error("loop", exc)
                self._drop(self._in_hand)
                self._in_hand = 0
                await self._back_off()
                continue
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
            except OSError as exc:  # disk full, Redis and spill both failing: an outage, said each retry
                self._metrics.audit_errors.inc()
                log.error(
                    "audit.write_failed",
                    error=str(exc),
                    retry_in_s=self._delay(),
                    backlog=len(self._queue),
                )
                await self._back_off()
                return
            except Exception as exc:  # a bug in the sink: what is planned stays planned and is retried
                self._error("flush", exc)
                await self._back_off()
                return
            self._failures = 0

    def _delay(self) -> float:
        return _RETRY_S[min(self._failures, len(_RETRY_S) - 1)]

    async def _back_off(self) -> None:
        delay = self._delay()
        self._failures += 1
        await asyncio.sleep(delay)

    async def _plan(self, count: int) -> None:
        built: list[dict[str, Any]] = []
        while count > 0:
            take = min(_SLICE, count)
            count -= take
            items = [self._queue.popleft() for _ in range(take)]
            self._in_hand += take
            pairs = [(item, record) for item in items if (record := self._build(item)) is not None]
            for observer in self._observers:
                try:
                    result = observer(pairs)
                    if result is not None:
                        await result
                except Exception as exc:  # statistics are not worth losing records over
                    self._error(f"observer {getattr(observer, '__name__', '?')}", exc)
            built.extend(record for _, record in pairs)
            await asyncio.sleep(0)  # let client requests run between slices
        try:
            failed = self.sink.plan(built, self.chain)
        except Exception as exc:  # not expected: plan chains what it can and returns the rest
            self._error("plan", exc)
            failed = [(record, exc) for record in built if "hash" not in record]  # not chained: lost
        for _, exc in failed:
            self._error("chain", exc)
        self._drop(len(failed))
        self._in_hand = 0
        self.written += len(built) - len(failed)
        kinds = Counter(r.get("type") for r in built)
        kinds.subtract(r.get("type") for r, _ in failed)
        for kind, n in kinds.items():
            if n > 0:
                self._metrics.audit_records.labels(str(kind)).inc(n)

    def _build(self, item: Exchange | dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(item, dict):
            return item
        try:
            return self.builder.decision(item)
        except Exception as exc:  # one bad exchange must not stop the trail
            self._error("build", exc, route=getattr(getattr(item, "route", None), "name", None))
            self._drop(1)
            self._in_hand -= 1
            return None

    def _drop(self, count: int) -> None:
        if count:
            self.dropped += count
            self._metrics.audit_dropped.inc(count)

    def _error(self, where: str, exc: BaseException, **fields: Any) -> None:
        """Count a failure; log the first of each kind (with its traceback), then at 10, 100, ..."""
        self._metrics.audit_errors.inc()
        key = (where, type(exc).__name__)
        self._errors[key] += 1
        n = self._errors[key]
        if str(n).rstrip("0") == "1":  # 1, 10, 100, ...
            log.error(
                "audit.writer_error",
                where=where,
                error=f"{type(exc).__name__}: {exc}",
                occurrences=n,
                exc_info=exc if n == 1 else None,
                **fields,
            )

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
        """Wait for the writer loop to empty the queue, then seal and close the sink.

        Never raises: a writer loop that died (or is stuck past ``timeout_s``) is logged, the records
        it could not write are counted as dropped, and the sink is still sealed and closed.
        """
        await self.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        await asyncio.wait({runner}, timeout=timeout_s)
        if runner.done() and (runner.cancelled() or runner.exception() is not None):
            error = "cancelled" if runner.cancelled() else repr(runner.exception())
            log.error("audit.writer_died", error=error, backlog=len(self._queue))
            if self._queue or self.sink.pending:  # write what is left here, within the time left
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.run(), max(0.0, deadline - loop.time()))
        elif not runner.done():
            log.error("audit.flush_timeout", backlog=len(self._queue), waited_s=timeout_s)
            runner.cancel()
            await asyncio.wait({runner}, timeout=5.0)
        lost = len(self._queue) + self._in_hand
        if lost:
            self._queue.clear()
            self._in_hand = 0
            self._drop(lost)
            log.error("audit.records_lost", records=lost, reason="not written before shutdown")
        try:
            await self.sink.close(self.chain)
        except Exception as exc:
            self._metrics.audit_errors.inc()
            log.error("audit.close_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
