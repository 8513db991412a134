"""One contract, two adapters: the memory store and a real redis-server behave the same."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from proxy.stages import RouteState, Stage
from proxy.store import StoreError
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from proxy.windows import WindowStats, bucketize
from tests.conftest import dead_url


@pytest.fixture(params=["memory", "redis"])
async def store(request, redis_url):
    if request.param == "memory":
        yield MemoryStore()
        return
    store = RedisStore(redis_url, timeout_s=1.0, prefix=f"test-{uuid.uuid4().hex[:8]}")
    yield store
    await store.close()


def decision(agree=True, latency=10.0):
    return {"stage": "shadow", "agree": agree, "primary": {},
            "model": {"error": None, "skipped": None, "latency_ms": latency, "cost": 0.5}}  # fmt: skip


async def test_state_is_initialised_once_and_changed_only_by_compare_and_set(store):
    first = await store.init_route_state("r", RouteState(Stage.SHADOW, entered_at=1.0))
    again = await store.init_route_state("r", RouteState(Stage.AUTONOMOUS, entered_at=2.0))
    assert again == first and (await store.route_state("r")).stage is Stage.SHADOW
    moved = first.with_stage(Stage.ASSISTED, 3.0)
    assert await store.cas_route_state("r", first.version, moved)
    assert not await store.cas_route_state("r", first.version, first.with_stage(Stage.AUTONOMOUS, 4.0))
    assert await store.route_state("r") == moved
    assert await store.route_state("unknown") is None


async def test_window_statistics_sum_the_epoch_and_window(store):
    now = time.time()
    old = [("r", 1, now - 30, decision(agree=False)) for _ in range(5)]
    recent = [("r", 1, now - 2, decision(latency=float(i + 1))) for i in range(10)]
    other_epoch = [("r", 2, now - 1, decision()) for _ in range(7)]
    await store.add_stats(bucketize(old + recent + other_epoch))
    window = await store.window_stats("r", 1, now - 10, now)
    assert window.counts["requests"] == 10 and window.counts["agreed"] == 10
    assert window.cost == pytest.approx(5.0) and window.latency.count == 10
    assert window.p99_ms == pytest.approx(10.0, rel=0.02)
    everything = await store.window_stats("r", 1, now - 60, now)
    assert everything.samples == 15 and everything.counts["agreed"] == 10
    assert (await store.window_stats("r", 2, now - 60, now)).counts["requests"] == 7
    assert (await store.window_stats("r", 3, now - 60, now)).counts["requests"] == 0


async def test_long_windows_sum_hours_minutes_and_seconds_to_the_records_they_cover(store):
    now = time.time()
    offsets = [*range(0, 7200, 13), *range(0, 30, 1)]
    await store.add_stats(bucketize([("r", 1, now - offset - 0.25, decision()) for offset in offsets]))
    for window in (300, 900, 3000, 5400, 86400):
        low = int(now - window)
        # within the hour that 1 s buckets keep the edge is exact; beyond it, the whole minute of `since`
        first = low if window < 3600 else low // 60 * 60
        expected = sum(1 for offset in offsets if int(now - offset - 0.25) >= first)
        got = await store.window_stats("r", 1, now - window, now)
        assert got.counts["requests"] == expected, window


async def test_the_default_policy_windows_cost_redis_a_few_hundred_commands_not_thousands(redis_url):
    import redis.asyncio as aioredis

    store = RedisStore(redis_url, timeout_s=1.0, prefix=f"test-{uuid.uuid4().hex[:8]}")
    admin = aioredis.from_url(redis_url)

    async def hgetalls() -> int:
        return (await admin.info("commandstats")).get("cmdstat_hgetall", {}).get("calls", 0)

    try:
        before = await hgetalls()
        now = time.time()
        for window in (86400, 900, 300):
            await store.window_stats("r", 1, now - window, now)
        assert await hgetalls() - before <= 84 + 74 + 64  # was 1,440 + 900 + 300
    finally:
        await admin.aclose()
        await store.close()


async def test_memory_store_keeps_only_the_current_and_previous_epoch_of_a_route():
    """A route that changes stage often must not keep every old epoch's buckets for ever."""
    store = MemoryStore()
    now = time.time()
    for epoch in range(1, 51):
        await store.add_stats(bucketize([("r", epoch, now - 1, decision()), ("other", 1, now - 1, decision())]))
    counts = [(await store.window_stats("r", e, now - 60, now)).counts["requests"] for e in range(1, 51)]
    assert counts == [0] * 48 + [1, 1]
    await store.add_stats(bucketize([("r", 10, now - 1, decision())]))  # a straggler of a long-gone epoch
    assert (await store.window_stats("r", 10, now - 60, now)).counts["requests"] == 0
    assert (await store.window_stats("other", 1, now - 60, now)).counts["requests"] == 50  # other routes kept
    assert sorted(store._buckets["r"]) == [49, 50]  # what is kept: memory bounded by two epochs a route


