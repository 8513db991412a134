"""Admin API on its own port (SPEC §8): health, readiness, metrics, and the operator's controls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from proxy.responses import json_error

if TYPE_CHECKING:
    from proxy.app import ShadowProxy


def build_admin_app(proxy: ShadowProxy) -> web.Application:
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if proxy.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=proxy.metrics.render(), content_type="text/plain", charset="utf-8")

    async def not_found(request: web.Request) -> web.Response:
        return json_error(404, f"no admin endpoint {request.method} {request.path}")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
