"""Budgets: GCRA and cost arithmetic, pacing, and what happens when the store fails (SPEC §5)."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.budgets import BudgetGate, LocalBudget, Pacer, gcra, paced_rate, price, window_start
from proxy.config import Budget
from proxy.stages import Skip
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from tests.conftest import dead_url


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
)
def test_gcra_never_allows_more_than_burst_plus_elapsed_times_rate(rate, burst, gaps):
    interval, tat, now, allowed = 1.0 / rate, 0.0, 100.0, 0
    start = now
    for gap in gaps:
        now += gap
        ok, tat, _ = gcra(tat, now, interval, burst)
        allowed += ok
    assert allowed <= burst + (now - start) * rate + 1e-6


def test_gcra_allows_the_whole_burst_after_idling():
    tat = 0.0
    results = []
    for _ in range(5):
        ok, tat, left = gcra(tat, 50.0, 0.1, 4)
        results.append((ok, left))
    assert results == [(True, 3), (True, 2), (True, 1), (True, 0), (False, 0)]


def test_cost_windows_are_aligned_to_utc():
    noon = calendar.timegm((2026, 11, 22, 12, 30, 0))
    assert window_start(noon, 86400) == calendar.timegm((2026, 11, 22, 0, 0, 0))
    assert window_start(noon, 3600) == calendar.timegm((2026, 11, 22, 12, 0, 0))


def test_price_adds_units():
    assert price(0.0004, 0.002, 1500) == pytest.approx(0.0004 + 0.003)
    assert price(0.0004, 0.002, None) == pytest.approx(0.0004)


def test_local_budget_charges_and_resets_with_the_window():
    clock = Clock(7200.0)
    budget = LocalBudget(None, None, 1.0, 3600.0, clock)
    budget.charge(1.0)
    assert budget.acquire().reason is Skip.COST
    clock.now += 3600.0
    assert budget.acquire().allowed and budget.spent == 0


async def test_calls_in_flight_count_against_the_limit_and_settle_when_they_answer():
    budget = Budget.model_validate({"cost": {"per_request": 0.25, "limit": 1.0, "window": "1h"}})
    gate = BudgetGate("r", budget, MemoryStore(Clock()), clock=Clock())
    reservations = [await gate.acquire() for _ in range(5)]
    assert reservations == [(None, 0.25)] * 4 + [(Skip.COST, 0.0)]  # four in flight reach the limit
    await gate.settle(0.25, None)  # one never answered: refunded
    assert (await gate.acquire())[0] is None
    await gate.settle(0.25, 0.75)  # one answered dearer than expected
    assert gate.spent == 1.5 and gate.expected_cost == pytest.approx(0.8 * 0.25 + 0.2 * 0.75)


def test_pacing_keeps_the_configured_rate_while_the_budget_lasts():
    # spending 1/s with 10_000 left and 3600 s to go: no need to slow down
    assert paced_rate(1.0, 1.0, spend_per_s=1.0, remaining=10_000, seconds_left=3600) == 1.0


def test_pacing_lowers_the_rate_smoothly_toward_the_sustainable_rate():
    # spending 4/s at rate 1.0; 3600 left for 3600 s -> sustainable rate 0.25
    rates = [1.0]
    for _ in range(12):
        rates.append(paced_rate(1.0, rates[-1], spend_per_s=4.0 * rates[-1], remaining=3600, seconds_left=3600))
    assert rates == sorted(rates, reverse=True)  # monotone, no oscillation
    assert rates[1] == pytest.approx(0.625)  # half way in one step
    assert rates[-1] == pytest.approx(0.25, rel=0.01)


def test_pacing_never_goes_dark_before_the_limit_and_stops_at_it():
    assert paced_rate(0.5, 0.001, spend_per_s=100.0, remaining=0.01, seconds_left=80_000) >= 0.5 * 0.001
    assert paced_rate(0.5, 0.001, spend_per_s=100.0, remaining=0.0, seconds_left=80_000) == 0.5


async def test_pacer_spreads_the_spend_over_the_window():
    clock = Clock(calendar.timegm((2026, 11, 22, 0, 0, 0)))
    budget = Budget.model_validate({"cost": {"per_request": 1.0, "limit": 1000.0, "window": "1h"}})
    gate = BudgetGate("r", budget, MemoryStore(clock), clock=clock)
    pacer = Pacer(gate, 1.0, clock)
    pacer.update()
    for _ in range(30):  # traffic that would spend 3 per second at full sampling: 10800/h against 1000
        clock.now += 1.0
        gate.spent += 3.0 * pacer.rate
        pacer.update()
    assert 1000 / 3600 / 3.0 * 0.8 < pacer.rate < 1000 / 3600 / 3.0 * 1.6


# --- when the store fails --------------------------------------------------------------------


def gate_on_dead_redis(mode: str, clock: Clock) -> BudgetGate:
    budget = Budget.model_validate({"rate": "100/s", "burst": 8, "on_store_error": mode, "local_share": 0.25,
                                    "cost": {"per_request": 0.5, "limit": 10.0, "window": "1h"}})  # fmt: skip
    store = RedisStore(dead_url().replace("http", "redis") + "/0", timeout_s=0.2)
    return BudgetGate("r", budget, store, clock=clock)


async def test_closed_mode_refuses_every_call_while_the_store_fails():
    clock = Clock()
    gate = gate_on_dead_redis("closed", clock)
    assert [await gate.acquire() for _ in range(3)] == [(Skip.RATE, 0.0)] * 3
    assert gate.degraded


async def test_open_mode_stands_in_with_local_limits_at_the_local_share():
    clock = Clock()
    gate = gate_on_dead_redis("open", clock)
    outcomes = [(await gate.acquire())[0] for _ in range(4)]
    assert outcomes == [None, None, Skip.RATE, Skip.RATE]  # burst 8 x 0.25 = 2 at once
    clock.now += 1.0  # 100/s x 0.25 = 25 calls per second locally
    allowed = sum([(await gate.acquire())[0] is None for _ in range(40)])
    assert allowed == 2  # burst-limited: the bucket holds at most 2
    # each allowed call reserved 0.5 (per_request): 4 calls = 2.0; one more reaches the local 2.5
    clock.now += 10.0
    assert (await gate.acquire())[0] is None
    clock.now += 10.0
    assert (await gate.acquire())[0] is Skip.COST  # 2.5 = 10 x 0.25: the local share of the cost


async def test_a_failed_store_is_not_asked_again_for_a_second():
    clock = Clock()
    gate = gate_on_dead_redis("open", clock)
    await gate.acquire()
    assert gate._down_until == clock.now + 1.0


# --- one round trip for the calls of one tick ---------------------------------------------------


def evalsha_calls(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_concurrent_calls_share_one_store_round_trip_and_keep_their_order(redis_url):
    import asyncio
    import uuid

    budget = Budget.model_validate({"rate": "10/s", "burst": 5, "cost": {"per_request": 0.1, "limit": 100.0, "window": "1h"}})
    store = RedisStore(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}")
    gate = BudgetGate("r", budget, store)
    await gate.acquire()  # loads the script
    before = evalsha_calls(redis_url)
    outcomes = await asyncio.gather(*(gate.acquire() for _ in range(8)))
    assert evalsha_calls(redis_url) - before == 1
    assert [reason for reason, _ in outcomes] == [None] * 4 + [Skip.RATE] * 4  # 5 in the burst, 1 used
    assert [reserved for _, reserved in outcomes] == [0.1] * 4 + [0.0] * 4
    await store.close()


async def test_concurrent_corrections_are_charged_together(redis_url):
    import asyncio
    import uuid

    budget = Budget.model_validate({"cost": {"per_request": 0.1, "per_1k_units": 1.0, "limit": 100.0, "window": "1h"}})
    store = RedisStore(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}")
    gate = BudgetGate("r", budget, store)
    _, warm = await gate.acquire()
    await gate.settle(warm, 0.3)  # loads the charge script (a first EVALSHA fails with NOSCRIPT)
    reservations = await asyncio.gather(*(gate.acquire() for _ in range(6)))
    spent_before = gate.spent
    before = evalsha_calls(redis_url)
    await asyncio.gather(*(gate.settle(reserved, 0.3) for _, reserved in reservations))
    assert evalsha_calls(redis_url) - before == 1
    assert gate.spent == pytest.approx(spent_before + sum(0.3 - reserved for _, reserved in reservations))
    await store.close()


def test_an_abandoned_half_open_trial_lets_the_next_call_probe():
    from proxy.circuit import Circuit

    circuit = Circuit(failures=2, cooldown_s=5.0)
    circuit.record(False, 0.0)
    circuit.record(False, 0.0)
    assert not circuit.allow(1.0)  # open
    assert circuit.allow(6.0)  # the half-open trial...
    assert not circuit.allow(6.1)
    circuit.abandon()  # ...was refused by the budget: nobody probed
    assert circuit.allow(6.2)
    circuit.record(True, 6.3)
    assert circuit.allow(6.4) and circuit.allow(6.5)  # closed again
