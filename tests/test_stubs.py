"""The demo/load-test upstreams, exercised over real HTTP on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.stubs import (
    DECISIONS,
    RunningStubs,
    StubSettings,
    add_arguments,
    parse_latency,
    rule_decision,
    run,
    settings_from_args,
    start_stubs,
    synthetic_request,
)

# rule: ratio <= 0.25 approve, <= 0.5 review, else decline
APPROVE = {
    "applicant": {"id": "a-1", "income": 100000, "ssn": "900-11-2222"},
    "amount": 20000,
    "region": "eu",
}
REVIEW = {"applicant": {"id": "a-2", "income": 100000, "ssn": "900-11-3333"}, "amount": 40000, "region": "us"}
DECLINE = {
    "applicant": {"id": "a-3", "income": 20000, "ssn": "900-11-4444"},
    "amount": 15000,
    "region": "apac",
}


@contextlib.asynccontextmanager
async def running(
    legacy: StubSettings | None = None, model: StubSettings | None = None
) -> AsyncIterator[tuple[RunningStubs, aiohttp.ClientSession]]:
    stubs = await start_stubs(legacy or StubSettings(seed=1), model or StubSettings(seed=2))
    try:
        async with aiohttp.ClientSession() as session:
            yield stubs, session
    finally:
        await stubs.close()


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Any]:
    async with session.post(url + "/v1/decide", data=orjson.dumps(body), headers=headers) as resp:
        raw = await resp.read()
        return resp.status, raw, resp.headers


def decision_of(body: dict[str, Any]) -> str:
    return rule_decision(body["amount"], body["applicant"]["income"])[0]


# --------------------------------------------------------------------------------------------------
# The legacy stub


async def test_legacy_decision_is_a_deterministic_rule_of_the_body() -> None:
    async with running(StubSettings(seed=None)) as (stubs, session):
        for body, expected, score in (
            (APPROVE, "approve", 0.5556),
            (REVIEW, "review", 0.3846),
            (DECLINE, "decline", 0.25),
        ):
            answers = set()
            for _ in range(5):
                status, raw, headers = await post(session, stubs.legacy_url, body)
                assert status == 200
                assert headers["X-Stub"] == "legacy"
                assert headers["Content-Type"] == "application/json"
                answers.add(raw)
            assert len(answers) == 1
            assert orjson.loads(answers.pop()) == {"decision": expected, "score": score, "request_id": None}
        # the path does not matter
        async with session.post(stubs.legacy_url + "/any/where?x=1", json=DECLINE) as resp:
            assert (await resp.json())["decision"] == "decline"
        stats = stubs.legacy_stats.as_dict()
        assert stats["requests"] == 16
        assert stats["decisions"] == {"approve": 5, "review": 5, "decline": 6}


def test_rule_edges() -> None:
    assert rule_decision(25, 100) == ("approve", 0.5)
    assert rule_decision(25.01, 100)[0] == "review"
    assert rule_decision(50, 100)[0] == "review"
    assert rule_decision(50.01, 100)[0] == "decline"
    assert rule_decision(1000, 0) == ("decline", 0.0)


async def test_request_id_echoed_only_when_well_formed() -> None:
    async with running() as (stubs, session):
        for rid, echoed in (
            ("01J9ZKQ2V6-abc_1.2:3", "01J9ZKQ2V6-abc_1.2:3"),
            ("<script>alert(1)</script>", None),
            ("x" * 129, None),
            ("a b", None),
        ):
            for url in (stubs.legacy_url, stubs.model_url):
                _, raw, _ = await post(session, url, APPROVE, headers={"X-Request-Id": rid})
                assert orjson.loads(raw)["request_id"] == echoed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"<xml/>", "body is not JSON"),
        (b"", "body is not JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"amount": 100, "region": "eu"}', "applicant must be an object"),
        (b'{"applicant": {"income": "52000", "ssn": "900-99-9999"}, "amount": 100}', "applicant.income"),
        (b'{"applicant": {"income": true}, "amount": 100}', "applicant.income"),
        (b'{"applicant": {"income": -1}, "amount": 100}', "applicant.income"),
        (b'{"applicant": {"income": 1000, "ssn": "900-99-9999"}, "amount": 0}', "amount must be"),
        (b'{"applicant": {"income": 1000}, "amount": -5}', "amount must be"),
        (b'{"applicant": {"income": 1000}, "amount": 10, "region": 7}', "region must be a string"),
    ],
)
async def test_bad_bodies_answer_400_without_quoting_them(raw: bytes, message: str) -> None:
    async with running() as (stubs, session):
        for url, stats in ((stubs.legacy_url, stubs.legacy_stats), (stubs.model_url, stubs.model_stats)):
            async with session.post(url + "/v1/decide", data=raw) as resp:
                assert resp.status == 400
                assert resp.headers["Content-Type"] == "application/json"
                body = await resp.read()
            error = orjson.loads(body)["error"]
            assert message in error
            assert b"900-99-9999" not in body and b"52000" not in body
            assert stats.bad_requests == 1


async def test_health_methods_and_control_paths() -> None:
    async with running() as (stubs, session):
        for url, role in ((stubs.legacy_url, "legacy"), (stubs.model_url, "model")):
            for path in ("/", "/healthz", "/v1/decide"):
                async with session.get(url + path) as resp:
                    assert resp.status == 200
                    assert resp.headers["X-Stub"] == role
                    assert await resp.json() == {"ok": True}
            async with session.put(url + "/v1/decide", data=b"{}") as resp:
                assert resp.status == 405
                assert "error" in await resp.json()
            async with session.get(url + "/_stub/nope") as resp:
                assert resp.status == 404
            async with session.put(url + "/_stub/config", data=b"{}") as resp:
                assert resp.status == 405
        assert stubs.legacy_stats.requests == 0  # health and control calls are not decision requests


# --------------------------------------------------------------------------------------------------
# The model stub


async def test_model_disagreement_rate_close_to_configured() -> None:
    model = StubSettings(disagree_rate=0.2, seed=42, model_version="credit-v9")
    rng = random.Random(7)
    agree_conf: list[float] = []
    disagree_conf: list[float] = []
    async with running(model=model) as (stubs, session):
        for _ in range(1000):
            body = synthetic_request(rng, ["eu", "us", "apac"])
            status, raw, headers = await post(session, stubs.model_url, body)
            assert status == 200 and headers["X-Stub"] == "model"
            answer = orjson.loads(raw)
            assert answer["decision"] in DECISIONS
            assert answer["model_version"] == "credit-v9"
            assert answer["reasons"] and all(isinstance(r, str) and len(r) < 60 for r in answer["reasons"])
            assert isinstance(answer["usage"]["total_tokens"], int) and answer["usage"]["total_tokens"] > 0
            (agree_conf if answer["decision"] == decision_of(body) else disagree_conf).append(answer["confidence"])
        assert stubs.model_stats.disagreements == len(disagree_conf)
        assert stubs.model_stats.requests == 1000
    rate = len(disagree_conf) / 1000
    assert abs(rate - 0.2) < 0.035, rate
    assert all(0.85 <= c <= 0.99 for c in agree_conf)
    assert all(0.55 <= c <= 0.9 for c in disagree_conf)
    assert sum(disagree_conf) / len(disagree_conf) < sum(agree_conf) / len(agree_conf) - 0.1


async def test_model_is_reproducible_with_a_seed() -> None:
    bodies = [synthetic_request(random.Random(i)) for i in range(40)]
    runs = []
    for _ in range(2):
        async with running(model=StubSettings(disagree_rate=0.5, seed=3)) as (stubs, session):
            runs.append([(await post(session, stubs.model_url, b))[1] for b in bodies])
    assert runs[0] == runs[1]


async def test_segment_override_changes_one_segment_only() -> None:
    model = StubSettings(disagree_rate=0.0, segment_disagree={"apac": 0.5}, seed=5)
    rng = random.Random(11)
    disagreements = {"eu": 0, "apac": 0}
    async with running(model=model) as (stubs, session):
        for region in ["eu", "apac"] * 300:
            body = synthetic_request(rng, [region])
            _, raw, _ = await post(session, stubs.model_url, body)
            disagreements[region] += orjson.loads(raw)["decision"] != decision_of(body)
    assert disagreements["eu"] == 0
    assert abs(disagreements["apac"] / 300 - 0.5) < 0.09, disagreements


async def test_error_and_garbage_rates() -> None:
    model = StubSettings(error_rate=0.2, garbage_rate=0.1, seed=9)
    rng = random.Random(1)
    statuses = {"ok": 0, "error": 0, "garbage": 0}
    async with running(model=model) as (stubs, session):
        for _ in range(600):
            status, raw, _ = await post(session, stubs.model_url, synthetic_request(rng))
            if status == 500:
                assert orjson.loads(raw) == {"error": "injected failure"}
                statuses["error"] += 1
            elif raw == b"<html>oops":
                assert status == 200
                with pytest.raises(orjson.JSONDecodeError):
                    orjson.loads(raw)
                statuses["garbage"] += 1
            else:
                assert status == 200 and "decision" in orjson.loads(raw)
                statuses["ok"] += 1
        stats = stubs.model_stats
        assert (stats.errors, stats.garbage) == (statuses["error"], statuses["garbage"])
        assert sum(stats.decisions.values()) == statuses["ok"]
    assert abs(statuses["error"] / 600 - 0.2) < 0.05, statuses
    assert abs(statuses["garbage"] / 600 - 0.1) < 0.04, statuses


async def test_hang_is_released_when_the_stubs_close() -> None:
    stubs = await start_stubs(StubSettings(hang_rate=1.0), StubSettings(hang_rate=1.0))
    outcomes: list[object] = []

    async def hanging_call(session: aiohttp.ClientSession, url: str) -> None:
        try:
            async with session.post(url + "/v1/decide", json=APPROVE) as resp:
                outcomes.append(resp.status)
        except aiohttp.ClientError as exc:
            outcomes.append(exc)

    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
        tg.create_task(hanging_call(session, stubs.legacy_url))
        tg.create_task(hanging_call(session, stubs.model_url))
        deadline = time.monotonic() + 2
        while stubs.legacy_stats.hangs + stubs.model_stats.hangs < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert outcomes == []  # still hanging
        started = time.monotonic()
        await stubs.close()
        assert time.monotonic() - started < 1.0
    assert len(outcomes) == 2
    assert all(o == 503 or isinstance(o, aiohttp.ClientError) for o in outcomes), outcomes
    await stubs.close()  # idempotent


async def test_client_timeout_on_a_hang_then_the_stub_still_serves() -> None:
    async with running(model=StubSettings(seed=1)) as (stubs, session):
        stubs.model_settings.hang_rate = 1.0
        with pytest.raises(asyncio.TimeoutError):
            await session.post(stubs.model_url + "/v1/decide", json=APPROVE, timeout=aiohttp.ClientTimeout(total=0.1))
        stubs.model_settings.hang_rate = 0.0
        status, _, _ = await post(session, stubs.model_url, APPROVE)
        assert status == 200


# --------------------------------------------------------------------------------------------------
# Latency


async def test_latency_is_applied_without_blocking() -> None:
    async with running(StubSettings(latency="80ms"), StubSettings(latency="uniform:1ms:5ms", seed=1)) as (
        stubs,
        session,
    ):
        started = time.monotonic()
        results = await asyncio.gather(*(post(session, stubs.legacy_url, APPROVE) for _ in range(20)))
        elapsed = time.monotonic() - started
        assert all(r[0] == 200 for r in results)
        assert 0.075 <= elapsed < 0.5  # 20 concurrent 80 ms sleeps overlap: the loop is not blocked
        started = time.monotonic()
        await post(session, stubs.model_url, APPROVE)
        assert time.monotonic() - started < 0.2


def test_latency_distributions_sample_within_their_spec() -> None:
    rng = random.Random(0)
    assert parse_latency("0").sample(rng) == 0.0
    assert parse_latency("5ms").sample(rng) == pytest.approx(0.005)
    uniform = [parse_latency("uniform:2ms:10ms").sample(rng) for _ in range(2000)]
    assert min(uniform) >= 0.002 and max(uniform) <= 0.010
    lognormal = sorted(parse_latency("lognormal:20ms:0.5").sample(rng) for _ in range(4001))
    assert lognormal[2000] == pytest.approx(0.020, rel=0.08)  # the median
    assert lognormal[0] > 0
    assert parse_latency(" uniform : 1s : 2s ").spec == "uniform : 1s : 2s"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "not a latency spec"),
        ("5", "not a duration"),
        ("fast", "not a duration"),
        ("-5ms", "not a duration"),
        ("uniform:3ms", "takes exactly two values"),
        ("uniform:10ms:2ms", "above high"),
        ("uniform:1ms:x", "not a duration"),
        ("lognormal:20ms", "takes exactly two values"),
        ("lognormal:0ms:0.5", "median must be above 0"),
        ("lognormal:20ms:-1", "sigma"),
        ("lognormal:20ms:nan", "sigma"),
        ("gamma:1ms:2ms", "not a latency spec"),
        (5, "not a latency spec"),
        (None, "not a latency spec"),
    ],
)
def test_latency_parse_errors(spec: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        parse_latency(spec)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# Settings, live control and stats


def test_settings_validate_every_assignment() -> None:
    settings = StubSettings()
    assert settings.latency == "0" and settings.accept_rate == 0.9
    with pytest.raises(ValueError, match="error_rate"):
        settings.error_rate = 1.5
    with pytest.raises(ValueError, match="disagree_rate"):
        settings.disagree_rate = True
    with pytest.raises(ValueError, match="latency"):
        settings.latency = "soon"
    with pytest.raises(ValueError, match="segment_disagree"):
        settings.segment_disagree = {"apac": 2}
    with pytest.raises(ValueError, match="at most 1"):
        StubSettings(error_rate=0.6, hang_rate=0.6)
    with pytest.raises(ValueError, match="unknown setting"):
        settings.update({"disagree": 0.1})
    with pytest.raises(ValueError, match="at most 1"):
        settings.update({"error_rate": 0.5, "garbage_rate": 0.7})
    assert settings == StubSettings()  # failed updates change nothing
    settings.latency = "uniform:1ms:2ms"
    assert settings.latency_dist.kind == "uniform"


async def test_stub_config_changes_behaviour_live_and_validates() -> None:
    model = StubSettings(disagree_rate=0.0, seed=4)
    async with running(model=model) as (stubs, session):
        config_url = stubs.model_url + "/_stub/config"
        assert orjson.loads((await post(session, stubs.model_url, APPROVE))[1])["decision"] == "approve"

        async with session.post(config_url, json={"disagree_rate": 1.0, "latency": "1ms"}) as resp:
            assert resp.status == 200
            current = await resp.json()
        assert current["disagree_rate"] == 1.0 and current["latency"] == "1ms"
        assert stubs.model_settings is model and model.disagree_rate == 1.0
        for _ in range(10):
            assert orjson.loads((await post(session, stubs.model_url, APPROVE))[1])["decision"] != "approve"

        before = model.as_dict()
        for bad, fragment in (
            ({"disagree": 0.1}, "unknown setting(s): disagree"),
            ({"disagree_rate": 1.5}, "disagree_rate"),
            ({"disagree_rate": "0.1"}, "disagree_rate"),
            ({"latency": "lognormal:abc"}, "latency"),
            ({"segment_disagree": ["apac"]}, "segment_disagree"),
            ({"error_rate": 0.5, "garbage_rate": 0.7}, "at most 1"),
            ({"disagree_rate": 0.1, "hang_seconds": -1}, "hang_seconds"),
            ([1], "JSON object"),
        ):
            async with session.post(config_url, json=bad) as resp:
                assert resp.status == 400, bad
                assert fragment in (await resp.json())["error"]
        async with session.post(config_url, data=b"not json") as resp:
            assert resp.status == 400
        assert model.as_dict() == before  # all or nothing

        async with session.get(config_url) as resp:
            assert await resp.json() == before

        # the in-process settings object is just as live
        stubs.legacy_settings.error_rate = 1.0
        assert (await post(session, stubs.legacy_url, APPROVE))[0] == 500


async def test_stub_config_seed_reseeds_and_stats_reset() -> None:
    async with running(model=StubSettings(disagree_rate=0.5)) as (stubs, session):
        config_url = stubs.model_url + "/_stub/config"
        runs = []
        for _ in range(2):
            async with session.post(config_url, json={"seed": 123}) as resp:
                assert resp.status == 200
            runs.append([(await post(session, stubs.model_url, APPROVE))[1] for _ in range(20)])
        assert runs[0] == runs[1]

        async with session.get(stubs.model_url + "/_stub/stats") as resp:
            stats = await resp.json()
        assert stats["requests"] == 40
        assert sum(stats["decisions"].values()) == 40
        assert stats["disagreements"] == stats["decisions"]["review"] + stats["decisions"]["decline"]
        async with session.delete(stubs.model_url + "/_stub/stats") as resp:
            assert (await resp.json())["requests"] == 0
        assert stubs.model_stats.requests == 0


# --------------------------------------------------------------------------------------------------
# Assisted stage: the legacy stub and the model's suggestion


def suggestion(decision: object) -> dict[str, str]:
    return {
        "X-Model-Suggestion": json.dumps(
            {"decision": decision, "confidence": 0.91, "explanation": ["x"], "model_version": "credit-v7"}
        )
    }


async def test_legacy_follows_suggestions_at_accept_rate() -> None:
    async with running(StubSettings(accept_rate=1.0, seed=8)) as (stubs, session):
        status, raw, headers = await post(session, stubs.legacy_url, APPROVE, suggestion("decline"))
        assert status == 200 and orjson.loads(raw)["decision"] == "decline"
        assert headers["X-Stub-Suggestion"] == "accepted"

        stubs.legacy_settings.accept_rate = 0.0
        _, raw, headers = await post(session, stubs.legacy_url, APPROVE, suggestion("decline"))
        assert orjson.loads(raw)["decision"] == "approve"
        assert headers["X-Stub-Suggestion"] == "rejected"

        for bad in ({"X-Model-Suggestion": "not json"}, suggestion("maybe"), suggestion(["decline"])):
            _, raw, headers = await post(session, stubs.legacy_url, APPROVE, bad)
            assert orjson.loads(raw)["decision"] == "approve"
            assert headers["X-Stub-Suggestion"] == "invalid"

        _, _, headers = await post(session, stubs.legacy_url, APPROVE)
        assert "X-Stub-Suggestion" not in headers

        stubs.legacy_settings.accept_rate = 0.5
        followed = 0
        for _ in range(400):
            _, raw, _ = await post(session, stubs.legacy_url, DECLINE, suggestion("approve"))
            followed += orjson.loads(raw)["decision"] == "approve"
        assert abs(followed / 400 - 0.5) < 0.08, followed

        stats = stubs.legacy_stats
        assert stats.suggestions_seen == 1 + 1 + 3 + 400
        assert stats.suggestions_accepted == 1 + followed
        assert stats.suggestions_rejected == 1 + 400 - followed
        assert stats.suggestions_invalid == 3
        assert stats.requests == 406


# --------------------------------------------------------------------------------------------------
# Synthetic traffic


def test_synthetic_requests_are_realistic_and_reproducible() -> None:
    bodies = [synthetic_request(random.Random(5), ["eu", "apac"]) for _ in range(2)]
    assert bodies[0] == bodies[1]
    rng = random.Random(99)
    bodies = [synthetic_request(rng, ("eu", "us", "apac")) for _ in range(1000)]
    for body in bodies[:50]:
        assert set(body) == {"applicant", "amount", "region"}
        assert set(body["applicant"]) == {"id", "income", "ssn"}
        assert isinstance(body["amount"], int) and body["amount"] > 0
        assert isinstance(body["applicant"]["income"], int) and body["applicant"]["income"] > 0
        assert body["applicant"]["ssn"].startswith("9") and len(body["applicant"]["ssn"]) == 11
    counts = {d: sum(decision_of(b) == d for b in bodies) for d in DECISIONS}
    assert all(n > 80 for n in counts.values()), counts
    assert counts["approve"] > counts["decline"]
    assert {b["region"] for b in bodies} == {"eu", "us", "apac"}
    for bad in ([], "eu"):
        with pytest.raises(ValueError, match="segments"):
            synthetic_request(rng, bad)


# --------------------------------------------------------------------------------------------------
# Command line


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_settings_from_flags() -> None:
    args = parse([])
    assert (args.host, args.legacy_port, args.model_port) == ("127.0.0.1", "9001", "9002")
    legacy, model, segments = settings_from_args(args)
    assert segments == ("eu", "us", "apac")
    assert legacy.accept_rate == 0.9 and legacy.seed is None and model.disagree_rate == 0.05

    args = parse(
        [
            "--legacy-latency", "5ms", "--model-latency", "lognormal:20ms:0.5", "--error-rate", "0.01",
            "--model-error-rate", "0.02", "--garbage-rate", "0.03", "--hang-rate", "0.04",
            "--disagree-rate", "0.1", "--segment-disagree", "apac=0.3", "--segment-disagree", "eu=0.2,us=0",
            "--segments", "eu,us,apac", "--accept-rate", "0.7", "--seed", "12", "--model-version", "v8",
        ]
    )  # fmt: skip
    legacy, model, _ = settings_from_args(args)
    assert (legacy.latency, legacy.error_rate, legacy.accept_rate, legacy.seed) == ("5ms", 0.01, 0.7, 12)
    assert (model.latency, model.error_rate, model.garbage_rate, model.hang_rate) == (
        "lognormal:20ms:0.5", 0.02, 0.03, 0.04
    )  # fmt: skip
    assert model.segment_disagree == {"apac": 0.3, "eu": 0.2, "us": 0.0}
    assert (model.disagree_rate, model.seed, model.model_version) == (0.1, 13, "v8")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--legacy-latency", "fast"], "--legacy-latency"),
        (["--model-latency", "uniform:9ms:1ms"], "--model-latency"),
        (["--error-rate", "1.5"], "--error-rate"),
        (["--disagree-rate", "lots"], "--disagree-rate"),
        (["--segment-disagree", "apac"], "SEGMENT=RATE"),
        (["--segment-disagree", "apac=2"], "--segment-disagree apac"),
        (["--segments", "eu,us", "--segment-disagree", "apca=0.3"], "not in --segments"),
        (["--segments", " , "], "--segments"),
        (["--model-error-rate", "0.6", "--hang-rate", "0.6"], "at most 1"),
        (["--legacy-port", "http"], "--legacy-port"),
        (["--model-port", "70000"], "--model-port"),
        (["--legacy-port", "9005", "--model-port", "9005"], "both 9005"),
        (["--seed", "x"], "--seed"),
    ],
)
def test_run_rejects_bad_flags_with_one_line(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse(argv)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("shadow-proxy stubs: ")
    assert fragment in err


async def test_start_stubs_reports_a_busy_port_and_leaves_nothing_running() -> None:
    async with running() as (stubs, _):
        busy = int(stubs.legacy_url.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            await start_stubs(StubSettings(), StubSettings(), model_port=busy)


def test_run_serves_until_sigterm() -> None:
    code = (
        "import argparse, sys\n"
        "from proxy import stubs\n"
        "p = argparse.ArgumentParser(); stubs.add_arguments(p)\n"
        "sys.exit(stubs.run(p.parse_args(sys.argv[1:])))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--legacy-port", "0", "--model-port", "0", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        words = line.split()
        assert words[:2] == ["stubs:", "legacy"] and words[3] == "model", line
        legacy_url, model_url = words[2], words[4]
        request = urllib.request.Request(legacy_url + "/v1/decide", data=orjson.dumps(APPROVE), method="POST")
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert orjson.loads(resp.read())["decision"] == "approve"
        with urllib.request.urlopen(model_url + "/", timeout=5) as resp:
            assert orjson.loads(resp.read()) == {"ok": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
