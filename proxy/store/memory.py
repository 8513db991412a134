"""``memory://``: the store for one process (the embedded default). Nothing is shared or kept."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from proxy.budgets import LocalBudget, Verdict
from proxy.stages import RouteState
from proxy.store import StatsKey
from proxy.windows import KEEP_S, WindowStats, plan_buckets


class MemoryStore:
    """Everything in dicts; the same contract as the Redis store.

    Window buckets expire like Redis keys do (:data:`~proxy.windows.KEEP_S` after their start), and
    when a route's stage epoch moves on, its buckets of epochs older than the previous one are dropped
    (the previous epoch is kept for records still in flight): memory stays bounded however often a
    route changes stage.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._states: dict[str, RouteState] = {}
        # route -> epoch -> resolution -> bucket start -> stats (starts in insertion order, mostly rising)
        self._buckets: dict[str, dict[int, dict[int, dict[int, WindowStats]]]] = {}
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
            epochs = self._buckets.setdefault(route, {})
            if epoch not in epochs:
                newest = max(epochs, default=epoch)
                if epoch < newest - 1:
                    continue  # an epoch two stages back: nobody reads it any more
                for old in [e for e in epochs if e < epoch - 1]:
                    del epochs[old]
            buckets = epochs.setdefault(epoch, {}).setdefault(resolution, {})
            current = buckets.get(start)
            if current is None:
                buckets[start] = current = WindowStats()
                _expire(buckets, resolution, now)
            current.merge(delta)

    async def window_stats(self, route: str, epoch: int, since: float, until: float) -> WindowStats:
        tiers = self._buckets.get(route, {}).get(epoch, {})
        parts = (
            tiers.get(resolution, {}).get(start) for resolution, start in plan_buckets(since, until, self._clock())
        )
        return WindowStats.total(part for part in parts if part is not None)

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


def _expire(buckets: dict[int, WindowStats], resolution: int, now: float) -> None:
    """Drop buckets kept long enough (oldest inserted first; a late, older one goes on a later pass)."""
    cutoff = now - KEEP_S[resolution]
    expired = []
    for start in buckets:
        if start >= cutoff:
            break
        expired.append(start)
    for start in expired:
        del buckets[start]