async def test_memory_store_expires_buckets_past_their_retention():
    clock = [1_000_000.0]
    store = MemoryStore(clock=lambda: clock[0])
    await store.add_stats(bucketize([("r", 1, clock[0], decision())]))
    clock[0] += 2 * 3600  # the 1 s bucket is past its hour; a new one makes the store look
    await store.add_stats(bucketize([("r", 1, clock[0], decision())]))
    assert list(store._buckets["r"][1][1]) == [int(clock[0])]
    assert len(store._buckets["r"][1][60]) == 2 and len(store._buckets["r"][1][3600]) == 2


async def test_rate_budget_allows_the_burst_then_refuses_then_refills(store):
    outcomes = [await store.budget_acquire("r", 10.0, 3, None, None) for _ in range(4)]
    assert [v.allowed for v in outcomes] == [True, True, True, False]
    assert [v.calls_left for v in outcomes[:3]] == [2, 1, 0] and outcomes[3].reason.value == "rate"
    await asyncio.sleep(0.12)  # one interval (100 ms) refills one call
    assert (await store.budget_acquire("r", 10.0, 3, None, None)).allowed
    assert not (await store.budget_acquire("r", 10.0, 3, None, None)).allowed


async def test_a_burst_of_one_spaces_calls_by_the_interval(store):
    assert (await store.budget_acquire("r", 20.0, 1, None, None)).allowed
    assert not (await store.budget_acquire("r", 20.0, 1, None, None)).allowed
    await asyncio.sleep(0.06)
    assert (await store.budget_acquire("r", 20.0, 1, None, None)).allowed


async def test_cost_budget_refuses_once_spend_reaches_the_limit_exactly(store):
    window = 3600.0
    assert (await store.budget_acquire("r", None, None, 1.0, window)).allowed
    assert await store.budget_charge("r", 0.6, window) == pytest.approx(0.6)
    assert (await store.budget_acquire("r", None, None, 1.0, window)).allowed  # 0.6 < 1.0
    assert await store.budget_charge("r", 0.4, window) == pytest.approx(1.0)
    refused = await store.budget_acquire("r", None, None, 1.0, window)
    assert not refused.allowed and refused.reason.value == "cost" and refused.spent == pytest.approx(1.0)


async def test_allowed_calls_reserve_their_expected_cost_and_refunds_never_go_below_zero(store):
    verdicts = [await store.budget_acquire("r", None, None, 1.0, 3600.0, 0.4) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]  # 0, 0.4, 0.8 < 1.0; 1.2 is not
    assert [v.spent for v in verdicts] == pytest.approx([0.4, 0.8, 1.2, 1.2])
    assert await store.budget_charge("r", -0.4, 3600.0) == pytest.approx(0.8)
    assert (await store.budget_acquire("r", None, None, 1.0, 3600.0, 0.0)).allowed
    assert await store.budget_charge("r", -5.0, 3600.0) == 0


async def test_several_calls_are_decided_in_order_in_one_request(store):
    rate = await store.budget_acquire("r", 10.0, 3, None, None, 0.0, 5)
    assert (rate.granted, rate.allowed, rate.reason.value, rate.calls_left) == (3, False, "rate", 0)
    cost = await store.budget_acquire("c", None, None, 1.0, 3600.0, 0.4, 4)
    assert (cost.granted, cost.reason.value) == (3, "cost") and cost.spent == pytest.approx(1.2)
    everything = await store.budget_acquire("e", 100.0, 10, 10.0, 3600.0, 0.1, 4)
    assert (everything.granted, everything.allowed, everything.reason) == (4, True, None)


async def test_cost_budget_resumes_in_the_next_window(store):
    window = 1.0
    await store.budget_acquire("r", None, None, 0.5, window)
    await store.budget_charge("r", 0.5, window)
    assert not (await store.budget_acquire("r", None, None, 0.5, window)).allowed
    await asyncio.sleep(1.0 - time.time() % 1.0 + 0.05)  # into the next UTC-aligned second
    verdict = await store.budget_acquire("r", None, None, 0.5, window)
    assert verdict.allowed and verdict.spent == 0


async def test_cost_exhaustion_does_not_spend_rate_tokens(store):
    await store.budget_acquire("r", 1.0, 1, 0.1, 3600.0)
    await store.budget_charge("r", 0.1, 3600.0)
    assert (await store.budget_acquire("r", 1.0, 1, 0.1, 3600.0)).reason.value == "cost"


async def test_an_unreachable_redis_raises_store_error():
    store = RedisStore(dead_url().replace("http", "redis") + "/0", timeout_s=0.2)
    for call in (store.ping(), store.route_state("r"), store.budget_acquire("r", 1.0, 1, None, None)):
        with pytest.raises(StoreError, match="redis: "):
            await call
    await store.close()


def test_window_stats_parse_back_from_redis_hashes():
    from proxy.store.redis import _parse_bucket

    w = WindowStats()
    w.add_record(decision(latency=42.0))
    raw = {k.encode(): str(v).encode() for k, v in w.counts.items()}
    raw.update({f"h:{i}".encode(): str(n).encode() for i, n in w.latency.to_dict().items()})
    raw[b"cost"] = b"0.5"
    parsed = _parse_bucket(raw)
    assert parsed.counts == w.counts and parsed.cost == 0.5 and parsed.p99_ms == w.p99_ms
