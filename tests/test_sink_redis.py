"""The Redis Streams audit sink against a real redis-server: stream, spill, replay, export.

Outage tests use a private :class:`RedisServer` that they stop and start on the same port. The
private server is told to save its data on SIGTERM (``CONFIG SET save``), as a production Redis with
persistence does, so what counts is only whether the proxy loses or duplicates records.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from proxy.audit import Chain
from proxy.cli import main
from proxy.export import WINDOW
from proxy.ids import ulid
from proxy.records import base_record
from proxy.sink_redis import SPILL_NAME, RedisSink, parse_stream_url
from proxy.sinks import FILE_NAME
from tests.conftest import RedisServer, eventually, free_port, read_records, route_config

REDIS_BINARY = shutil.which("redis-server")
needs_binary = pytest.mark.skipif(REDIS_BINARY is None, reason="redis-server is not installed")


def new_stream(base: str) -> str:
    return f"{base}/audit-{uuid.uuid4().hex[:10]}"


async def redis_for(url: str) -> aioredis.Redis:
    return aioredis.from_url(parse_stream_url(url).connection_url)


async def private_redis(tmp_path: Path) -> RedisServer:
    assert REDIS_BINARY is not None
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(REDIS_BINARY, directory)
    await asyncio.to_thread(server.start)
    client = aioredis.from_url(server.url)
    await client.config_set("save", "3600 1")  # save the dataset on SIGTERM, like a persistent Redis
    await client.aclose()
    return server


def sink_config(url: str, spill_dir: Path) -> dict:
    return {"sink": url, "spill_dir": str(spill_dir), "flush_interval": "20ms"}


async def post(session: aiohttp.ClientSession, proxy_url: str, i: int) -> int:
    async with session.post(proxy_url + "/v1/decide", data=orjson.dumps({"region": "eu", "i": i})) as r:
        await r.read()
        return r.status


async def spilled_gauge(admin_url: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(admin_url + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith("shadow_proxy_audit_spilled_records"):
            return float(line.split()[-1])
    raise AssertionError("no shadow_proxy_audit_spilled_records gauge")


def spill_files(spill_dir: Path) -> list[Path]:
    return sorted(spill_dir.glob("spill-*.jsonl")) if spill_dir.exists() else []


def export_and_verify(url: str, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[dict], str]:
    """Run ``audit export`` as users do; check ``audit verify`` passes; return the records and summary."""
    capsys.readouterr()
    assert main(["audit", "export", url, "-o", str(out)]) == 0
    summary = capsys.readouterr().out.strip()
    assert main(["audit", "verify", str(out)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    records = read_records(out)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "export must not contain a record twice"
    return records, summary


async def run_traffic(proxy_url: str, stop: asyncio.Event, statuses: list[int], every_s: float = 0.01) -> None:
    async with aiohttp.ClientSession() as session:
        i = 0
        while not stop.is_set():
            statuses.append(await post(session, proxy_url, i))
            i += 1
            await asyncio.sleep(every_s)


# --- the happy path ---------------------------------------------------------------------------


async def test_records_reach_the_stream_and_export_verifies(upstreams, make_proxy, redis_url, tmp_path, capsys):
    primary, model = await upstreams(), await upstreams()
    url = new_stream(redis_url)
    spill = tmp_path / "spill"
    proxy = await make_proxy([route_config("loan", primary.url, model.url)], audit=sink_config(url, spill))
    async with aiohttp.ClientSession() as session:
        statuses = [await post(session, proxy.url, i) for i in range(25)]
    assert statuses == [200] * 25
    await proxy.settle()
    client = await redis_for(url)
    try:
        stream = parse_stream_url(url).stream
        assert await client.xlen(stream) == 25
        first = (await client.xrange(stream, count=1))[0][1]
        assert set(first) == {b"r"} and orjson.loads(first[b"r"])["type"] == "decision"
        assert await spilled_gauge(proxy.admin_url) == 0
        await proxy.stop()
        assert await client.xlen(stream) == 26  # + the shutdown seal
    finally:
        await client.aclose()

    out = tmp_path / "export"
    records, summary = await asyncio.to_thread(export_and_verify, url, out, capsys)
    assert summary == f"exported 26 records of 1 writer to {out} (0 duplicates dropped)"
    (path,) = out.iterdir()
    assert FILE_NAME.match(path.name)
    assert [r["type"] for r in records] == ["decision"] * 25 + ["seal"]
    assert records[-1]["reason"] == "shutdown" and records[-1]["records"] == 25 and "file" not in records[-1]
    assert spill_files(spill) == []
    # the analysts' report reads the export as it reads a file sink's folder
    assert await asyncio.to_thread(main, ["report", str(out), "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert "loan" in orjson.dumps(report).decode()


# --- outages ----------------------------------------------------------------------------------


@needs_binary
async def test_redis_restart_during_traffic_loses_and_duplicates_nothing(upstreams, make_proxy, tmp_path, capsys):
    server = await private_redis(tmp_path)
    try:
        primary, model = await upstreams(), await upstreams()
        url = new_stream(server.url)
        spill = tmp_path / "spill"
        proxy = await make_proxy([route_config("loan", primary.url, model.url)], audit=sink_config(url, spill))
        sink = proxy.core.recorder.sink
        statuses: list[int] = []
        stop = asyncio.Event()
        seen_during_outage: dict[str, float] = {}

        async def outage() -> None:
            try:
                await asyncio.sleep(0.4)
                assert statuses and not spill_files(spill)
                await asyncio.to_thread(server.stop)
                await eventually(lambda: bool(spill_files(spill)) and sink.spilled > 5, 5.0)
                await asyncio.sleep(0.5)  # records keep spilling while Redis is down
                seen_during_outage["gauge"] = await spilled_gauge(proxy.admin_url)
                seen_during_outage["files"] = len(spill_files(spill))
                sent_before = len(statuses)
                await asyncio.to_thread(server.start)
                await eventually(lambda: sink.spilled == 0 and not spill_files(spill), 10.0)
                await eventually(lambda: len(statuses) > sent_before + 20, 5.0)  # and traffic goes on
            finally:
                stop.set()

        await asyncio.gather(run_traffic(proxy.url, stop, statuses), outage())
        assert seen_during_outage["gauge"] > 0 and seen_during_outage["files"] >= 1
        assert statuses == [200] * len(statuses), "no client request may fail"
        await proxy.settle()
        await proxy.stop()
        assert spill_files(spill) == []

        records, summary = await asyncio.to_thread(export_and_verify, url, tmp_path / "export", capsys)
        decisions = [r for r in records if r["type"] == "decision"]
        assert len(decisions) == len(statuses), summary
        assert sorted(r["request"]["id"] for r in decisions) == sorted(
            {r["request"]["id"] for r in decisions}
        )  # one record per request
        assert records[-1]["type"] == "seal" and records[-1]["records"] == len(statuses)
    finally:
        await asyncio.to_thread(server.stop)


@needs_binary
async def test_hung_redis_times_out_to_the_spill_and_replays(upstreams, make_proxy, tmp_path, capsys):
    """A Redis that stops answering (SIGSTOP) without closing connections: the sink's timeout."""
    server = await private_redis(tmp_path)
    try:
        primary, model = await upstreams(), await upstreams()
        url = new_stream(server.url)
        spill = tmp_path / "spill"
        proxy = await make_proxy([route_config("loan", primary.url, model.url)], audit=sink_config(url, spill))
        sink = proxy.core.recorder.sink
        statuses: list[int] = []
        stop = asyncio.Event()
        latencies: list[float] = []

        async def hang() -> None:
            try:
                await asyncio.sleep(0.3)
                assert server.proc is not None
                server.proc.send_signal(signal.SIGSTOP)
                try:
                    await eventually(lambda: bool(spill_files(spill)), 6.0)
                    started = time.monotonic()
                    async with aiohttp.ClientSession() as session:
                        assert await post(session, proxy.url, -1) == 200
                    latencies.append(time.monotonic() - started)
                    statuses.append(200)
                finally:
                    server.proc.send_signal(signal.SIGCONT)
                await eventually(lambda: sink.spilled == 0 and not spill_files(spill), 10.0)
            finally:
                stop.set()

        await asyncio.gather(run_traffic(proxy.url, stop, statuses, every_s=0.02), hang())
        assert statuses == [200] * len(statuses)
        assert latencies[0] < 0.5  # a hung sink costs the client nothing
        await proxy.settle()
        await proxy.stop()
        records, _ = await asyncio.to_thread(export_and_verify, url, tmp_path / "export", capsys)
        assert len([r for r in records if r["type"] == "decision"]) == len(statuses)
    finally:
        with contextlib.suppress(Exception):
            if server.proc is not None:
                server.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(server.stop)


