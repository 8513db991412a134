"""Budgets (SPEC §5): rate (GCRA) and cost (fixed UTC-aligned windows), and shadow pacing.

The arithmetic is pure (:func:`gcra`, :func:`window_start`, :func:`paced_rate`); the Redis store runs
the same GCRA in one Lua script (``store/lua/budget_acquire.lua``) so replicas share one budget
atomically. :class:`BudgetGate` is what the model path asks before each call; when the store fails it
applies ``on_store_error``: ``closed`` refuses the call, ``open`` stands in with local limits at
``local_share`` of the budget, so N replicas cannot spend N times the limit unnoticed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.config import Budget
from proxy.log import get_logger
from proxy.stages import Skip
from proxy.store import StoreError
from proxy.tasks import TaskOwner

log = get_logger("proxy.budgets")

STORE_RETRY_S = 1.0  # after a store failure, stand in locally this long before asking it again


# --- pure arithmetic --------------------------------------------------------------------------


def gcra(tat: float, now: float, interval: float, burst: int) -> tuple[bool, float, int]:
    """Generic cell rate algorithm: ``(allowed, new_tat, calls_left)``.

    ``tat`` is the theoretical arrival time of the next call; ``interval`` = 1 / rate; up to ``burst``
    calls may go at once after idling. A refused call leaves ``tat`` unchanged.
    """
    base = max(tat, now)
    new_tat = base + interval
    if new_tat - now > burst * interval + 1e-9:
        return False, tat, 0
    left = math.floor((burst * interval - (new_tat - now)) / interval + 1e-9)
    return True, new_tat, max(0, left)


def window_start(now: float, window_s: float) -> int:
    """Start of the fixed window containing ``now``; aligned to the Unix epoch, so UTC (1d: midnight)."""
    return int(now // window_s * window_s)


def price(per_request: float, per_1k_units: float, units: float | None) -> float:
    """What one answered model call costs."""
    return per_request + per_1k_units * (units or 0.0) / 1000.0


def paced_rate(configured: float, current: float, spend_per_s: float, remaining: float, seconds_left: float,
               *, floor: float = 0.001, step: float = 0.5) -> float:  # fmt: skip
    """The shadow sample rate that spreads the remaining budget over the rest of the window.

    ``spend_per_s`` is the spend rate observed at ``current``; the target is ``remaining /
    seconds_left``. The rate moves ``step`` of the way to its target each call (smooth, no
    oscillation), never above ``configured`` and never below ``floor`` (the model never goes dark
    before the limit is actually reached). Once the limit is reached pacing stops: calls are then
    refused and recorded as ``skipped: cost``, which says more than ``sampled_out``.
    """
    if remaining <= 0:
        return configured
    if spend_per_s <= 0 or current <= 0:
        target = configured
    else:
        target = min(configured, current * (remaining / max(seconds_left, 1.0)) / spend_per_s)
    moved = current + step * (target - current)
    return max(floor * configured, min(configured, moved))


# --- the gate ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    """A budget decision; for several calls decided at once, the first ``granted`` may go."""

    allowed: bool
    reason: Skip | None = None
    calls_left: int | None = None
    spent: float | None = None
    granted: int = 1


class LocalBudget:
    """Budget arithmetic in this process: the memory store's, and the ``open`` mode's stand-in."""

    def __init__(self, rate_per_s: float | None, burst: int | None, limit: float | None, window_s: float | None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.interval = 1.0 / rate_per_s if rate_per_s else None
        self.burst = burst or 1
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._tat = 0.0
        self._window = -1
        self.spent = 0.0

    def _roll(self, now: float) -> None:
        if self.window_s is not None and (start := window_start(now, self.window_s)) != self._window:
            self._window, self.spent = start, 0.0

    def acquire(self, reserve: float = 0.0) -> Verdict:
        """Decide a call; when allowed, add ``reserve`` (its expected cost) to the window's spend."""
        now = self._clock()
        self._roll(now)
        if self.limit is not None and self.spent >= self.limit:
            return Verdict(False, Skip.COST, spent=self.spent)
        left = None
        if self.interval is not None:
            allowed, self._tat, left = gcra(self._tat, now, self.interval, self.burst)
            if not allowed:
                return Verdict(False, Skip.RATE, 0, self.spent)
        if self.window_s is not None:
            self.spent += reserve
        return Verdict(True, None, left, self.spent)

    def charge(self, amount: float) -> float:
        """Add ``amount`` (negative: a refund) to the current window's spend, never below zero."""
        self._roll(self._clock())
        self.spent = max(0.0, self.spent + amount)
        return self.spent


