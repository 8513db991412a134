"""Admin API on its own port (SPEC §8): health, readiness, metrics, and the operator's controls.

Every call but ``/healthz``, ``/readyz`` and ``/metrics`` needs ``Authorization: Bearer <token>``, the
token from the variable ``admin.token_env`` names (compared in constant time). The optional outcomes
token (``admin.outcomes_token_env``) may only ``POST /v1/outcomes``. Without an admin token set, the
API refuses everything else. Errors are JSON ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from proxy.audit import jcs_value
from proxy.controller import Conflict, NotFound
from proxy.records import base_record
from proxy.responses import json_error
from proxy.stages import Stage
from proxy.store import StoreError

if TYPE_CHECKING:
    from proxy.app import ShadowProxy

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MAX_OUTCOMES = 10_000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """A request the caller must fix (400)."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _matches(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def auth_middleware(admin_token: str | None, outcomes_token: str | None) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        outcomes = request.path == "/v1/outcomes" and request.method == "POST"
        if admin_token is None and not (outcomes and outcomes_token is not None):
            return json_error(403, "the admin API is disabled: no admin token is set (see admin.token_env)")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return json_error(401, "missing bearer token", **{"WWW-Authenticate": "Bearer"})
        if _matches(given, admin_token) or (outcomes and _matches(given, outcomes_token)):
            return await handler(request)
        if _matches(given, outcomes_token):
            return json_error(403, "this token may only post outcomes")
        return json_error(401, "invalid token", **{"WWW-Authenticate": 'Bearer error="invalid_token"'})

    return middleware


def draining_middleware(proxy: ShadowProxy) -> Any:
    """While the proxy shuts down, changes are refused: they could not reach the audit trail."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if proxy.draining and request.method == "POST":
            return json_error(503, "shutting down: try another replica", **{"Retry-After": "1"})
        return await handler(request)

    return middleware


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return json_error(400, str(exc))
    except NotFound as exc:
        return json_error(404, str(exc))
    except Conflict as exc:
        return json_error(409, str(exc))
    except StoreError as exc:
        return json_error(503, f"store unavailable: {exc}")


async def _body(request: web.Request, *, required: bool = True) -> Any:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise BadRequest("request body is empty (expected JSON)")
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None


def _reason(data: Any) -> str:
    if not isinstance(data, dict):
        raise BadRequest("expected a JSON object")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise BadRequest("reason must be a string")
    return reason[:1000]


class AdminAPI:
    """Handlers bound to one proxy instance."""

    def __init__(self, proxy: ShadowProxy) -> None:
        self.proxy = proxy
        self.controller = proxy.controller

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.proxy.draining:
            return _json({"status": "draining"}, 503)
        try:
            await asyncio.wait_for(self.proxy.store.ping(), self.proxy.config.store.timeout * 4)
        except (StoreError, TimeoutError) as exc:
            return _json({"status": "store unreachable", "error": str(exc) or "timed out"}, 503)
        return _json({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.proxy.metrics.render(), content_type="text/plain", charset="utf-8")

    async def routes(self, request: web.Request) -> web.Response:
        views = [await self.controller.view(r.name) for r in self.proxy.routes.routes]
        return _json({"routes": views})

    async def route(self, request: web.Request) -> web.Response:
        return _json(await self.controller.view(request.match_info["name"]))

    async def set_stage(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.controller._route(name)  # 404 before 400 for an unknown route
        data = await _body(request)
        reason = _reason(data)
        try:
            stage = Stage(data.get("stage"))
        except ValueError:
            raise BadRequest(f"unknown stage {data.get('stage')!r} (use {', '.join(s.value for s in Stage)})") from None
        state, changed = await self.controller.set_stage(name, stage, reason)
        return _json({"route": name, "changed": changed, **state.to_json()})

    async def approve(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        reason = _reason(await _body(request, required=False))
        state, changed = await self.controller.approve(name, reason)
        return _json({"route": name, "changed": changed, **state.to_json()})

    async def hold(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        reason = _reason(await _body(request, required=False))
        state, changed = await self.controller.hold(name, reason, hold=request.path.endswith("/hold"))
        return _json({"route": name, "changed": changed, **state.to_json()})

    async def analysis(self, request: web.Request) -> web.Response:
        verdict = await self.controller.analysis(request.match_info["name"])
        return _json(verdict, 200 if verdict["pass"] else 412)

    async def outcomes(self, request: web.Request) -> web.Response:
        data = await _body(request)
        items = data if isinstance(data, list) else [data]
        if len(items) > MAX_OUTCOMES:
            return json_error(413, f"at most {MAX_OUTCOMES} outcomes per request")
        records = [self._outcome(i, item) for i, item in enumerate(items)]
        recorder = self.proxy.recorder
        if not recorder.has_room(len(records)):
            return json_error(503, "the audit queue is full; retry later", **{"Retry-After": "1"})
        for record in records:
            recorder.submit(record)
        return _json({"accepted": len(records)})

    def _outcome(self, index: int, item: Any) -> dict[str, Any]:
        where = f"outcome {index}: " if index or not isinstance(item, dict) else ""
        if not isinstance(item, dict):
            raise BadRequest(f"{where}expected an object with request_id and outcome")
        request_id, route = item.get("request_id"), item.get("route")
        if not isinstance(request_id, str) or not request_id or len(request_id) > 256:
            raise BadRequest(f"{where}request_id must be a non-empty string (at most 256 characters)")
        if "outcome" not in item or item["outcome"] is None:
            raise BadRequest(f"{where}outcome is missing")
        if route is not None and route not in self.proxy.routes.by_name:
            raise BadRequest(f"{where}no route named {route!r}")
        unknown = set(item) - {"request_id", "outcome", "route"}
        if unknown:
            raise BadRequest(f"{where}unknown field {sorted(unknown)[0]!r}")
        record = base_record("outcome", time.time(), route)
        record.update(request_id=request_id, outcome=jcs_value(item["outcome"]))
        return record

    async def not_found(self, request: web.Request) -> web.Response:
        return json_error(404, f"no admin endpoint {request.method} {request.path}")


def build_admin_app(proxy: ShadowProxy, admin_token: str | None, outcomes_token: str | None) -> web.Application:
    api = AdminAPI(proxy)
    app = web.Application(
        middlewares=[auth_middleware(admin_token, outcomes_token), draining_middleware(proxy), error_middleware],
        client_max_size=8 * 2**20,
    )
    r = app.router
    r.add_get("/healthz", api.healthz)
    r.add_get("/readyz", api.readyz)
    r.add_get("/metrics", api.metrics)
    r.add_get("/v1/routes", api.routes)
    r.add_get("/v1/routes/{name}", api.route)
    r.add_post("/v1/routes/{name}/stage", api.set_stage)
    r.add_post("/v1/routes/{name}/approve", api.approve)
    r.add_post("/v1/routes/{name}/hold", api.hold)
    r.add_post("/v1/routes/{name}/release", api.hold)
    r.add_get("/v1/routes/{name}/analysis", api.analysis)
    r.add_post("/v1/outcomes", api.outcomes)
    r.add_route("*", "/{tail:.*}", api.not_found)
    return app