@needs_binary
async def test_a_restart_replays_spill_files_left_by_a_previous_process(upstreams, make_proxy, tmp_path, capsys):
    primary, model = await upstreams(), await upstreams()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0/audit-leftover"
    spill = tmp_path / "spill"
    route = route_config("loan", primary.url, model.url)

    # 1. Redis is down for a whole run: everything, seal included, stays in the spill at shutdown.
    first = await make_proxy([route], audit=sink_config(url, spill))
    async with aiohttp.ClientSession() as session:
        assert [await post(session, first.url, i) for i in range(10)] == [200] * 10
    await first.settle()
    await first.stop()
    left = spill_files(spill)
    assert left and all(SPILL_NAME.match(p.name) for p in left)
    assert sum(len(p.read_bytes().splitlines()) for p in left) == 11  # 10 decisions + the shutdown seal
    with left[-1].open("ab") as f:
        f.write(b'{"type": "decision", "id": "torn')  # as if the process had died mid-write

    # 2. Redis is back; the next process (same host, earlier writer gone) replays them, then its own.
    server = RedisServer(REDIS_BINARY or "redis-server", tmp_path / "redis", port=port)
    (tmp_path / "redis").mkdir()
    await asyncio.to_thread(server.start)
    try:
        second = await make_proxy([route], audit=sink_config(url, spill))
        await eventually(lambda: not spill_files(spill), 5.0)
        assert second.core.recorder.sink.spilled == 0
        async with aiohttp.ClientSession() as session:
            assert [await post(session, second.url, i) for i in range(5)] == [200] * 5
        await second.settle()
        await second.stop()
        records, summary = await asyncio.to_thread(export_and_verify, url, tmp_path / "export", capsys)
    finally:
        await asyncio.to_thread(server.stop)
    assert summary.startswith("exported 17 records of 2 writers")
    writers = [r["writer"] for r in records if r["type"] == "seal"]
    assert writers == [first.core.writer, second.core.writer]  # the earlier writer's records first
    assert len([r for r in records if r["type"] == "decision"]) == 15


