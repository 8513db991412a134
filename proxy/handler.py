"""Per-request orchestration by stage (SPEC §2): who is called, who answers, what is recorded.

The client's answer never depends on the model beyond what the stage asks: in shadow the model
call is a background task; in assisted the primary waits at most ``max_wait_ms`` for a suggestion;
in autonomous the model has its timeout, then the primary answers. Every routed request yields one
exchange, handed to the recorder when both halves are done.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.exchange import Exchange, Reply
from proxy.ids import ulid
from proxy.log import access_event, get_logger
from proxy.metrics import Metrics
from proxy.mirror import valid_confidence
from proxy.responses import json_error
from proxy.routes import RouteRuntime, RouteTable
from proxy.stages import Fallback, ServedBy, Skip, Stage
from proxy.tasks import TaskOwner
from proxy.upstream import Upstream, request_headers, response_headers

log = get_logger("proxy.handler")

_SKIP_FALLBACK = {
    Skip.RATE: Fallback.BUDGET,
    Skip.COST: Fallback.BUDGET,
    Skip.OVERLOAD: Fallback.OVERLOAD,
    Skip.CIRCUIT: Fallback.CIRCUIT,
    Skip.SHUTDOWN: Fallback.ERROR,
}
_ERROR_FALLBACK = {"timeout": Fallback.TIMEOUT, "error": Fallback.ERROR, "invalid": Fallback.INVALID}


class ProxyHandler:
    """The aiohttp handler for client traffic."""

    def __init__(
        self,
        *,
        routes: RouteTable,
        default: Upstream | None,
        submit: Callable[[Exchange], None],
        metrics: Metrics,
        owner: TaskOwner,
        max_body_bytes: int,
        access_sample: float = 1.0,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routes = routes
        self.default = default
        self._submit = submit
        self._metrics = metrics
        self._owner = owner
        self._max_body = max_body_bytes
        self._access_sample = access_sample
        self._rng = rng
        self._clock = clock

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-Id") or ulid()
        length = request.content_length
        if length is not None and length > self._max_body:
            return self._too_large(request_id)
        route = self.routes.match(request.method, request.path)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request_id)
        except (aiohttp.ClientPayloadError, ValueError) as exc:
            return json_error(400, f"malformed request body: {exc}", request_id)
        if route is None:
            return await self._unrouted(request, body, request_id)
        return await self._routed(request, route, body, request_id, started)

    def _too_large(self, request_id: str) -> web.Response:
        response = json_error(413, f"request body exceeds {self._max_body} bytes", request_id)
        response.force_close()  # do not read the rest of an oversized body
        return response

    # --- routed traffic -----------------------------------------------------------------------

    async def _routed(
        self, request: web.Request, route: RouteRuntime, body: bytes, request_id: str, started: float
    ) -> web.StreamResponse:
        headers = request_headers(
            request.headers, client_ip=request.remote, proto=request.scheme, request_id=request_id, routed=True
        )
        ex = Exchange(
            route=route,
            stage=route.stage,
            epoch=route.epoch,
            ts=self._clock(),
            request_id=request_id,
            method=request.method,
            path=request.path,
            query=request.query,
            headers=request.headers,
            body=body,
            on_complete=self._submit,
        )
        ex.model.sampled_at = route.sample_rate
        send_body = body if body or "Content-Length" in request.headers else None
        path_qs = request.raw_path
        try:
            if ex.stage is Stage.SHADOW:
                reply = await self._shadow(route, ex, path_qs, headers, send_body)
            elif ex.stage is Stage.ASSISTED:
                reply = await self._assisted(route, ex, path_qs, headers, send_body)
            else:
                reply = await self._autonomous(route, ex, path_qs, headers, send_body)
        except asyncio.CancelledError:
            if ex.primary is None:
                ex.primary = Reply(error="error", detail="client went away")
            raise
        finally:
            ex.half_done()
        response = self._respond(reply, ex)
        self._account(route, ex, reply, response.status, started)
        return response

    async def _call_primary(
        self, route: RouteRuntime, ex: Exchange, path_qs: str, headers: Mapping[str, str], body: bytes | None
    ) -> Reply:
        reply = await route.primary.call(ex.method, path_qs, headers, body)
        ex.primary = reply
        route.observe_primary(reply)
        return reply

    async def _shadow(
        self, route: RouteRuntime, ex: Exchange, path_qs: str, headers: CIMultiDict[str], body: bytes | None
    ) -> Reply:
        model = route.model
        if route.sample_rate < 1.0 and self._rng() >= route.sample_rate:
            model.skip(ex.model, Skip.SAMPLED_OUT)
        elif (reason := model.admit(len(ex.body))) is not None:
            model.skip(ex.model, reason)
        else:
            model.spawn(ex, ex.method, path_qs, headers)
        return await self._call_primary(route, ex, path_qs, headers, body)

    async def _assisted(
        self, route: RouteRuntime, ex: Exchange, path_qs: str, headers: CIMultiDict[str], body: bytes | None
    ) -> Reply:
        model, call = route.model, ex.model
        call.suggestion_shown = False
        if (reason := model.admit(len(ex.body))) is not None:
            model.skip(call, reason)
        else:
            task = model.spawn(ex, ex.method, path_qs, headers)
            await asyncio.wait((task,), timeout=route.max_wait_s)
            call.suggestion_late = not task.done()
            if task.done() and call.decision is not None:
                headers = CIMultiDict(headers)
                headers["X-Model-Suggestion"] = self._suggestion(route, call.extracted)
                call.suggestion_shown = True
        return await self._call_primary(route, ex, path_qs, headers, body)

    @staticmethod
    def _suggestion(route: RouteRuntime, extracted: Any) -> str:
        payload = {
            "decision": extracted.decision,
            "confidence": extracted.confidence,
            "explanation": extracted.explanation,
            "model_version": route.model_version,
        }
        # ASCII-only JSON: header values must not carry raw non-ASCII or line breaks.
        return json.dumps(payload, ensure_ascii=True, separators=(",", ":"), default=str)

    async def _autonomous(
        self, route: RouteRuntime, ex: Exchange, path_qs: str, headers: CIMultiDict[str], body: bytes | None
    ) -> Reply:
        model, call = route.model, ex.model
        copy: asyncio.Task[Reply] | None = None
        if self._rng() < route.primary_sample:
            ex.primary_sampled = True
            copy = self._spawn_primary_copy(route, ex, path_qs, headers, body)
        if (reason := model.admit(len(ex.body))) is not None:
            model.skip(call, reason)
        else:
            await model.call(ex, ex.method, path_qs, headers)
        fallback = self._fallback(route, ex)
        if fallback is None and call.reply is not None:
            ex.served_by = ServedBy.MODEL
            return call.reply
        ex.fallback = fallback or Fallback.ERROR
        route.count_fallback(ex.fallback)
        if copy is not None:
            return await asyncio.shield(copy)  # the one primary call already made, never a second
        ex.primary_sampled = False
        return await self._call_primary(route, ex, path_qs, headers, body)

    def _spawn_primary_copy(
        self, route: RouteRuntime, ex: Exchange, path_qs: str, headers: CIMultiDict[str], body: bytes | None
    ) -> asyncio.Task[Reply]:
        copy_headers = CIMultiDict(headers)
        copy_headers["X-Shadow-Copy"] = "1"
        ex.halves += 1

        async def run() -> Reply:
            try:
                return await self._call_primary(route, ex, path_qs, copy_headers, body)
            finally:
                ex.half_done()

        return self._owner.spawn(run(), name="primary-copy")

    @staticmethod
    def _fallback(route: RouteRuntime, ex: Exchange) -> Fallback | None:
        call = ex.model
        if call.skipped is not None:
            return _SKIP_FALLBACK.get(call.skipped, Fallback.ERROR)
        if call.error is not None:
            return _ERROR_FALLBACK.get(call.error, Fallback.ERROR)
        if route.checks_confidence:
            confidence = call.extracted.confidence if call.extracted else None
            if not valid_confidence(confidence):
                return Fallback.INVALID
            if confidence < route.min_confidence:  # type: ignore[operator]
                return Fallback.LOW_CONFIDENCE
        return None

    def _respond(self, reply: Reply, ex: Exchange) -> web.Response:
        served_by = ex.served_by.value
        if reply.error == "timeout":
            return json_error(504, f"primary: {reply.detail}", ex.request_id, **{"X-Served-By": served_by})
        if reply.error is not None or reply.status is None:
            message = f"primary unreachable: {reply.detail}"
            return json_error(502, message, ex.request_id, **{"X-Served-By": served_by})
        headers = response_headers(reply.headers or {})
        headers["X-Request-Id"] = ex.request_id
        headers["X-Served-By"] = served_by
        if ex.method == "HEAD" and reply.headers is not None and "Content-Length" in reply.headers:
            headers["Content-Length"] = reply.headers["Content-Length"]
            return web.Response(status=reply.status, reason=reply.reason, headers=headers)
        return web.Response(status=reply.status, reason=reply.reason, body=reply.body, headers=headers)

    def _account(self, route: RouteRuntime, ex: Exchange, reply: Reply, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route.count_request(ex.served_by, status)
        upstream_s = (reply.latency_ms or 0.0) / 1000.0
        route.observe_overhead(max(0.0, elapsed - upstream_s))
        if self._access_sample >= 1.0 or self._rng() < self._access_sample:
            access_event(
                route=route.name,
                stage=ex.stage.value,
                method=ex.method,
                path=ex.path,
                status=status,
                served_by=ex.served_by.value,
                latency_ms=round(elapsed * 1000.0, 3),
                request_id=ex.request_id,
            )

    # --- unrouted traffic ---------------------------------------------------------------------

    async def _unrouted(self, request: web.Request, body: bytes, request_id: str) -> web.StreamResponse:
        if self.default is None:
            self._metrics.requests.labels("_unmatched", "primary", "404").inc()
            return json_error(404, f"no route for {request.method} {request.path}", request_id)
        headers = request_headers(
            request.headers, client_ip=request.remote, proto=request.scheme, request_id=request_id
        )
        send_body = body if body or "Content-Length" in request.headers else None
        self._metrics.requests.labels("_default", "primary", "-").inc()
        return await self.default.stream(request, headers, send_body, request_id)
