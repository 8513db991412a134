"""The ladder end to end: real proxy, real upstreams, short policy windows (SPEC §6)."""

from __future__ import annotations

import aiohttp
import yaml
from aiohttp import web

from proxy.stages import Stage
from proxy.stats import wilson_interval
from proxy.store.memory import MemoryStore
from tests.conftest import ADMIN_TOKEN, eventually, route_config

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Model:
    """A model stub whose answer the test changes mid-run."""

    def __init__(self) -> None:
        self.decision = "approve"
        self.status = 200

    async def __call__(self, request: web.Request) -> web.Response:
        return web.json_response({"decision": self.decision, "confidence": 0.95}, status=self.status)


async def primary(request: web.Request) -> web.Response:
    return web.json_response({"decision": "approve"})


def write_policy(tmp_path, **gate) -> str:
    base = {"window": "1h", "min_samples": 30, "min_dwell": "0s", "min_agreement_lower_bound": 0.85,
            "max_error_rate": 0.05, "max_p99": "1s", "approval": "auto"}  # fmt: skip
    policy = {
        "evaluate_every": gate.pop("evaluate_every", "1h"),  # tests evaluate by hand unless they ask
        "promote": {"shadow_to_assisted": {**base, **gate}, "assisted_to_autonomous": {**base, **gate}},
        "rollback": [
            {"window": "1h", "min_samples": 20, "agreement_below": 0.8, "error_rate_above": 0.2, "to": "previous"},
            {"window": "1h", "min_samples": 20, "agreement_below": 0.3, "to": "shadow"},
        ],
    }
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    return "policy.yaml"


async def traffic(proxy, n: int) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.post(proxy.url + "/v1/decide", json={"region": "eu"}) as r:
                assert r.status == 200
    await proxy.settle()


async def start(tmp_path, upstreams, make_proxy, model: Model, stage="shadow", **gate):
    p, m = await upstreams(primary), await upstreams(model)
    route = route_config("loan", p.url, m.url, policy=write_policy(tmp_path, **gate), stage=stage,
                         autonomous={"primary_sample": 1.0, "min_confidence": 0.5})  # fmt: skip
    return await make_proxy([route])


async def test_promotion_happens_when_every_gate_holds_and_not_before(tmp_path, upstreams, make_proxy):
    proxy = await start(tmp_path, upstreams, make_proxy, Model())
    controller = proxy.core.controller
    await traffic(proxy, 29)
    verdict = await controller.evaluate("loan")
    assert verdict.action == "stay" and "min_samples" in verdict.reason
    await traffic(proxy, 1)
    verdict = await controller.evaluate("loan")
    assert verdict.action == "promote" and proxy.core.routes.by_name["loan"].stage.value == "assisted"
    await proxy.settle()
    (record,) = proxy.records("transition")
    assert (record["event"], record["from"], record["to"], record["actor"]) == (
        "promote",
        "shadow",
        "assisted",
        "policy",
    )
    low, high = wilson_interval(30, 30)
    evidence = record["evidence"]
    assert (evidence["samples"], evidence["agreed"], evidence["requests"]) == (30, 30, 30)
    assert evidence["agreement_lower"] == round(low, 6) and evidence["agreement_upper"] == round(high, 6)
    assert all(check["pass"] for check in evidence["checks"])
    # the new stage's window starts empty: records since entering the stage only
    view = await controller.view("loan")
    assert view["stage"] == "assisted" and view["window"]["samples"] == 0


async def test_evidence_matches_the_audit_trail(tmp_path, upstreams, make_proxy):
    model = Model()
    proxy = await start(tmp_path, upstreams, make_proxy, model)
    await traffic(proxy, 25)
    model.decision = "decline"
    await traffic(proxy, 15)
    verdict = await proxy.core.controller.evaluate("loan")
    assert verdict.action == "stay"  # 25/40 agree: the lower bound is far under 0.85
    decisions = proxy.records("decision")
    samples = [r for r in decisions if r["agree"] is not None]
    agreed = sum(r["agree"] for r in samples)
    assert verdict.evidence["samples"] == len(samples) == 40 and verdict.evidence["agreed"] == agreed == 25
    assert verdict.evidence["agreement_lower"] == round(wilson_interval(25, 40)[0], 6)


