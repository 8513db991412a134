"""The command line as users run it: a real `shadow-proxy run` process, SIGTERM, and one-line errors."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import orjson
import yaml

from proxy.verify import verify
from tests.conftest import free_port, read_records, route_config


async def wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            if proc.returncode is not None:
                raise AssertionError(f"proxy exited: {(await proc.stderr.read()).decode()}")
            try:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("proxy did not become ready")


def write_config(tmp_path: Path, primary: str, model: str, **top) -> tuple[Path, int, int]:
    port, admin = free_port(), free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "log": {"format": "json", "level": "info"},
        "audit": {"sink": "file://./trail"},
        "routes": [route_config("r", primary, model)],
        **top,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port, admin


async def test_run_serves_then_drains_on_sigterm_with_every_record_written(tmp_path, upstreams):
    release = asyncio.Event()
    arrived = 0

    async def slow(request):
        nonlocal arrived
        arrived += 1
        if arrived > 20:
            await release.wait()
        from aiohttp import web

        return web.json_response({"decision": "approve"})

    primary, model = await upstreams(slow), await upstreams()
    config, port, admin = write_config(tmp_path, primary.url, model.url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "run", "-c", str(config),
        cwd="/", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_ready(f"http://127.0.0.1:{admin}", proc)
        async with aiohttp.ClientSession() as s:
            for _ in range(20):
                async with s.post(f"http://127.0.0.1:{port}/v1/decide", json={"region": "eu"}) as r:
                    assert r.status == 200
            # three requests are in flight at the primary when SIGTERM arrives
            in_flight = [
                asyncio.ensure_future(s.post(f"http://127.0.0.1:{port}/v1/decide", json={}))  # noqa: TID251
                for _ in range(3)
            ]
            while arrived < 23:
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            # no new connection is accepted while draining
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                refused = False
            except OSError:
                refused = True
            release.set()
            for request in in_flight:
                response = await request
                assert response.status == 200
                response.release()
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert refused
    events = [orjson.loads(line)["event"] for line in out.splitlines() if line.startswith(b"{")]
    assert events.count("request") == 23
    assert "server.started" in events and "shutdown.audit_flushed" in events
    trail = tmp_path / "trail"  # relative to the config file, not the process's cwd
    assert len([r for r in read_records(trail) if r["type"] == "decision"]) == 23
    result = verify([trail])
    assert result.ok and all(w.sealed for w in result.writers.values())


async def test_run_with_invalid_config_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - name: x\n    primary: {url: ftp://nope}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "run", "-c", str(bad), stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert "Traceback" not in err.decode()
    assert any(line.startswith(f"{bad}: routes[0].primary.url: 'ftp://nope' is not an http") for line in lines)
    assert all(line.startswith(f"{bad}: ") for line in lines)


async def test_run_on_a_busy_port_is_one_line_and_exit_1(tmp_path, upstreams):
    primary = await upstreams()
    config, port, _ = write_config(tmp_path, primary.url, primary.url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "run", "-c", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    text = err.decode().strip()
    assert text.startswith("shadow-proxy: cannot start:") and "address already in use" in text.lower()
    assert "\n" not in text


async def test_unknown_command_is_one_line():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "frobnicate", stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().count("\n") == 1 and "invalid choice" in err.decode()
