"""The model path of one route: bounded in-flight calls, budgets, circuit, classification.

Every model call, in every stage, goes through :class:`ModelPath`. Nothing here raises into the
client's path: each failure becomes a recorded outcome on :class:`~proxy.exchange.ModelCall` and a
counter. Shadow copies run as owned background tasks; beyond ``max_in_flight`` calls (or
``max_queued_bytes`` of request bodies held) a copy is dropped and counted, never queued.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from proxy.circuit import Circuit
from proxy.decisions import Extractor, parse_json
from proxy.exchange import Exchange, ModelCall, Reply
from proxy.stages import ModelResultKind, Skip
from proxy.tasks import TaskOwner
from proxy.upstream import Upstream


class BudgetPort(Protocol):
    """What the model path asks of a route's budget (see :mod:`proxy.budgets`)."""

    limit: float | None
    window_s: float | None

    async def acquire(self) -> tuple[Skip | None, float]: ...

    def settle_soon(self, reserved: float, actual: float | None) -> None: ...

    def price(self, units: float | None) -> float: ...

    def remaining(self) -> dict[str, float]: ...


class ModelPath:
    """Calls one route's model; owns its shadow tasks' accounting."""

    def __init__(
        self,
        *,
        route: str,
        upstream: Upstream,
        extractor: Extractor,
        max_in_flight: int,
        max_queued_bytes: int,
        circuit: Circuit,
        owner: TaskOwner,
        count: Callable[[str], None],
        observe_latency: Callable[[float], None],
        budget: BudgetPort | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.route = route
        self.upstream = upstream
        self.extractor = extractor
        self.max_in_flight = max_in_flight
        self.max_queued_bytes = max_queued_bytes
        self.circuit = circuit
        self.budget = budget
        self.in_flight = 0
        self.queued_bytes = 0
        self._owner = owner
        self._count = count
        self._observe = observe_latency
        self._clock = clock

    def admit(self, body_len: int) -> Skip | None:
        """Reserve an in-flight slot, or say why not (overload, circuit). Pair with :meth:`release`."""
        if self.in_flight >= self.max_in_flight or (
            self.queued_bytes + body_len > self.max_queued_bytes and self.in_flight > 0
        ):
            return Skip.OVERLOAD
        if not self.circuit.allow(self._clock()):
            return Skip.CIRCUIT
        self.in_flight += 1
        self.queued_bytes += body_len
        return None

    def release(self, body_len: int) -> None:
        self.in_flight -= 1
        self.queued_bytes -= body_len

    def skip(self, call: ModelCall, reason: Skip) -> None:
        call.skipped = reason
        self._count("skipped_" + reason.value if reason is not Skip.SAMPLED_OUT else reason.value)

    def spawn(self, ex: Exchange, method: str, path_qs: str, headers: Mapping[str, str]) -> asyncio.Task[None]:
        """Run :meth:`call` for an admitted exchange in the background; it completes one half.

        The half is completed by the task's done-callback, not inside the coroutine, so a task
        cancelled before its first step (shutdown) still releases its slot and is recorded.
        """
        ex.halves += 1
        task = self._owner.spawn(self.call(ex, method, path_qs, headers), name="model-call")
        task.add_done_callback(lambda _: self._finished(ex))
        return task

    def _finished(self, ex: Exchange) -> None:
        call = ex.model
        if not call.started:  # cancelled before it ran: the slot was taken in admit()
            self.release(len(ex.body))
            self.circuit.abandon()
            call.skipped = Skip.SHUTDOWN
        ex.half_done()

    async def call(self, ex: Exchange, method: str, path_qs: str, headers: Mapping[str, str]) -> None:
        """Budget, call and classify one admitted model call; fills ``ex.model``.

        The budget's decision counts inside the model's timeout (the client never waits longer than
        it), and the budget is settled in the background, after the model's answer is classified.
        """
        call = ex.model
        call.started = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.upstream.timeout_s
        reserved = 0.0
        called = False
        try:
            if self.budget is not None:
                denied, reserved = await self.budget.acquire()
                if denied is not None:
                    self.skip(call, denied)
                    return
            pairs = (*headers.items(), ("X-Shadow-Stage", ex.stage.value))
            called = True
            reply = await self.upstream.call(
                method, path_qs, _Pairs(pairs), ex.send_body, timeout_s=max(0.001, deadline - loop.time())
            )
            if reply.error == "timeout":  # a timeout counts as the whole timeout
                reply.latency_ms = self.upstream.timeout_s * 1000.0
            self.classify(call, reply)
            self._observe(reply.latency_ms / 1000.0 if reply.latency_ms is not None else 0.0)
            if self.budget is not None:
                actual = None
                if reply.status is not None:  # charged when the model answers, whatever it answered
                    units = call.extracted.usage if call.extracted is not None else None
                    actual = call.cost = self.budget.price(units)
                self.budget.settle_soon(reserved, actual)
        except asyncio.CancelledError:
            if call.error is None and call.skipped is None and call.reply is None:
                call.skipped = Skip.SHUTDOWN
            raise
        finally:
            if not called:
                self.circuit.abandon()  # refused or cancelled before the call: nobody probed
            self.release(len(ex.body))

    def classify(self, call: ModelCall, reply: Reply) -> None:
        """Turn a reply into ok / error / timeout / invalid, and count it."""
        call.reply = reply
        if reply.error is not None:
            call.error = reply.error
        elif not reply.ok:
            call.error = ModelResultKind.ERROR.value
            reply.detail = f"HTTP {reply.status}"
        else:
            call.doc = parse_json(reply.body)
            call.extracted = self.extractor.extract(call.doc)
            if call.extracted.decision is None:
                call.error = ModelResultKind.INVALID.value
                reply.detail = "no decision in the response" if call.doc is not None else "body is not JSON"
        self.circuit.record(call.error is None, self._clock())
        self._count(call.error or ModelResultKind.OK.value)


class _Pairs:
    """Headers as ordered pairs, with the ``items()`` the upstream client reads (no multidict copy)."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self._pairs = pairs

    def items(self) -> tuple[tuple[str, str], ...]:
        return self._pairs

    def __iter__(self) -> Any:  # aiohttp (HEAD) takes an iterable of pairs
        return iter(self._pairs)


def valid_confidence(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0
