"""The admin API (SPEC §8) and `shadow-proxy stage`, against a running proxy."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy.cli import main
from tests.conftest import ADMIN_TOKEN, route_config

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def call(proxy, method: str, path: str, *, headers=AUTH, json=None, data=None):
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, proxy.admin_url + path, headers=headers, json=json, data=data) as r,
    ):
        return r.status, await r.json(content_type=None)


@pytest.fixture
async def proxy(upstreams, make_proxy):
    primary, model = await upstreams(), await upstreams()
    route = route_config("loan", primary.url, model.url, policy="fast-demo")
    return await make_proxy([route, route_config("other", primary.url, model.url, match={"path_prefix": "/x"})])


async def test_health_ready_and_metrics_need_no_token(proxy):
    assert (await call(proxy, "GET", "/healthz", headers={}))[0] == 200
    assert await call(proxy, "GET", "/readyz", headers={}) == (200, {"status": "ready"})
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url + "/metrics") as r:
        assert r.status == 200 and "shadow_proxy_stage" in await r.text()


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [({}, 401, "missing bearer token"), ({"Authorization": "Bearer nope"}, 401, "invalid token"),
     ({"Authorization": f"Basic {ADMIN_TOKEN}"}, 401, "missing bearer token")],
)  # fmt: skip
async def test_missing_and_wrong_tokens_are_refused(proxy, headers, status, error):
    assert await call(proxy, "GET", "/v1/routes", headers=headers) == (status, {"error": error})


async def test_without_a_configured_token_everything_but_health_is_refused(upstreams, make_proxy):
    primary = await upstreams()
    proxy = await make_proxy([route_config("r", primary.url, primary.url)], environ={})
    status, body = await call(proxy, "GET", "/v1/routes", headers={"Authorization": "Bearer "})
    assert status == 403 and "disabled" in body["error"]
    assert (await call(proxy, "GET", "/v1/routes", headers=AUTH))[0] == 403
    assert (await call(proxy, "GET", "/healthz", headers={}))[0] == 200


async def test_outcomes_token_may_only_post_outcomes(upstreams, make_proxy):
    primary = await upstreams()
    env = {"SHADOW_PROXY_ADMIN_TOKEN": ADMIN_TOKEN, "OUTCOMES": "only-outcomes"}
    proxy = await make_proxy([route_config("r", primary.url, primary.url)], environ=env,
                             admin={"outcomes_token_env": "OUTCOMES"})  # fmt: skip
    narrow = {"Authorization": "Bearer only-outcomes"}
    assert (await call(proxy, "POST", "/v1/outcomes", headers=narrow, json={"request_id": "a", "outcome": 1}))[0] == 200
    status, body = await call(proxy, "POST", "/v1/routes/r/hold", headers=narrow)
    assert status == 403 and body["error"] == "this token may only post outcomes"


async def test_routes_view_shows_stage_hold_pending_window_and_budget(proxy):
    status, body = await call(proxy, "GET", "/v1/routes")
    assert status == 200
    loan, other = body["routes"]
    assert (loan["name"], loan["stage"], loan["hold"], loan["pending"]) == ("loan", "shadow", False, None)
    assert loan["window"]["window_s"] == 10.0 and loan["window"]["samples"] == 0 and loan["policy"] is True
    assert "budget" in loan and other["policy"] is False


async def test_stage_set_by_hand_is_recorded_with_actor_and_reason(proxy):
    status, body = await call(proxy, "POST", "/v1/routes/loan/stage", json={"stage": "assisted", "reason": "pilot"})
    assert status == 200 and body["stage"] == "assisted" and body["changed"] is True
    assert proxy.core.routes.by_name["loan"].stage.value == "assisted"
    again = await call(proxy, "POST", "/v1/routes/loan/stage", json={"stage": "assisted"})
    assert again[1]["changed"] is False
    await proxy.settle()
    (record,) = proxy.records("transition")
    assert (record["event"], record["from"], record["to"], record["actor"], record["reason"]) == (
        "set", "shadow", "assisted", "admin", "pilot")  # fmt: skip


@pytest.mark.parametrize(
    ("path", "payload", "status", "error"),
    [
        ("/v1/routes/loan/stage", b"{nope", 400, "request body is not valid JSON"),
        ("/v1/routes/loan/stage", b'{"stage": "production"}', 400, "unknown stage 'production' (use shadow, assisted, autonomous)"),
        ("/v1/routes/loan/stage", b"", 400, "request body is empty (expected JSON)"),
        ("/v1/routes/loan/stage", b'["assisted"]', 400, "expected a JSON object"),
        ("/v1/routes/ghost/stage", b'{"stage": "shadow"}', 404, "no route named 'ghost'"),
        ("/v1/routes/loan/approve", b"", 409, "route 'loan' has no promotion pending approval"),
        ("/v1/nothing", b"", 404, "no admin endpoint POST /v1/nothing"),
    ],
)  # fmt: skip
async def test_bad_admin_requests_get_json_errors(proxy, path, payload, status, error):
    assert await call(proxy, "POST", path, data=payload) == (status, {"error": error})


async def test_hold_and_release_are_recorded_and_idempotent(proxy):
    assert (await call(proxy, "POST", "/v1/routes/loan/hold", json={"reason": "audit"}))[1]["hold"] is True
    assert (await call(proxy, "POST", "/v1/routes/loan/hold"))[1]["changed"] is False
    assert (await call(proxy, "POST", "/v1/routes/loan/release"))[1]["hold"] is False
    await proxy.settle()
    assert [r["event"] for r in proxy.records("transition")] == ["hold", "release"]


async def test_analysis_is_412_until_the_gate_passes(proxy):
    status, body = await call(proxy, "GET", "/v1/routes/loan/analysis")
    assert status == 412 and body["gate"] == "shadow_to_assisted" and body["pass"] is False
    names = [c["name"] for c in body["checks"]]
    assert names[:4] == ["min_samples", "min_dwell", "min_agreement_lower_bound", "max_error_rate"]
    assert (await call(proxy, "GET", "/v1/routes/other/analysis"))[0] == 404


async def test_outcomes_single_and_list_become_records(proxy):
    assert await call(proxy, "POST", "/v1/outcomes", json={"request_id": "r1", "outcome": "decline"}) == (
        200, {"accepted": 1})  # fmt: skip
    many = [{"request_id": f"r{i}", "outcome": {"default": i % 2 == 0}, "route": "loan"} for i in range(3)]
    assert (await call(proxy, "POST", "/v1/outcomes", json=many))[1] == {"accepted": 3}
    await proxy.settle()
    records = proxy.records("outcome")
    assert [(r["request_id"], r["outcome"]) for r in records] == [
        ("r1", "decline"),
        ("r0", {"default": True}),
        ("r1", {"default": False}),
        ("r2", {"default": True}),
    ]
    assert "route" not in records[0] and records[1]["route"] == "loan"


@pytest.mark.parametrize(
    ("payload", "error"),
    [({"outcome": 1}, "request_id must be a non-empty string (at most 256 characters)"),
     ({"request_id": "a"}, "outcome is missing"),
     ([{"request_id": "a", "outcome": 1}, {"request_id": "b"}], "outcome 1: outcome is missing"),
     ({"request_id": "a", "outcome": 1, "route": "ghost"}, "no route named 'ghost'"),
     ({"request_id": "a", "outcome": 1, "extra": 2}, "unknown field 'extra'"),
     (["x"], "outcome 0: expected an object with request_id and outcome")],
)  # fmt: skip
async def test_bad_outcomes_are_refused_whole(proxy, payload, error):
    assert await call(proxy, "POST", "/v1/outcomes", json=payload) == (400, {"error": error})
    await proxy.settle()
    assert proxy.records("outcome") == []


async def test_stage_command_drives_the_api(proxy, monkeypatch, capsys):
    monkeypatch.setenv("SHADOW_PROXY_ADMIN_TOKEN", ADMIN_TOKEN)
    admin = ["--admin", proxy.admin_url]

    async def run(*argv: str) -> int:
        return await asyncio.to_thread(main, ["stage", *argv, *admin])

    assert await run("set", "autonomous", "--route", "loan", "--reason", "go") == 0
    assert "loan: autonomous (changed, version 2)" in capsys.readouterr().out
    assert await run("hold", "--route", "loan") == 0
    assert await run("show", "--route", "loan") == 0
    out = capsys.readouterr().out
    assert "loan: autonomous (on hold)" in out and "rollback rules: passes" in out
    assert await run("approve", "--route", "loan") == 1
    assert "409 route 'loan' has no promotion pending approval" in capsys.readouterr().err
    monkeypatch.setenv("SHADOW_PROXY_ADMIN_TOKEN", "wrong")
    assert await run("show") == 1
    assert "401 invalid token (check SHADOW_PROXY_ADMIN_TOKEN)" in capsys.readouterr().err
