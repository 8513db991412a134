"""A lean HTTP/1.1 client for the upstream calls on the request path (primary and model).

Why not aiohttp's client, which the rest of the proxy uses: measured on this machine kind against an
nginx upstream, an aiohttp ``ClientSession`` request costs ~165 µs of CPU; this client ~16 µs. Every
proxied request makes two upstream calls, so this is the largest cost the proxy controls. Parsing is
``httptools`` (llhttp, uvicorn's parser); this module only frames requests, pools keep-alive
connections and enforces timeouts and a response size limit. aiohttp's client remains for what this one
does not do: ``HEAD`` (the parser cannot be told a response has no body) and streaming unrouted traffic.

Contract of :meth:`Client.request`: the request is sent as given (method, path with query, headers in
order with repeats, the body with ``Content-Length``), plus ``Host``; the whole response is read; every
failure becomes :class:`ClientError` or ``TimeoutError`` — it never hangs past its timeout. An
idempotent request (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) on a reused connection that
the server had already closed is retried once on a new connection, only when no byte of a response
arrived; a POST is never sent twice. To keep that race rare, idle connections are not reused after
``MAX_IDLE_S`` — shorter than the keep-alive timeouts of common servers (gunicorn 2 s, Node 5 s).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

MAX_RESPONSE_BYTES = 64 * 2**20
MAX_HEADER_BYTES = 64 * 1024
MAX_IDLE = 1024  # idle keep-alive connections kept per upstream
MAX_IDLE_S = 1.5  # an idle connection older than this is closed, not reused
DNS_TTL_S = 60.0
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class ClientError(Exception):
    """The upstream could not be reached, broke the connection, or answered something unparsable."""


class _StaleConnection(ClientError):
    """A reused connection closed before any response byte: safe to retry once."""


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes


def _reason(exc: OSError) -> str:
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__  # e.g. a resolver error: its own words


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses responses as they arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self.got_bytes = False
        self._reset()

    def _reset(self) -> None:
        """Ready for the next response (after an informational one, ``got_bytes`` stays true)."""
        self.reason = b""
        self.raw_headers: list[tuple[str, str]] = []
        self.header_bytes = 0
        self.parts: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.framed = False  # Content-Length or chunked: the end is not the connection's end

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ClientError(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headers_done and not self.framed:  # the body ran to the connection's end
            self._complete(self.parser.get_status_code(), keep_alive=False)
        elif not self.got_bytes:
            waiter.set_exception(_StaleConnection("connection closed before the response"))
        else:
            waiter.set_exception(ClientError("connection closed in the middle of the response"))

    # --- httptools callbacks --------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            self._fail(ClientError(f"response headers larger than {MAX_HEADER_BYTES} bytes"))
            return
        header = _text(name)
        self.raw_headers.append((header, _text(value)))
        lowered = header.lower()
        if lowered == "content-length" or (lowered == "transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_RESPONSE_BYTES:
            self._fail(ClientError(f"response larger than {MAX_RESPONSE_BYTES} bytes"))
            return
        self.parts.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # informational (100 Continue): the real response follows
            self._reset()
            return
        self._complete(status, keep_alive=self.parser.should_keep_alive())

    # --- use --------------------------------------------------------------------------------------

    def _complete(self, status: int, *, keep_alive: bool) -> None:
        waiter = self.waiter
        self.reusable = keep_alive and not self.closed
        if waiter is not None and not waiter.done():
            headers = CIMultiDictProxy(CIMultiDict(self.raw_headers))
            waiter.set_result(Response(status, _text(self.reason), headers, b"".join(self.parts)))

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def send(self, head: bytes, body: bytes | None, deadline: float) -> asyncio.Future[Response]:
        """Write a request; the future fails with TimeoutError at ``deadline`` (loop time)."""
        assert self.transport is not None
        self._reset()
        self.got_bytes = False
        self.reusable = False
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_at(deadline, self._fail, TimeoutError())
        waiter.add_done_callback(lambda _: timer.cancel())
        self.transport.write(head)
        if body:
            self.transport.write(body)  # not joined to the head: no copy of a large body
        return waiter


class Client:
    """Keep-alive connections to one upstream base URL (``http://host:port[/prefix]``)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        default_port = self.port == (443 if self.https else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.prefix = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if self.https else None
        self._idle: list[_Connection] = []
        self._dns: tuple[float, list[tuple[int, str]]] | None = None
        try:
            ip = ipaddress.ip_address(self.host)
            self._literal: tuple[int, str] | None = (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, self.host)
        except ValueError:
            self._literal = None

    async def _addresses(self) -> list[tuple[int, str]]:
        """(family, address) of the host, cached for ``DNS_TTL_S`` (the connector's job in aiohttp)."""
        loop = asyncio.get_running_loop()
        if self._literal is not None:
            return [self._literal]
        cached = self._dns
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        addresses = [(family, info[0]) for family, _, _, _, info in infos]
        self._dns = (loop.time() + DNS_TTL_S, addresses)
        return addresses

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        error: OSError | None = None
        try:
            for family, address in await self._addresses():
                try:
                    _, conn = await loop.create_connection(
                        _Connection, address, self.port, family=family, ssl=self._ssl,
                        server_hostname=self.host if self._ssl else None,
                    )  # fmt: skip
                    return conn
                except OSError as exc:
                    error = exc
        except OSError as exc:  # the name did not resolve
            error = exc
        reason = "no address" if error is None else _reason(error)
        raise ClientError(f"cannot connect: {reason}".lower())

    def _take_idle(self) -> _Connection | None:
        oldest = asyncio.get_running_loop().time() - MAX_IDLE_S
        while self._idle:
            conn = self._idle.pop()
            usable = not conn.closed and conn.transport is not None and not conn.transport.is_closing()
            if usable and conn.idle_since >= oldest:
                return conn
            if conn.transport is not None:
                conn.transport.close()
        return None

    def head(self, method: str, path_qs: str, headers: Iterable[tuple[str, str]], body: bytes | None) -> bytes:
        """The request line and headers, framed for this upstream."""
        lines = [f"{method} {self.prefix}{path_qs} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ClientError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}\r\n")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    async def request(
        self, method: str, path_qs: str, headers: Iterable[tuple[str, str]], body: bytes | None, timeout_s: float
    ) -> Response:
        """Send one request and read its whole response (see the module docstring)."""
        head = self.head(method, path_qs, headers, body)
        deadline = asyncio.get_running_loop().time() + timeout_s
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, deadline)
            except _StaleConnection:
                if method not in IDEMPOTENT:
                    raise ClientError("the upstream closed a kept-alive connection before answering") from None
                # the server closed it while idle: once more, on a new connection
        async with asyncio.timeout_at(deadline):
            conn = await self._connect()
        return await self._exchange(conn, head, body, deadline)

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes | None, deadline: float) -> Response:
        done = False
        try:
            response = await conn.send(head, body, deadline)
            done = True
            return response
        finally:
            if done and conn.reusable and len(self._idle) < MAX_IDLE:
                conn.idle_since = asyncio.get_running_loop().time()
                self._idle.append(conn)
            elif conn.transport is not None:
                conn.transport.close()  # failed, timed out or not keep-alive: never reuse

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
