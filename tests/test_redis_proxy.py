"""Replicas sharing a real redis-server: budgets, stage, and Redis going away mid-run (SPEC §4, §5)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
import uuid

import aiohttp
import pytest
import yaml
from aiohttp import web

from proxy.stages import Stage
from proxy.verify import verify
from tests.conftest import ADMIN_TOKEN, RedisServer, eventually, free_port, read_records, route_config


def redis_store(url: str, **extra) -> dict:
    return {"url": url, "key_prefix": f"t-{uuid.uuid4().hex[:10]}", **extra}


async def primary(request: web.Request) -> web.Response:
    return web.json_response({"decision": "approve"})


class CountingModel:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response({"decision": "approve", "confidence": 0.9, "usage": {"total_tokens": 1000}})


async def send(url: str, n: int, *, every_s: float = 0.0) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.post(url + "/v1/decide", json={"region": "eu"}) as r:
                statuses.append(r.status)
            if every_s:
                await asyncio.sleep(every_s)
    return statuses


async def test_two_processes_share_one_rate_budget(tmp_path, upstreams, redis_url):
    model = CountingModel()
    p, m = await upstreams(primary), await upstreams(model)
    store = redis_store(redis_url)
    procs, urls = [], []
    for i in range(2):
        port, admin = free_port(), free_port()
        config = {
            "listen": {"host": "127.0.0.1", "port": port}, "admin": {"host": "127.0.0.1", "port": admin},
            "log": {"level": "warning"}, "store": store, "audit": {"sink": f"file://{tmp_path}/audit-{i}"},
            "routes": [route_config("r", p.url, m.url, budget={"rate": "10/s", "burst": 5})],
        }  # fmt: skip
        path = tmp_path / f"config-{i}.yaml"
        path.write_text(yaml.safe_dump(config))
        procs.append(await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy", "run", "-c", str(path)))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        await _wait_listening(urls)
        started = time.monotonic()
        statuses = await asyncio.gather(*(send(url, 60, every_s=0.02) for url in urls))
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            proc.terminate()
        await asyncio.gather(*(proc.wait() for proc in procs))
    assert all(status == 200 for batch in statuses for status in batch)
    # together: at most one burst plus the rate over the time the requests took (one call of slack)
    assert 10 <= model.calls <= 5 + 10 * elapsed + 1
    records = [r for i in range(2) for r in read_records(tmp_path / f"audit-{i}") if r["type"] == "decision"]
    assert len(records) == 120
    skipped = sum(r["model"]["skipped"] == "rate" for r in records)
    assert skipped == 120 - model.calls


async def _wait_listening(urls: list[str]) -> None:
    async with aiohttp.ClientSession() as s:
        for url in urls:
            for _ in range(200):
                try:
                    async with s.get(url + "/nothing"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)


async def test_cost_budget_stops_calls_at_the_limit_and_resumes_next_window(upstreams, make_proxy, redis_url):
    model = CountingModel()
    p, m = await upstreams(primary), await upstreams(model)
    # each answered call costs 0.25 (per request) + 1000 units x 0.25 per 1k = 0.5; limit 1.5 -> 3 calls
    budget = {"cost": {"per_request": 0.25, "per_1k_units": 0.25, "limit": 1.5, "window": "2s"}}
    # assisted: every request goes to the model (no shadow sampling for pacing to lower)
    route = route_config("r", p.url, m.url, budget=budget, stage="assisted")
    proxy = await make_proxy([route], store=redis_store(redis_url))
    await asyncio.sleep(2.0 - time.time() % 2.0 + 0.05)  # start at the beginning of a window
    for _ in range(6):  # one at a time, each model call answered before the next request
        await send(proxy.url, 1)
        await proxy.settle()
    assert model.calls == 3
    records = proxy.records()
    assert [r["model"]["skipped"] for r in records] == [None] * 3 + ["cost"] * 3
    assert [r["model"]["cost"] for r in records[:3]] == [0.5] * 3
    assert proxy.core.routes.by_name["r"].budget_view()["cost"] == 0
    await asyncio.sleep(2.0 - time.time() % 2.0 + 0.05)  # the next window
    await send(proxy.url, 1)
    await proxy.settle()
    assert model.calls == 4


async def test_stage_set_through_one_replicas_admin_is_in_force_on_the_other(upstreams, make_proxy, redis_url):
    p, m = await upstreams(primary), await upstreams(CountingModel())
    store = redis_store(redis_url)
    first = await make_proxy([route_config("r", p.url, m.url)], store=store)
    second = await make_proxy([route_config("r", p.url, m.url)], store=store)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as s, s.post(
        first.admin_url + "/v1/routes/r/stage", json={"stage": "assisted", "reason": "pilot"}
    ) as r:
        assert r.status == 200
    # no evaluation loop runs for seconds here: pub/sub brings the change
    await eventually(lambda: second.core.routes.by_name["r"].stage is Stage.ASSISTED, timeout_s=3)
    async with aiohttp.ClientSession() as s, s.get(second.admin_url + "/v1/routes/r", headers=headers) as r:
        assert (await r.json())["stage"] == "assisted"


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(shutil.which("redis-server"), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_redis_outage_loses_no_request_and_no_record(upstreams, make_proxy, private_redis, mode):
    model = CountingModel()
    p, m = await upstreams(primary), await upstreams(model)
    budget = {"rate": "1000/s", "burst": 100, "on_store_error": mode, "local_share": 0.5}
    store = redis_store(private_redis.url, timeout="200ms")
    proxy = await make_proxy([route_config("r", p.url, m.url, budget=budget)], store=store)
    sent: list[int] = []
    sent += await send(proxy.url, 20)
    private_redis.stop()  # Redis goes away mid-run
    sent += await send(proxy.url, 20)
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url + "/readyz") as r:
        assert r.status == 503 and (await r.json())["status"] == "store unreachable"
    calls_during_outage = model.calls
    private_redis.start()  # ... and comes back on the same port
    await asyncio.sleep(1.2)  # past the budget's store retry delay
    sent += await send(proxy.url, 20)
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url + "/readyz") as r:
        assert r.status == 200
    await proxy.stop()
    assert sent == [200] * 60
    records = proxy.records()
    assert len(records) == 60 and len({r["request"]["id"] for r in records}) == 60
    assert verify([proxy.audit_dir]).ok
    outage = records[20:40]
    if mode == "closed":  # treated as exhausted: no model call while the store is down
        assert all(r["model"]["skipped"] == "rate" for r in outage)
    else:  # local limits stand in: calls continue within the local share
        assert sum(r["model"]["skipped"] is None for r in outage) == 20
    assert calls_during_outage >= 20
    assert all(r["model"]["skipped"] is None for r in records[40:])
    assert proxy.core.routes.by_name["r"].stage is Stage.SHADOW  # stage stays as last known


async def test_workers_refuse_a_memory_store(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"routes": []}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "run", "-c", str(path), "--workers", "2", stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip() == (
        "shadow-proxy: --workers 2 needs a shared store: set store.url to redis://... "
        "(with memory:// each worker would keep its own budgets and stage)"
    )
