"""``redis://``: state shared by every replica — stage state, window statistics, budgets.

Keys (``P`` = ``store.key_prefix``; the route in braces is a Redis Cluster hash tag, so one route's
keys share a slot and its Lua scripts stay legal on a cluster)::

    P:{route}:state                      JSON RouteState; replaced only by state_cas.lua
    P:{route}:rate                       GCRA theoretical arrival time (µs)
    P:{route}:cost                       hash {start, spent}: the current cost window
    P:{route}:w:EPOCH:RES:START          hash of window counts, ``cost`` and ``h:<bucket>`` latency counts
    P:stage                              pub/sub channel: a route's state changed

Every failure (refused, timed out, reset) becomes :class:`~proxy.store.StoreError`, after one immediate
retry for a broken connection only (a timeout is not retried: the script may have run): callers decide the fallback
(SPEC §5), and the client never waits on backoff. The client reconnects by itself on the next command.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from proxy.budgets import Verdict
from proxy.log import get_logger
from proxy.stages import RouteState, Skip
from proxy.store import StatsKey, StoreError
from proxy.windows import COUNTS, KEEP_S, WindowStats, plan_buckets

log = get_logger("proxy.store")
T = TypeVar("T")


def _lua(name: str) -> str:
    return resources.files("proxy.store").joinpath("lua", name).read_text(encoding="utf-8")


class RedisStore:
    """The Redis adapter of :class:`proxy.store.Store`, plus budgets and change notifications."""

    def __init__(self, url: str, *, timeout_s: float = 0.25, prefix: str = "shadow-proxy") -> None:
        self.url = url
        self.prefix = prefix
        self._redis = aioredis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One immediate retry on a broken connection (replaces a pooled connection Redis closed when
            # it restarted) — never on a timeout: the script may have run, and a CAS, a budget
            # reservation or a HINCRBY must not run twice.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=15,
            max_connections=256,
        )
        self._acquire = self._redis.register_script(_lua("budget_acquire.lua"))
        self._charge = self._redis.register_script(_lua("budget_charge.lua"))
        self._cas = self._redis.register_script(_lua("state_cas.lua"))
        self.channel = f"{prefix}:stage"

    def _key(self, route: str, *parts: object) -> str:
        return ":".join([self.prefix, "{" + route + "}", *(str(p) for p in parts)])

    async def _do(self, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {str(exc) or type(exc).__name__}") from exc

    async def ping(self) -> None:
        await self._do(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()

    # --- stage state --------------------------------------------------------------------------

    async def route_state(self, route: str) -> RouteState | None:
        raw = await self._do(self._redis.get(self._key(route, "state")))
        return None if raw is None else RouteState.from_json(orjson.loads(raw))

    async def init_route_state(self, route: str, state: RouteState) -> RouteState:
        key = self._key(route, "state")
        await self._do(self._redis.set(key, orjson.dumps(state.to_json()), nx=True))
        stored = await self.route_state(route)
        return stored if stored is not None else state

    async def cas_route_state(self, route: str, expected_version: int, state: RouteState) -> bool:
        payload = orjson.dumps(state.to_json())
        args = [expected_version, payload, self.channel, route]
        return bool(await self._do(self._cas(keys=[self._key(route, "state")], args=args)))

    async def watch(self, on_change: Callable[[str], None], stop: asyncio.Event) -> None:
        """Call ``on_change(route)`` whenever any replica changes a route's state (reconnecting)."""
        while not stop.is_set():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        on_change(message["data"].decode())
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()

    # --- window statistics --------------------------------------------------------------------

    async def add_stats(self, deltas: Mapping[StatsKey, WindowStats]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for (route, epoch, resolution, start), delta in deltas.items():
            key = self._key(route, "w", epoch, resolution, start)
            fields = {name: n for name, n in delta.counts.items() if n}
            fields.update({f"h:{index}": n for index, n in delta.latency.to_dict().items()})
            for field, n in fields.items():
                pipe.hincrby(key, field, n)
            if delta.cost:
                pipe.hincrbyfloat(key, "cost", delta.cost)
            pipe.expire(key, KEEP_S[resolution])  # from this write: past the bucket's end plus retention
        await self._do(pipe.execute())

    async def window_stats(self, route: str, epoch: int, since: float, until: float) -> WindowStats:
        """One pipelined HGETALL per bucket of :func:`~proxy.windows.plan_buckets` (tens, not thousands)."""
        plan = plan_buckets(since, until, time.time())
        if not plan:
            return WindowStats()
        pipe = self._redis.pipeline(transaction=False)
        for resolution, start in plan:
            pipe.hgetall(self._key(route, "w", epoch, resolution, start))
        parts = [_parse_bucket(raw) for raw in await self._do(pipe.execute()) if raw]
        return WindowStats.total(parts)

    # --- budgets ------------------------------------------------------------------------------

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
        """Decide ``count`` calls in one round trip: the first ``granted`` may go, the rest not."""
        args = [
            round(1e6 / rate_per_s) if rate_per_s else 0,
            burst or 1,
            window_s or 0,
            limit if limit is not None else 0,
            repr(float(reserve)),
            count,
        ]
        keys = [self._key(route, "rate"), self._key(route, "cost")]
        granted, reason, left, spent = await self._do(self._acquire(keys=keys, args=args))
        reason = reason.decode() if isinstance(reason, bytes) else reason
        granted = int(granted)
        return Verdict(
            granted == count,
            Skip(reason) if reason else None,
            int(left) if int(left) >= 0 else None,
            float(spent),
            granted=granted,
        )

    async def budget_charge(self, route: str, amount: float, window_s: float | None) -> float:
        if not window_s:
            return 0.0
        result = await self._do(self._charge(keys=[self._key(route, "cost")], args=[window_s, repr(amount)]))
        return float(result)


def _parse_bucket(raw: dict[bytes, bytes]) -> WindowStats:
    stats = WindowStats()
    hist: dict[int, int] = {}
    for field, value in raw.items():
        name = field.decode()
        if name.startswith("h:"):
            hist[int(name[2:])] = int(value)
        elif name == "cost":
            stats.cost = float(value)
        elif name in COUNTS:
            stats.counts[name] = int(value)
    stats.latency.merge(type(stats.latency).from_dict(hist))
    return stats