class BudgetGate:
    """A route's budgets as the model path sees them: :meth:`acquire` before, :meth:`charge` after.

    Asks the shared store (``store.budget_acquire`` / ``store.budget_charge``); on a store failure it
    applies ``on_store_error`` and does not ask the store again for ``STORE_RETRY_S``.
    """

    def __init__(
        self,
        route: str,
        budget: Budget,
        store: object,
        *,
        clock: Callable[[], float] = time.time,
        on_store_failure: Callable[[str], None] | None = None,
        owner: TaskOwner | None = None,
    ) -> None:
        self.route = route
        self.budget = budget
        self.store = store
        self._clock = clock
        cost = budget.cost
        self.rate_per_s = budget.rate.per_second if budget.rate else None
        self.burst = budget.burst_calls
        self.limit = cost.limit if cost else None
        self.window_s = cost.window if cost else None
        share = budget.local_share
        self.local = LocalBudget(
            self.rate_per_s * share if self.rate_per_s else None,
            max(1, math.floor((self.burst or 1) * share)) if self.burst else None,
            self.limit * share if self.limit is not None else None,
            self.window_s,
            clock,
        )
        self._down_until = 0.0
        self._on_failure = on_store_failure
        self._owner = owner
        self.expected_cost = cost.per_request if cost else 0.0
        self._batch: list[asyncio.Future[Verdict]] | None = None
        self._owed = 0.0
        self._settling = False
        self._settled = asyncio.Event()
        self.calls_left: int | None = self.burst
        self.spent = 0.0
        self.degraded = False

    @property
    def active(self) -> bool:
        return self.rate_per_s is not None or self.limit is not None

    def price(self, units: float | None) -> float:
        cost = self.budget.cost
        return price(cost.per_request, cost.per_1k_units, units) if cost else 0.0

    async def acquire(self) -> tuple[Skip | None, float]:
        """``(None, reserved)`` when the call may go, else ``(why not, 0)``.

        An allowed call reserves its expected cost (a running average of recent calls) in the window,
        so calls in flight count against the limit before they answer; :meth:`settle` corrects it.
        Calls made in the same event-loop tick are decided together, in one store round trip
        (a script call costs ~150 µs of CPU in redis-py; at a few thousand calls a second, batching
        is what keeps a shared budget affordable).
        """
        reserve = self.expected_cost if self.limit is not None else 0.0
        if self._clock() < self._down_until:
            return self._outcome(self._stand_in(reserve), reserve)
        if self._batch is not None:  # another call of this tick is gathering: join it
            joined: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
            self._batch.append(joined)
            return self._outcome(await joined, reserve)
        return self._outcome(await self._lead(reserve), reserve)

    async def _lead(self, reserve: float) -> Verdict:
        followers: list[asyncio.Future[Verdict]] = []
        self._batch = followers
        verdicts: list[Verdict] = []
        try:
            await asyncio.sleep(0)  # one loop turn: the other calls of this tick join
            self._batch = None
            count = 1 + len(followers)
            try:
                verdict: Verdict = await self.store.budget_acquire(  # type: ignore[attr-defined]
                    self.route, self.rate_per_s, self.burst, self.limit, self.window_s, reserve, count
                )
                self.degraded = False
                refused = Verdict(False, verdict.reason, 0, verdict.spent)
                allowed = Verdict(True, None, verdict.calls_left, verdict.spent)
                verdicts = [allowed if i < verdict.granted else refused for i in range(count)]
            except StoreError as exc:
                failed = self._store_failed(exc, reserve)
                verdicts = [failed] + [self._stand_in(reserve) for _ in followers]
        finally:
            self._batch = None
            for i, future in enumerate(followers, 1):  # a cancelled leader: stand in for the rest
                if not future.done():
                    future.set_result(verdicts[i] if i < len(verdicts) else self._stand_in(reserve))
        return verdicts[0]

    def _outcome(self, verdict: Verdict, reserve: float) -> tuple[Skip | None, float]:
        if verdict.calls_left is not None:
            self.calls_left = verdict.calls_left
        if verdict.spent is not None:
            self.spent = verdict.spent
        return (None, reserve) if verdict.allowed else (verdict.reason, 0.0)

    def settle_soon(self, reserved: float, actual: float | None) -> None:
        """Charge a call's actual cost against its reservation (``actual`` None: it never answered).

        Returns at once: a correction that needs the store is sent by an owned background task
        (the corrections of one tick together), so no caller waits for it.
        """
        if self.limit is None:
            return
        if actual is not None and actual != self.expected_cost:
            self.expected_cost = 0.8 * self.expected_cost + 0.2 * actual
        delta = (actual or 0.0) - reserved
        if abs(delta) < 1e-12:  # the usual case with a flat price: no store round trip at all
            return
        if self.degraded:
            self.local.charge(delta)  # the stand-in keeps its own books while the store is away
            return
        self._owed += delta
        if not self._settling and self._owner is not None:
            self._settling = True
            self._owner.spawn(self._settle(), name=f"budget-settle-{self.route}")

    async def settle(self, reserved: float, actual: float | None) -> None:
        """:meth:`settle_soon`, then wait until the store has the correction (tests, shutdown)."""
        self.settle_soon(reserved, actual)
        if not self._settling and abs(self._owed) >= 1e-12:
            self._settling = True
            await self._settle()
        elif self._settling:
            await self._settled.wait()

    async def _settle(self) -> None:
        self._settled.clear()
        try:
            await asyncio.sleep(0)  # the corrections of this tick go together
            while abs(self._owed) >= 1e-12:
                owed, self._owed = self._owed, 0.0
                self.spent = await self.store.budget_charge(self.route, owed, self.window_s)  # type: ignore[attr-defined]
        except StoreError as exc:
            self._store_failed(exc, 0.0)
        finally:
            self._settling = False
            self._settled.set()

    def _store_failed(self, exc: Exception, reserve: float) -> Verdict:
        if not self.degraded:
            log.warning("budget.store_failed", route=self.route, mode=self.budget.on_store_error, error=str(exc))
        self.degraded = True
        self._down_until = self._clock() + STORE_RETRY_S
        if self._on_failure is not None:
            self._on_failure("budget")
        return self._stand_in(reserve)

    def _stand_in(self, reserve: float) -> Verdict:
        if self.budget.on_store_error == "open":
            return self.local.acquire(reserve)
        reason = Skip.RATE if self.rate_per_s is not None else Skip.COST
        return Verdict(False, reason)

    def remaining(self) -> dict[str, float]:
        """What is left, for the ``budget_remaining`` gauge and the admin API (last known)."""
        out: dict[str, float] = {}
        if self.rate_per_s is not None and self.calls_left is not None:
            out["rate"] = float(self.calls_left)
        if self.limit is not None:
            out["cost"] = round(max(0.0, self.limit - self.spent), 9)
        return out


