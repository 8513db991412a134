"""Shadow stage: the model sees a copy, never touches the client's answer, and every request is recorded."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.verify import verify
from tests.conftest import dead_url, eventually, route_config

PRIMARY_BODY = b'{"decision": "approve", "score": 0.7}'


async def primary_handler(request: web.Request) -> web.Response:
    """Decides from the request: {"p": label} -> that label."""
    data = orjson.loads(await request.read() or b"{}")
    return web.json_response({"decision": data.get("p", "approve"), "score": 0.7})


async def model_handler(request: web.Request) -> web.Response:
    data = orjson.loads(await request.read() or b"{}")
    return web.json_response(
        {"decision": data.get("m", "approve"), "confidence": 0.93, "reasons": ["r"], "usage": {"total_tokens": 12}}
    )


async def fixed_primary(request: web.Request) -> web.Response:
    return web.Response(body=PRIMARY_BODY, content_type="application/json")


async def hung(request: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def failing(request: web.Request) -> web.Response:
    return web.json_response({"error": "boom"}, status=500)


async def garbage(request: web.Request) -> web.Response:
    return web.Response(body=b"<html>oops", content_type="application/json")


async def send(url: str, n: int, payload: dict | None = None) -> list[tuple[int, bytes]]:
    async with aiohttp.ClientSession() as s:
        out = []
        for _ in range(n):
            async with s.post(url + "/v1/decide", data=orjson.dumps(payload or {"region": "eu"})) as r:
                out.append((r.status, await r.read()))
        return out


@pytest.mark.parametrize(
    ("fault", "error"), [("hung", "timeout"), ("500", "error"), ("garbage", "invalid"), ("dead", "error")]
)
async def test_model_fault_leaves_every_client_response_correct(upstreams, make_proxy, fault, error):
    primary = await upstreams(fixed_primary)
    handlers = {"hung": hung, "500": failing, "garbage": garbage}
    model_url = dead_url() if fault == "dead" else (await upstreams(handlers[fault])).url
    proxy = await make_proxy([route_config("r", primary.url, model_url, model={"timeout": "100ms"})])
    replies = await send(proxy.url, 5)
    assert replies == [(200, PRIMARY_BODY)] * 5
    await proxy.settle()
    records = proxy.records()
    assert len(records) == 5
    for record in records:
        assert record["model"]["error"] == error
        assert record["model"]["decision"] is None
        assert record["primary"]["decision"] == "approve"
        assert record["agree"] is None
    if fault == "hung":
        assert all(r["model"]["latency_ms"] == 100 for r in records)  # a timeout counts as its timeout
    assert _metric(proxy, "shadow_proxy_model_calls_total", result=error) == 5


async def test_hung_model_does_not_delay_primary_response(upstreams, make_proxy):
    release = asyncio.Event()
    model_started = asyncio.Event()

    async def blocked(request: web.Request) -> web.Response:
        model_started.set()
        await release.wait()
        return web.json_response({"decision": "approve"})

    primary, model = await upstreams(fixed_primary), await upstreams(blocked)
    proxy = await make_proxy([route_config("r", primary.url, model.url, model={"timeout": "10s"})])
    replies = await send(proxy.url, 3)
    # The client has all three answers while the model still holds every copy.
    assert replies == [(200, PRIMARY_BODY)] * 3
    assert model_started.is_set() and not release.is_set()
    assert proxy.core.routes.by_name["r"].model.in_flight == 3
    release.set()
    await proxy.settle()
    assert [r["agree"] for r in proxy.records()] == [True] * 3


async def test_each_request_yields_one_record_with_the_right_agreement(upstreams, make_proxy):
    primary, model = await upstreams(primary_handler), await upstreams(model_handler)
    proxy = await make_proxy([route_config("r", primary.url, model.url)])
    cases = [
        ({"p": "approve", "m": "approve"}, True),
        ({"p": "approve", "m": "decline"}, False),
        ({"p": "review", "m": "review"}, True),
        ({"p": None, "m": "approve"}, None),  # primary has no decision
    ]
    ids = []
    async with aiohttp.ClientSession() as s:
        for payload, _ in cases:
            async with s.post(proxy.url + "/v1/decide", json=payload) as r:
                ids.append(r.headers["X-Request-Id"])
    await proxy.settle()
    records = {r["request"]["id"]: r for r in proxy.records()}
    assert len(records) == len(cases)
    for request_id, (payload, agree) in zip(ids, cases, strict=True):
        record = records[request_id]
        assert record["agree"] is agree
        assert record["model"]["decision"] == payload["m"]
        assert record["model"]["confidence"] == 0.93
        assert record["model"]["explanation"] == ["r"]
        assert record["model_version"] == "m-1" and record["stage"] == "shadow"
        assert record["served_by"] == "primary" and record["fallback"] is None
    assert _metric(proxy, "shadow_proxy_decisions_total", agree="true") == 2
    assert _metric(proxy, "shadow_proxy_decisions_total", agree="false") == 1
    assert _metric(proxy, "shadow_proxy_decisions_total", agree="null") == 1


async def test_overload_drops_are_counted_and_bounded(upstreams, make_proxy):
    release = asyncio.Event()
    calls = 0

    async def blocked(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await release.wait()
        return web.json_response({"decision": "approve"})

    primary, model = await upstreams(fixed_primary), await upstreams(blocked)
    route = route_config("r", primary.url, model.url, model={"timeout": "10s"}, mirror={"max_in_flight": 3})
    proxy = await make_proxy([route])
    replies = await send(proxy.url, 10)
    assert replies == [(200, PRIMARY_BODY)] * 10
    await eventually(lambda: calls == 3)
    assert _metric(proxy, "shadow_proxy_mirror_in_flight") == 3
    assert _metric(proxy, "shadow_proxy_model_calls_total", result="skipped_overload") == 7
    release.set()
    await proxy.settle()
    records = proxy.records()
    assert len(records) == 10
    assert sorted(str(r["model"]["skipped"]) for r in records) == ["None"] * 3 + ["overload"] * 7
    assert calls == 3


async def test_sample_rate_zero_sends_no_copies(upstreams, make_proxy):
    primary, model = await upstreams(fixed_primary), await upstreams(model_handler)
    proxy = await make_proxy([route_config("r", primary.url, model.url, mirror={"sample": 0.0})])
    await send(proxy.url, 4)
    await proxy.settle()
    assert model.seen == []
    records = proxy.records()
    assert [r["model"]["skipped"] for r in records] == ["sampled_out"] * 4
    assert all(r["model"]["sampled_at"] == 0 for r in records)


async def test_redacted_values_appear_nowhere_in_the_audit_folder(upstreams, make_proxy):
    async def echoing_primary(request: web.Request) -> web.Response:
        data = orjson.loads(await request.read())
        return web.json_response({"decision": "approve", "applicant": data["applicant"]})

    primary, model = await upstreams(echoing_primary), await upstreams(model_handler)
    route = route_config("r", primary.url, model.url, segment="body.applicant.ssn")
    proxy = await make_proxy(
        [route],
        audit={"include_bodies": True, "redact": ["body.applicant.ssn", "headers.authorization", "body.*.pin"]},
    )
    payload = {"applicant": {"id": "a-1", "ssn": "987-65-4320", "pin": "4242"}, "region": "eu"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(proxy.url + "/v1/decide", json=payload, headers={"Authorization": "Bearer sekrit-token"}) as r,
    ):
        assert (await r.json())["applicant"]["ssn"] == "987-65-4320"  # the client still gets it
    await proxy.stop()
    (record,) = proxy.records()
    assert record["request"]["body"]["applicant"] == {"id": "a-1", "ssn": "[REDACTED]", "pin": "[REDACTED]"}
    assert record["primary"]["body"]["applicant"]["ssn"] == "[REDACTED]"
    assert record["request"]["segment"] == "[REDACTED]"
    for path in proxy.audit_dir.iterdir():
        data = path.read_bytes()
        assert b"987-65-4320" not in data and b"4242" not in data and b"sekrit" not in data


async def test_bodies_are_digests_unless_included(upstreams, make_proxy):
    primary, model = await upstreams(fixed_primary), await upstreams(model_handler)
    proxy = await make_proxy([route_config("r", primary.url, model.url)])
    await send(proxy.url, 1, {"applicant": {"ssn": "111-22-3333"}})
    await proxy.stop()
    (record,) = proxy.records()
    assert "body" not in record["request"] and "body" not in record["primary"]
    assert len(record["request"]["sha256"]) == 64 and len(record["primary"]["sha256"]) == 64
    assert b"111-22-3333" not in b"".join(p.read_bytes() for p in proxy.audit_dir.iterdir())


async def test_clean_shutdown_finishes_in_flight_requests_and_loses_no_record(upstreams, make_proxy):
    release = asyncio.Event()
    arrived = 0

    async def slow_primary(request: web.Request) -> web.Response:
        nonlocal arrived
        arrived += 1
        await release.wait()
        return web.Response(body=PRIMARY_BODY)

    primary, model = await upstreams(slow_primary), await upstreams(model_handler)
    proxy = await make_proxy([route_config("r", primary.url, model.url)])
    clients = [asyncio.ensure_future(send(proxy.url, 1)) for _ in range(5)]  # noqa: TID251 - test-owned
    await eventually(lambda: arrived == 5)
    stopping = asyncio.ensure_future(proxy.stop())  # noqa: TID251 - test-owned
    await asyncio.sleep(0.05)
    release.set()
    assert [await c for c in clients] == [[(200, PRIMARY_BODY)]] * 5
    await stopping
    assert len(proxy.records()) == 5
    result = verify([proxy.audit_dir])
    assert result.ok, result.problems
    (writer,) = result.writers.values()
    assert writer.sealed and writer.records == 6  # five decisions and the shutdown seal


def _metric(proxy, name: str, **labels: str) -> float:
    """Read one sample from the proxy's own registry (what /metrics serves)."""
    total = 0.0
    for family in proxy.core.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_unreachable_upstream_at_start_is_one_warning_and_the_proxy_serves(upstreams, make_proxy):
    from structlog.testing import capture_logs

    primary = await upstreams(fixed_primary)
    model_url = dead_url()
    with capture_logs() as logs:
        proxy = await make_proxy([route_config("r", primary.url, model_url)])
    warnings = [e for e in logs if e["event"] == "upstream.unreachable"]
    assert [(w["url"], w["reason"]) for w in warnings] == [(model_url, "connection refused")]
    assert await send(proxy.url, 1) == [(200, PRIMARY_BODY)]