async def test_manual_gate_waits_for_approval(tmp_path, upstreams, make_proxy):
    proxy = await start(tmp_path, upstreams, make_proxy, Model(), approval="manual")
    controller = proxy.core.controller
    await traffic(proxy, 30)
    assert (await controller.evaluate("loan")).action == "pending"
    assert (await controller.evaluate("loan")).action == "stay"
    route = proxy.core.routes.by_name["loan"]
    assert route.stage.value == "shadow" and route.state.pending == "shadow_to_assisted"
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.post(proxy.admin_url + "/v1/routes/loan/approve", json={"reason": "reviewed"}) as r:
            assert r.status == 200 and (await r.json())["stage"] == "assisted"
        async with s.post(proxy.admin_url + "/v1/routes/loan/approve") as r:
            assert r.status == 409
    await proxy.settle()
    events = [(r["event"], r["from"], r["to"], r["actor"]) for r in proxy.records("transition")]
    assert events == [("pending", "shadow", "shadow", "policy"), ("approve", "shadow", "assisted", "admin")]
    assert proxy.records("transition")[1]["evidence"]["samples"] == 30


async def test_hold_blocks_automatic_moves(tmp_path, upstreams, make_proxy):
    proxy = await start(tmp_path, upstreams, make_proxy, Model())
    await proxy.core.controller.hold("loan", "freeze")
    await traffic(proxy, 30)
    verdict = await proxy.core.controller.evaluate("loan")
    assert verdict.action == "stay" and "hold" in verdict.reason
    assert proxy.core.routes.by_name["loan"].stage.value == "shadow"


async def test_injected_disagreement_rolls_back_within_one_evaluation(tmp_path, upstreams, make_proxy):
    model = Model()
    proxy = await start(tmp_path, upstreams, make_proxy, model, stage="autonomous")
    await traffic(proxy, 20)
    assert (await proxy.core.controller.evaluate("loan")).action == "stay"
    model.decision = "decline"  # drift: every answer now disagrees
    await traffic(proxy, 20)
    verdict = await proxy.core.controller.evaluate("loan")
    assert verdict.action == "rollback" and verdict.to.value == "assisted"
    assert proxy.core.routes.by_name["loan"].stage.value == "assisted"
    await proxy.settle()
    (record,) = proxy.records("transition")
    assert record["evidence"]["samples"] == 40 and record["evidence"]["agreed"] == 20
    assert record["evidence"]["breaches"] == ["agreement 0.5000 < 0.8"]


async def test_injected_errors_roll_back(tmp_path, upstreams, make_proxy):
    model = Model()
    proxy = await start(tmp_path, upstreams, make_proxy, model, stage="assisted")
    model.status = 500
    await traffic(proxy, 25)
    verdict = await proxy.core.controller.evaluate("loan")
    assert verdict.action == "rollback" and verdict.to.value == "shadow"
    assert "error rate 1.0000 > 0.2" in verdict.reason


async def test_the_loop_promotes_without_anyone_asking(tmp_path, upstreams, make_proxy):
    proxy = await start(tmp_path, upstreams, make_proxy, Model(), evaluate_every="100ms")
    await traffic(proxy, 30)
    await eventually(lambda: proxy.core.routes.by_name["loan"].stage.value == "assisted")
    families = {s.name: s for f in proxy.core.metrics.registry.collect() for s in f.samples}
    assert families["shadow_proxy_stage"].value == 1


async def test_stage_set_on_one_replica_is_adopted_by_another(tmp_path, upstreams, make_proxy):
    """Two proxies sharing one store object: a change through one is in force on the other."""
    store = MemoryStore()
    p, m = await upstreams(primary), await upstreams(Model())
    route = route_config("loan", p.url, m.url)
    first = await make_proxy([route], store_object=store)
    second = await make_proxy([route], store_object=store)
    await first.core.controller.set_stage("loan", Stage.ASSISTED, "by hand")
    await second.core.controller.evaluate("loan")  # what its sync loop does every few seconds
    assert second.core.routes.by_name["loan"].stage.value == "assisted"
