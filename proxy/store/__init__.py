"""The store: where state shared by replicas lives (stage state, window statistics, budgets).

One protocol, two adapters: :mod:`proxy.store.memory` (one process; the embedded default) and
:mod:`proxy.store.redis` (shared by every replica). ``tests/test_store_contract.py`` runs the same
contract against both. Every method may raise :class:`StoreError`; callers fail safe toward the
primary (SPEC §5 ``on_store_error``, stage stays as last known).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from proxy.config import Store as StoreConfig
from proxy.stages import RouteState
from proxy.windows import WindowStats

# (route, epoch, resolution_s, bucket_start)
StatsKey = tuple[str, int, int, int]


class StoreError(Exception):
    """The store could not answer (unreachable, timed out, refused)."""


class Store(Protocol):
    async def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    async def close(self) -> None: ...

    async def route_state(self, route: str) -> RouteState | None: ...

    async def init_route_state(self, route: str, state: RouteState) -> RouteState:
        """Store ``state`` unless the route has one already; return what is stored."""

    async def cas_route_state(self, route: str, expected_version: int, state: RouteState) -> bool:
        """Replace the route's state only if its version is still ``expected_version``."""

    async def add_stats(self, deltas: Mapping[StatsKey, WindowStats]) -> None:
        """Add counts to buckets (one entry per route, epoch, resolution and bucket)."""

    async def window_stats(self, route: str, epoch: int, since: float, until: float) -> WindowStats:
        """Sum the route's buckets of ``epoch`` from ``since`` to ``until`` (seconds since the epoch)."""


def open_store(config: StoreConfig) -> Store:
    """The store a config names: ``memory://`` or ``redis://...``."""
    if config.url == "memory://":
        from proxy.store.memory import MemoryStore

        return MemoryStore()
    from proxy.store.redis import RedisStore

    return RedisStore(config.url, timeout_s=config.timeout, prefix=config.key_prefix)