async def test_only_spill_files_of_writers_that_are_gone_are_claimed(redis_url, tmp_path):
    """A live sibling's files stay (even in a container that reuses pids); a dead writer's are replayed."""
    spill = tmp_path / "spill"
    spill.mkdir()
    host = socket.gethostname()
    sibling = os.getppid()  # alive, and started before the ULIDs below
    writers = {
        "gone": (f"{ulid()}", 999_999_999),  # no such pid
        "reused": (ulid(1.0), sibling),  # a live pid, but its process started after that writer (1970)
        "alive": (ulid(), sibling),  # a live pid that is the writer itself
    }
    for name, (start_id, pid) in writers.items():
        chain = Chain(f"{host}:{pid}:{start_id}")
        line = chain.link(base_record("outcome", time.time(), "loan") | {"request_id": name, "outcome": "x"})
        (spill / f"spill-{start_id}-{host}-{pid}-000001.jsonl").write_bytes(line)
    url = new_stream(redis_url)
    sink = RedisSink(url, spill, start_id=ulid())
    await sink.open()
    assert sink.spilled == 2
    await eventually(lambda: sink.spilled == 0 and not sink.spilling, 5.0)
    await sink.close(Chain("unused:1:" + ulid()))
    left = [p.name for p in spill_files(spill)]
    assert left == [f"spill-{writers['alive'][0]}-{host}-{sibling}-000001.jsonl"]
    client = await redis_for(url)
    try:
        entries = await client.xrange(parse_stream_url(url).stream)
    finally:
        await client.aclose()
    assert [orjson.loads(e[1][b"r"])["request_id"] for e in entries] == ["reused", "gone"]  # oldest writer first


# --- export -----------------------------------------------------------------------------------


async def test_export_drops_records_sent_twice(redis_url, tmp_path, capsys):
    """At-least-once delivery: a batch re-sent after a lost acknowledgement is exported once."""
    url = new_stream(redis_url)
    chain = Chain(f"host-a:4242:{'01JD' + '0' * 22}")
    lines = [chain.link(base_record("outcome", time.time(), "loan") | {"request_id": str(i)}) for i in range(30)]
    lines.append(chain.seal(base_record("seal", time.time()), reason="shutdown"))
    sent = lines[:20] + lines[10:20] + lines[10:]  # 10..19 sent three times
    client = await redis_for(url)
    try:
        stream = parse_stream_url(url).stream
        for line in sent:
            await client.xadd(stream, {b"r": line.rstrip(b"\n")})
    finally:
        await client.aclose()
    records, summary = await asyncio.to_thread(export_and_verify, url, tmp_path / "out", capsys)
    assert summary == f"exported 31 records of 1 writer to {tmp_path / 'out'} (20 duplicates dropped)"
    assert [r["seq"] for r in records] == list(range(1, 32))
    assert (tmp_path / "out" / f"audit-{'01JD' + '0' * 22}-host-a-4242-000001.jsonl").exists()
    assert WINDOW >= 10_000  # repeats come within one lost batch (<= 1000 records) of the newest


def test_export_of_an_unreachable_redis_is_one_line(tmp_path, capsys):
    url = f"redis://127.0.0.1:{free_port()}/0/audit"
    assert main(["audit", "export", url, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"shadow-proxy: cannot reach redis://127.0.0.1:{url.split(':')[2].split('/')[0]}/0/audit")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6379/audit", "is not a Redis audit stream (use redis://host:port/DB/STREAM)"),
        ("http://127.0.0.1/0/audit", "is not a Redis audit stream"),
        ("redis://:secret@127.0.0.1:99999/0/a", "is not a valid URL"),
        ("redis://:secret@127.0.0.1/x/a", "redis://:***@127.0.0.1/x/a"),
    ],
)
def test_export_of_a_bad_url_is_one_line(tmp_path, capsys, url, message):
    assert main(["audit", "export", url, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "secret" not in err


def test_export_of_a_missing_stream_is_one_line(redis_url, tmp_path, capsys):
    url = new_stream(redis_url)
    assert main(["audit", "export", url, "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith(": no such stream")
