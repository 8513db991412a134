"""Shared fixtures: real upstream servers on loopback, a real proxy, a real redis-server.

Nothing here mocks HTTP or Redis: upstreams are aiohttp servers on 127.0.0.1, the proxy is the
product's own :class:`~proxy.server.Server`, Redis is ``REDIS_URL`` or a private ``redis-server``.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy.app import ShadowProxy
from proxy.config import Config
from proxy.loading import loaded_from_config
from proxy.log import configure_logging
from proxy.server import Server

configure_logging("warning", "json", cache=False)

ADMIN_TOKEN = "admin-secret-token"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Upstream:
    """A real HTTP server whose behaviour a test sets with :attr:`handler`."""

    handler: Handler | None = None
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.raw_path, list(request.headers.items()), body))
        if self.handler is not None:
            return await self.handler(request)
        return web.json_response({"decision": "approve", "confidence": 0.9})

    async def start(self) -> Upstream:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_url() -> str:
    """A loopback URL nobody listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


def route_config(name: str, primary_url: str, model_url: str, **overrides: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": name,
        "match": {"path_prefix": "/v1/decide"},
        "primary": {"url": primary_url, "timeout": "2s"},
        "model": {"url": model_url, "timeout": "300ms", "version": "m-1"},
        "decision": {
            "primary": "decision",
            "model": "decision",
            "confidence": "confidence",
            "usage": "usage.total_tokens",
            "explanation": "reasons",
        },
        "segment": "body.region",
    }
    return _merge(route, overrides)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_records(directory: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        opener = gzip.open if path.name.endswith(".gz") else open
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            with opener(path, "rb") as f:
                records.extend(orjson.loads(line) for line in f if line.strip())
    return records


@dataclass
class RunningProxy:
    server: Server
    audit_dir: Path
    url: str
    admin_url: str

    @property
    def core(self) -> Any:
        return self.server.proxy

    async def settle(self) -> None:
        await self.server.proxy.settle()

    async def stop(self) -> None:
        await self.server.stop()

    def records(self, kind: str | None = "decision") -> list[dict[str, Any]]:
        found = read_records(self.audit_dir)
        return [r for r in found if kind is None or r["type"] == kind]


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def make(handler: Handler | None = None) -> Upstream:
        server = await Upstream(handler).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RunningProxy]]]:
    running: list[RunningProxy] = []

    async def make(
        routes: list[dict[str, Any]], environ: dict[str, str] | None = None, store_object: Any = None, **top: Any
    ) -> RunningProxy:
        audit_dir = tmp_path / f"audit-{len(running)}"
        raw = _merge(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "admin": {"host": "127.0.0.1", "port": 0},
                "audit": {"sink": f"file://{audit_dir}", "flush_interval": "20ms"},
                "shutdown": {"grace": "2s", "mirror_grace": "1s"},
                "routes": routes,
            },
            top,
        )
        loaded = loaded_from_config(Config.model_validate(raw), tmp_path)
        env = {"SHADOW_PROXY_ADMIN_TOKEN": ADMIN_TOKEN} if environ is None else environ
        server = Server(loaded, proxy=ShadowProxy(loaded, environ=env, store=store_object))
        bound = await server.start()
        proxy = RunningProxy(
            server, audit_dir, f"http://127.0.0.1:{bound.proxy_port}", f"http://127.0.0.1:{bound.admin_port}"
        )
        running.append(proxy)
        return proxy

    yield make
    for proxy in running:
        if not proxy.server.proxy.draining:
            await proxy.stop()


# --- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` if set, else a private redis-server on a free loopback port."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (.ci/run installs it); or set REDIS_URL")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class RedisServer:
    """A private redis-server a test may stop and restart on the same port (outages)."""

    def __init__(self, binary: str, directory: Path, port: int | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``check`` until true (for effects that happen in the background)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
