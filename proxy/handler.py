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
        route = self.routes.match(request.method, request.path)
        length = request.content_length
        if length is not None and length > self._max_body:
            return self._refused(request, route, self._too_large(request_id), started)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refused(request, route, self._too_large(request_id), started)
        except (aiohttp.ClientPayloadError, ValueError) as exc:
            error = json_error(400, f"malformed request body: {exc}", request_id)
            return self._refused(request, route, error, started)
        send_body = body if body or "Content-Length" in request.headers else None
        if route is None:
            response = await self._unrouted(request, send_body, request_id)
            self._count_unrouted(request, response, request_id, started)
            return response
        return await self._routed(request, route, body, send_body, request_id, started)

    def _too_large(self, request_id: str) -> web.Response:
        response = json_error(413, f"request body exceeds {self._max_body} bytes", request_id)
        response.force_close()  # do not read the rest of an oversized body
        return response

    def _refused(
        self, request: web.Request, route: RouteRuntime | None, response: web.Response, started: float
    ) -> web.Response:
        """An answer the proxy gave itself before any upstream: counted and logged like the others."""
        name = route.name if route is not None else "_unmatched"
        self._metrics.requests.labels(name, "proxy", str(response.status)).inc()
        self._log(name, None, request.method, request.path, response.status, "proxy", time.perf_counter() - started,
                  response.headers.get("X-Request-Id"))  # fmt: skip
        return response

    def _count_unrouted(
        self, request: web.Request, response: web.StreamResponse, request_id: str, started: float
    ) -> None:
        name = "_default" if self.default is not None else "_unmatched"
        served_by = "primary" if self.default is not None else "proxy"
        self._metrics.requests.labels(name, served_by, str(response.status)).inc()
        elapsed = time.perf_counter() - started
        self._log(name, None, request.method, request.path, response.status, served_by, elapsed, request_id)

    # --- routed traffic -----------------------------------------------------------------------

    async def _routed(
        self,
        request: web.Request,
        route: RouteRuntime,
        body: bytes,
        send_body: bytes | None,
        request_id: str,
        started: float,
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
            query=request.query_string,
            headers=request.headers,
            body=body,
            send_body=send_body,
            on_complete=self._submit,
        )
        # the share of requests that reach the model: the shadow sample, or all of them
        ex.model.sampled_at = route.sample_rate if ex.stage is Stage.SHADOW else 1.0
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
                suggestion = suggestion_header(route.model_version, call.extracted)
                if suggestion is not None:
                    headers = CIMultiDict(headers)
                    headers["X-Model-Suggestion"] = suggestion
                    call.suggestion_shown = True
        return await self._call_primary(route, ex, path_qs, headers, body)

    async def _autonomous(
        self, route: RouteRuntime, ex: Exchange, path_qs: str, headers: CIMultiDict[str], body: bytes | None
    ) -> Reply:
        model, call = route.model, ex.model
        copy: asyncio.Task[Reply] | None = None
        # the background copy to the primary is bounded like shadow work: beyond the limit, no sample
        if self._rng() < route.primary_sample and route.primary_copies < route.model.max_in_flight:
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
        route.primary_copies += 1

        async def run() -> Reply:
            try:
                return await self._call_primary(route, ex, path_qs, copy_headers, body)
            finally:
                route.primary_copies -= 1
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
        self._log(route.name, ex.stage.value, ex.method, ex.path, status, ex.served_by.value, elapsed, ex.request_id)

    def _log(
        self, route: str, stage: str | None, method: str, path: str, status: int, served_by: str,
        elapsed_s: float, request_id: str | None,
    ) -> None:  # fmt: skip
        """The one access-log event of a request (sampled by ``log.access_sample``)."""
        if self._access_sample >= 1.0 or self._rng() < self._access_sample:
            access_event(
                route=route,
                stage=stage,
                method=method,
                path=path,
                status=status,
                served_by=served_by,
                latency_ms=round(elapsed_s * 1000.0, 3),
                request_id=request_id,
            )

    # --- unrouted traffic ---------------------------------------------------------------------

    async def _unrouted(self, request: web.Request, send_body: bytes | None, request_id: str) -> web.StreamResponse:
        if self.default is None:
            return json_error(404, f"no route for {request.method} {request.path}", request_id)
        headers = request_headers(
            request.headers, client_ip=request.remote, proto=request.scheme, request_id=request_id
        )
        return await self.default.stream(request, headers, send_body, request_id)


MAX_SUGGESTION_CHARS = 4096  # common servers refuse a header line over 8 KiB; leave room for the rest


def suggestion_header(model_version: str, extracted: Any) -> str | None:
    """``X-Model-Suggestion``: ASCII-only JSON (no raw non-ASCII or line breaks in a header).

    A long explanation is cut to fit ``MAX_SUGGESTION_CHARS`` (its JSON text, ending in ``…``), so a
    verbose model cannot make the primary refuse the client's request; when even the decision does
    not fit, there is no suggestion (None).
    """
    payload = {
        "decision": extracted.decision,
        "confidence": extracted.confidence,
        "explanation": extracted.explanation,
        "model_version": model_version,
    }
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"), default=str)
    if len(text) <= MAX_SUGGESTION_CHARS:
        return text
    explanation = json.dumps(extracted.explanation, ensure_ascii=True, default=str)
    keep = len(explanation)
    while keep > 0:  # cut by the excess; escaping can grow the cut text, so check again
        keep -= len(text) - MAX_SUGGESTION_CHARS + 8
        payload["explanation"] = explanation[: max(0, keep)] + "…"
        text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"), default=str)
        if len(text) <= MAX_SUGGESTION_CHARS:
            return text
    return None
