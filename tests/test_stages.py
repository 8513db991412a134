"""Assisted and autonomous serving with real upstreams (SPEC §2)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import dead_url, route_config


def model_answer(decision="approve", confidence=0.93, status=200):
    async def handler(request: web.Request) -> web.Response:
        body = {
            "decision": decision,
            "confidence": confidence,
            "reasons": ["income ok", "é"],
            "usage": {"total_tokens": 7},
        }
        return web.json_response(body, status=status)

    return handler


async def legacy(request: web.Request) -> web.Response:
    """Follows a shown suggestion, else says "review" (so agreement tells whether it was shown)."""
    suggestion = request.headers.get("X-Model-Suggestion")
    decision = json.loads(suggestion)["decision"] if suggestion else "review"
    return web.json_response({"decision": decision, "from": "legacy"})


async def post(url: str, payload: dict | None = None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/decide", json=payload or {"region": "eu"}) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


# --- assisted ---------------------------------------------------------------------------------------


async def test_assisted_forwards_the_suggestion_to_the_primary(upstreams, make_proxy):
    primary, model = await upstreams(legacy), await upstreams(model_answer("approve"))
    proxy = await make_proxy([route_config("r", primary.url, model.url, stage="assisted")])
    status, headers, body = await post(proxy.url)
    assert status == 200 and body == {"decision": "approve", "from": "legacy"}
    assert headers["X-Served-By"] == "primary"
    suggestion = json.loads(primary.seen[0].header("X-Model-Suggestion"))
    assert suggestion == {"decision": "approve", "confidence": 0.93, "explanation": ["income ok", "é"],
                          "model_version": "m-1"}  # fmt: skip
    assert suggestion_header_is_ascii(primary.seen[0].header("X-Model-Suggestion"))
    assert model.seen[0].header("X-Shadow-Stage") == "assisted"
    await proxy.settle()
    (record,) = proxy.records()
    assert record["stage"] == "assisted" and record["agree"] is True
    assert record["model"]["suggestion_shown"] is True and record["model"]["suggestion_late"] is False


def suggestion_header_is_ascii(value: str) -> bool:
    return value.isascii() and "\n" not in value


async def test_a_late_model_is_not_waited_for_and_its_answer_is_still_recorded(upstreams, make_proxy):
    release = asyncio.Event()

    async def slow_model(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"decision": "approve", "confidence": 0.9})

    primary_seen = asyncio.Event()

    async def primary_handler(request: web.Request) -> web.Response:
        primary_seen.set()
        return await legacy(request)

    primary, model = await upstreams(primary_handler), await upstreams(slow_model)
    route = route_config("r", primary.url, model.url, stage="assisted", assisted={"max_wait_ms": 50},
                         model={"timeout": "5s"})  # fmt: skip
    proxy = await make_proxy([route])
    status, _, body = await post(proxy.url)
    # the client has the primary's answer, given without a suggestion, while the model still works
    assert status == 200 and body["decision"] == "review"
    assert primary.seen[0].header("X-Model-Suggestion") is None and not release.is_set()
    release.set()
    await proxy.settle()
    (record,) = proxy.records()
    assert record["model"]["suggestion_shown"] is False and record["model"]["suggestion_late"] is True
    assert record["model"]["decision"] == "approve" and record["agree"] is False


async def test_assisted_with_a_failing_model_calls_the_primary_without_suggestion(upstreams, make_proxy):
    primary, model = await upstreams(legacy), await upstreams(model_answer(status=500))
    proxy = await make_proxy([route_config("r", primary.url, model.url, stage="assisted")])
    status, _, body = await post(proxy.url)
    assert status == 200 and body["decision"] == "review"
    assert primary.seen[0].header("X-Model-Suggestion") is None
    await proxy.settle()
    (record,) = proxy.records()
    assert record["model"]["error"] == "error" and record["model"]["suggestion_shown"] is False
    assert record["model"]["suggestion_late"] is False


# --- autonomous -------------------------------------------------------------------------------------


def autonomous(primary_url, model_url, **extra):
    return route_config(
        "r", primary_url, model_url, stage="autonomous",
        autonomous={"min_confidence": 0.8, "primary_sample": extra.pop("primary_sample", 0.0)}, **extra,
    )  # fmt: skip


async def test_autonomous_serves_the_model_answer(upstreams, make_proxy):
    primary, model = await upstreams(legacy), await upstreams(model_answer("decline", 0.95))
    proxy = await make_proxy([autonomous(primary.url, model.url)])
    status, headers, body = await post(proxy.url)
    assert status == 200 and body["decision"] == "decline" and headers["X-Served-By"] == "model"
    assert primary.seen == []
    await proxy.settle()
    (record,) = proxy.records()
    assert record["served_by"] == "model" and record["fallback"] is None and record["agree"] is None


@pytest.mark.parametrize(
    ("model_kind", "reason"),
    [("hung", "timeout"), ("500", "error"), ("garbage", "invalid"), ("unsure", "low_confidence"),
     ("no-confidence", "invalid"), ("dead", "error")],
)  # fmt: skip
async def test_autonomous_falls_back_to_the_primary_for_each_reason(upstreams, make_proxy, model_kind, reason):
    async def hung(request):
        await asyncio.sleep(3600)

    async def garbage(request):
        return web.Response(body=b"<html>", content_type="application/json")

    async def no_confidence(request):
        return web.json_response({"decision": "approve"})

    handlers = {"hung": hung, "500": model_answer(status=500), "garbage": garbage,
                "unsure": model_answer("approve", 0.5), "no-confidence": no_confidence}  # fmt: skip
    primary = await upstreams(legacy)
    model_url = dead_url() if model_kind == "dead" else (await upstreams(handlers[model_kind])).url
    proxy = await make_proxy([autonomous(primary.url, model_url, model={"timeout": "100ms"})])
    status, headers, body = await post(proxy.url)
    assert status == 200 and body["from"] == "legacy" and headers["X-Served-By"] == "primary"
    assert len(primary.seen) == 1 and primary.seen[0].header("X-Shadow-Copy") is None
    await proxy.settle()
    (record,) = proxy.records()
    assert record["fallback"] == reason and record["served_by"] == "primary"
    assert record["primary"]["sampled"] is False
    assert _fallbacks(proxy, reason) == 1


async def test_overloaded_model_path_falls_back(upstreams, make_proxy):
    release = asyncio.Event()

    async def blocked(request):
        await release.wait()
        return web.json_response({"decision": "approve", "confidence": 0.99})

    primary, model = await upstreams(legacy), await upstreams(blocked)
    proxy = await make_proxy([autonomous(primary.url, model.url, model={"timeout": "5s"}, mirror={"max_in_flight": 1})])
    first = asyncio.ensure_future(post(proxy.url))  # noqa: TID251 - test-owned
    while not model.seen:
        await asyncio.sleep(0.01)
    status, headers, _ = await post(proxy.url)
    assert status == 200 and headers["X-Served-By"] == "primary"
    release.set()
    assert (await first)[1]["X-Served-By"] == "model"
    await proxy.settle()
    assert sorted(str(r["fallback"]) for r in proxy.records()) == ["None", "overload"]


async def test_primary_sample_sends_a_marked_copy_and_measures_agreement(upstreams, make_proxy):
    primary, model = await upstreams(legacy), await upstreams(model_answer("review", 0.95))
    proxy = await make_proxy([autonomous(primary.url, model.url, primary_sample=1.0)])
    _, headers, body = await post(proxy.url)
    assert headers["X-Served-By"] == "model" and body["decision"] == "review"
    await proxy.settle()
    assert len(primary.seen) == 1 and primary.seen[0].header("X-Shadow-Copy") == "1"
    (record,) = proxy.records()
    assert record["primary"]["sampled"] is True and record["agree"] is True


async def test_fallback_reuses_the_sampled_primary_call(upstreams, make_proxy):
    primary, model = await upstreams(legacy), await upstreams(model_answer("approve", 0.2))
    proxy = await make_proxy([autonomous(primary.url, model.url, primary_sample=1.0)])
    _, headers, body = await post(proxy.url)
    assert headers["X-Served-By"] == "primary" and body["from"] == "legacy"
    await proxy.settle()
    assert len(primary.seen) == 1  # the one call already made, never a second
    (record,) = proxy.records()
    assert record["fallback"] == "low_confidence" and record["primary"]["sampled"] is True


def _fallbacks(proxy, reason: str) -> float:
    for family in proxy.core.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "shadow_proxy_fallbacks_total" and sample.labels.get("reason") == reason:
                return sample.value
    return 0.0


async def test_suggestion_with_odd_characters_stays_one_header_line(upstreams, make_proxy):
    async def newline_model(request):
        return web.json_response({"decision": "ok\r\nX-Injected: 1", "confidence": 0.9})

    primary, model = await upstreams(legacy), await upstreams(newline_model)
    proxy = await make_proxy([route_config("r", primary.url, model.url, stage="assisted")])
    await post(proxy.url)
    seen = primary.seen[0]
    assert seen.header("X-Injected") is None
    assert orjson.loads(seen.header("X-Model-Suggestion"))["decision"] == "ok\r\nX-Injected: 1"


async def test_a_verbose_model_cannot_make_the_primary_refuse_the_request(upstreams, make_proxy):
    async def verbose(request):
        return web.json_response({"decision": "approve", "confidence": 0.9, "reasons": ["é" * 9000]})

    primary, model = await upstreams(legacy), await upstreams(verbose)
    proxy = await make_proxy([route_config("r", primary.url, model.url, stage="assisted")])
    status, _, body = await post(proxy.url)
    assert status == 200 and body["decision"] == "approve"  # the (aiohttp) primary accepted the header
    header = primary.seen[0].header("X-Model-Suggestion")
    assert len(header) <= 4096 and json.loads(header)["explanation"].endswith("…")
    await proxy.settle()
    (record,) = proxy.records()
    assert record["model"]["suggestion_shown"] is True and record["model"]["sampled_at"] == 1


def test_a_suggestion_whose_decision_cannot_fit_is_not_shown():
    from proxy.decisions import Extracted
    from proxy.handler import suggestion_header

    assert suggestion_header("m", Extracted("x" * 5000, 0.9, None, ["why"])) is None
    short = suggestion_header("m", Extracted("approve", 0.9, None, ["why"]))
    assert json.loads(short) == {"decision": "approve", "confidence": 0.9, "explanation": ["why"], "model_version": "m"}