class Pacer:
    """Spreads a route's cost budget over its window by lowering the shadow sample rate.

    Every :meth:`update` measures the spend rate from the window's total as the store reports it
    (so every replica sees the spend of all), smoothed, and moves the sample rate toward the rate
    at which the remaining budget lasts until the window ends (:func:`paced_rate`).
    """

    def __init__(self, gate: BudgetGate, configured: float, clock: Callable[[], float] = time.time) -> None:
        self.gate = gate
        self.configured = configured
        self.rate = configured
        self._clock = clock
        self._last: tuple[float, float] | None = None
        self._spend_per_s: float | None = None

    def update(self) -> float:
        gate, now = self.gate, self._clock()
        assert gate.limit is not None and gate.window_s is not None
        spent = gate.spent
        if self._last is not None:
            then, before = self._last
            if spent < before:  # a new window, a new budget: start again from the configured rate
                self._spend_per_s = None
                self.rate = self.configured
            elif now > then:
                observed = (spent - before) / (now - then)
                previous = self._spend_per_s
                self._spend_per_s = observed if previous is None else 0.7 * previous + 0.3 * observed
        self._last = (now, spent)
        seconds_left = window_start(now, gate.window_s) + gate.window_s - now
        self.rate = paced_rate(self.configured, self.rate, self._spend_per_s or 0.0, gate.limit - spent, seconds_left)
        return self.rate
