"""Error responses the proxy itself writes: JSON ``{"error": ..., "request_id": ...}``."""

from __future__ import annotations

import orjson
from aiohttp import web


def json_error(status: int, message: str, request_id: str | None = None, **headers: str) -> web.Response:
    payload: dict[str, str | None] = {"error": message}
    if request_id is not None:
        payload["request_id"] = request_id
        headers = {"X-Request-Id": request_id, **headers}
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)
