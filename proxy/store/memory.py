"""``memory://``: the store for one process (the embedded default). Nothing is shared or kept."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from proxy.budgets import LocalBudget, Verdict
from proxy.stages import RouteState
from proxy.store import StatsKey
from proxy.windows import TIERS, WindowStats, tier_for


class MemoryStore:
    """Everything in dicts; the same contract as the Redis store."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._states: dict[str, RouteState] = {}
        self._buckets: dict[tuple[str, int, int], dict[int, WindowStats]] = {}
        self._clock = clock
        self._budgets: dict[str, LocalBudget] = {}

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def route_state(self, route: str) -> RouteState | None:
        return self._states.get(route)

    async def init_route_state(self, route: str, state: RouteState) -> RouteState:
        return self._states.setdefault(route, state)

    async def cas_route_state(self, route: str, expected_version: int, state: RouteState) -> bool:
        current = self._states.get(route)
        if current is None or current.version != expected_version:
            return False
        self._states[route] = state
        return True

    async def add_stats(self, deltas: Mapping[StatsKey, WindowStats]) -> None:
        now = self._clock()
        for (route, epoch, resolution, start), delta in deltas.items():
            buckets = self._buckets.setdefault((route, epoch, resolution), {})
            current = buckets.get(start)
            if current is None:
                buckets[start] = current = WindowStats()
                self._expire(buckets, resolution, now)
            current.merge(delta)

    @staticmethod
    def _expire(buckets: dict[int, WindowStats], resolution: int, now: float) -> None:
        retention = dict(TIERS)[resolution]
        for start in [s for s in buckets if s < now - retention - resolution]:
            del buckets[start]

    async def window_stats(self, route: str, epoch: int, since: float, until: float) -> WindowStats:
        resolution, _ = tier_for(until - since)
        buckets = self._buckets.get((route, epoch, resolution), {})
        first = int(since // resolution) * resolution
        return WindowStats.total(b for start, b in buckets.items() if first <= start <= until)

    async def budget_acquire(
        self,
        route: str,
        rate_per_s: float | None,
        burst: int | None,
        limit: float | None,
        window_s: float | None,
        reserve: float = 0.0,
        count: int = 1,
    ) -> Verdict:
        budget = self._budgets.get(route)
        if budget is None:
            budget = self._budgets[route] = LocalBudget(rate_per_s, burst, limit, window_s, self._clock)
        verdict = budget.acquire(reserve)
        granted = int(verdict.allowed)
        while granted < count and verdict.allowed:
            verdict = budget.acquire(reserve)
            granted += verdict.allowed
        verdict.granted = granted
        verdict.allowed = granted == count
        return verdict

    async def budget_charge(self, route: str, amount: float, window_s: float | None) -> float:
        budget = self._budgets.get(route)
        return budget.charge(amount) if budget is not None else 0.0
