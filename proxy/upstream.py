"""Upstream clients: one keep-alive connection pool per upstream, and header hygiene.

Calls on the request path go through :mod:`proxy.httpclient` (a lean client, a tenth of aiohttp's
CPU per call); ``HEAD`` and streamed unrouted traffic go through one aiohttp ``ClientSession`` per
upstream. With :mod:`proxy.httpclient`, the only modules that open client sockets.

Bodies pass through as bytes: responses are never decompressed, and no client adds Accept-Encoding,
User-Agent or Content-Type of its own, so upstreams see what the client sent and clients get what
upstreams sent.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.exchange import Reply
from proxy.httpclient import Client, ClientError
from proxy.responses import json_error

# RFC 9110 §7.6.1 connection-specific fields, plus fields a proxy must own itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length"}
_NO_DEFAULT_CONTENT_TYPE = CIMultiDict({"Content-Type": None})


class PassthroughRequest(aiohttp.ClientRequest):
    """A client request that adds no header the client did not send.

    aiohttp would add ``Accept``, ``Accept-Encoding`` (an upstream might then compress an answer
    the client cannot read), ``User-Agent`` and a default ``Content-Type``. Its ``skip_auto_headers``
    option does the same but sorts and copies the headers on every request; this does it once.
    """

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        self._skip_auto_headers = _NO_DEFAULT_CONTENT_TYPE


_PLAIN_CONNECTION = frozenset({"keep-alive", "close", "Keep-Alive", "Close"})


def _connection_named(headers: Mapping[str, str]) -> frozenset[str]:
    """Header names listed in ``Connection`` (they are hop-by-hop too)."""
    values = headers.getall("Connection", ()) if hasattr(headers, "getall") else ()
    if len(values) == 1 and values[0] in _PLAIN_CONNECTION:
        return frozenset()  # the usual case: names no other header
    named: set[str] = set()
    for value in values:
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(named)


# Headers only the proxy may set on the way to an upstream: a client must not forge a suggestion.
CONTROL_HEADERS = frozenset({"x-model-suggestion", "x-shadow-copy", "x-shadow-stage"})
_NOT_FORWARDED_ROUTED = _NOT_FORWARDED | CONTROL_HEADERS


def request_headers(
    incoming: CIMultiDictProxy[str], *, client_ip: str | None, proto: str, request_id: str, routed: bool = False
) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end ones (repeats kept) plus X-Forwarded-* and X-Request-Id.

    On a routed request the proxy's own control headers are dropped too (:data:`CONTROL_HEADERS`).
    """
    base = _NOT_FORWARDED_ROUTED if routed else _NOT_FORWARDED
    drop = base | _connection_named(incoming) if "Connection" in incoming else base
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in drop:
            out.add(name, value)
    if client_ip:
        previous = ", ".join(out.getall("X-Forwarded-For", ()))  # several lines are one list
        out["X-Forwarded-For"] = f"{previous}, {client_ip}" if previous else client_ip
    out.setdefault("X-Forwarded-Proto", proto)
    out["X-Request-Id"] = request_id
    return out


def response_headers(incoming: Mapping[str, str]) -> CIMultiDict[str]:
    """Upstream response headers to return to the client, hop-by-hop ones removed."""
    drop = _NOT_RETURNED | _connection_named(incoming) if "Connection" in incoming else _NOT_RETURNED
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def _detail(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error.strerror or str(exc.os_error) if exc.os_error else str(exc)
        return f"cannot connect: {cause}".lower()
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


class Upstream:
    """A base URL with its own connection pool; :meth:`call` never raises for upstream failures."""

    def __init__(self, base_url: str, timeout_s: float, *, name: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.name = name
        self._session: aiohttp.ClientSession | None = None
        self._lean = Client(self.base_url)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=15, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            request_class=PassthroughRequest,
        )

    async def probe(self, timeout_s: float = 1.0) -> str | None:
        """Open (and close) one TCP connection; the reason it failed, or None when it is reachable."""
        parts = urlsplit(self.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout_s)
        except TimeoutError:
            return "timed out"
        except OSError as exc:
            return (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
        writer.close()
        return None

    async def close(self) -> None:
        self._lean.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        timeout_s: float | None = None,
    ) -> Reply:
        """Send one request and read the whole response body; failures become ``Reply.error``."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        if method == "HEAD":
            return await self._call_aiohttp(method, path_qs, headers, body, limit)
        started = time.perf_counter()
        pairs = headers.items()
        try:
            response = await self._lean.request(method, path_qs, pairs, body, limit)
        except TimeoutError:
            return Reply(latency_ms=limit * 1000.0, error="timeout", detail=f"no answer within {limit:g}s")
        except ClientError as exc:
            return Reply(latency_ms=(time.perf_counter() - started) * 1000.0, error="error", detail=str(exc))
        return Reply(
            status=response.status,
            headers=response.headers,
            body=response.body,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            reason=response.reason,
        )

    async def _call_aiohttp(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes | None, limit: float
    ) -> Reply:
        """The same call through aiohttp (HEAD: its response has no body despite Content-Length)."""
        assert self._session is not None, "Upstream.start() was not awaited"
        started = time.perf_counter()
        try:
            async with self._session.request(
                method,
                self.base_url + path_qs,
                headers=headers,
                data=body,
                timeout=aiohttp.ClientTimeout(total=limit),
                allow_redirects=False,
            ) as resp:
                data = await resp.read()
                return Reply(
                    status=resp.status,
                    headers=resp.headers,
                    body=data,
                    latency_ms=(time.perf_counter() - started) * 1000.0,
                    reason=resp.reason,
                )
        except TimeoutError:
            return Reply(latency_ms=limit * 1000.0, error="timeout", detail=f"no answer within {limit:g}s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Reply(latency_ms=(time.perf_counter() - started) * 1000.0, error="error", detail=_detail(exc))

    async def stream(
        self, request: web.Request, headers: Mapping[str, str], body: bytes | None, request_id: str
    ) -> web.StreamResponse:
        """Pass a request through untouched and stream the answer back (unrouted traffic)."""
        assert self._session is not None, "Upstream.start() was not awaited"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        out: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method, self.base_url + request.raw_path, headers=headers, data=body,
                timeout=timeout, allow_redirects=False,
            ) as resp:  # fmt: skip
                out = web.StreamResponse(status=resp.status, reason=resp.reason)
                out.headers.extend(response_headers(resp.headers))
                out.headers["X-Request-Id"] = request_id
                if resp.content_length is not None:
                    out.content_length = resp.content_length
                await out.prepare(request)
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if out is not None and out.prepared:
                raise  # the status line is sent: a second response cannot follow, the connection ends
            if isinstance(exc, TimeoutError):
                return json_error(504, f"default upstream: no answer within {self.timeout_s:g}s", request_id)
            return json_error(502, f"default upstream unreachable: {_detail(exc)}", request_id)
