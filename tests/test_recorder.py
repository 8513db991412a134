"""The recorder's writer task: it survives any failure, drops and counts what cannot be written, and
always seals at shutdown. Real file sink, real chain, real ``audit verify``; failures are injected by
small sink and builder subclasses where nothing real fails on demand."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from proxy.audit import Chain
from proxy.ids import ulid
from proxy.metrics import Metrics
from proxy.recorder import Recorder
from proxy.records import base_record
from proxy.sinks import FileSink
from proxy.tasks import TaskOwner
from proxy.verify import verify


def record(n: int, kind: str = "outcome", **fields: Any) -> dict[str, Any]:
    out = base_record(kind, time.time(), "r")
    out.update(n=n, **fields)
    return out


def nested(levels: int) -> list:
    root: list = []
    node = root
    for _ in range(levels - 1):
        node.append([])
        node = node[0]
    return root


class Exploding:
    """An item the builder cannot turn into a record."""


class Builder:
    """Stands in for RecordBuilder: items that are not dicts go through ``decision``."""

    def decision(self, item: Any) -> dict[str, Any]:
        raise ValueError("cannot build this exchange")


def metric(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(f"shadow_proxy_{name}") or 0.0


def records_in(directory: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in sorted(directory.glob("*.jsonl")) for line in path.read_bytes().splitlines()]


class Trail:
    def __init__(self, directory: Path, sink: FileSink | None = None, **kwargs: Any) -> None:
        start = ulid()
        self.directory = directory
        self.sink = sink or FileSink(directory, start_id=start, rotate_bytes=10**9, compress_rotated=False, host="h")
        self.metrics = Metrics()
        self.chain = Chain(f"h:{os.getpid()}:{start}")
        self.recorder = Recorder(self.sink, self.chain, Builder(), self.metrics, flush_interval_s=0.01, **kwargs)
        self.tasks = TaskOwner("test")
        self.runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Trail:
        await self.sink.open()
        self.runner = self.tasks.spawn(self.recorder.run(), name="audit-writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.recorder.finish(self.runner, timeout_s=5.0)

    def verified(self) -> list[dict[str, Any]]:
        result = verify([self.directory])
        assert result.ok, result.problems
        assert result.writers[self.chain.writer].sealed
        return records_in(self.directory)


async def test_a_record_deeper_than_orjson_writes_does_not_stop_the_writer(tmp_path):
    """The reviewer's reproduction: a 300-level value used to kill the writer task for good."""
    async with Trail(tmp_path) as trail:
        trail.recorder.submit(record(1))
        trail.recorder.submit(record(2, outcome=nested(300)))
        trail.recorder.submit(record(3))
        await asyncio.wait_for(trail.recorder.wait_idle(), 5)
        assert not trail.runner.done()
        trail.recorder.submit(record(4))
    records = trail.verified()
    assert [r.get("n") for r in records] == [1, 2, 3, 4, None]
    assert records[-1]["type"] == "seal" and records[-1]["records"] == 4


async def test_a_record_that_cannot_be_built_is_dropped_counted_and_logged_once(tmp_path):
    with capture_logs() as logs:
        async with Trail(tmp_path) as trail:
            for i in range(5):
                trail.recorder.submit(record(i))
                trail.recorder.submit(Exploding())
            await asyncio.wait_for(trail.recorder.wait_idle(), 5)
    assert [r.get("n") for r in trail.verified()] == [0, 1, 2, 3, 4, None]
    assert metric(trail.metrics, "audit_dropped_records_total") == 5 == trail.recorder.dropped
    assert metric(trail.metrics, "audit_write_errors_total") == 5
    errors = [e for e in logs if e["event"] == "audit.writer_error"]
    assert len(errors) == 1 and errors[0]["where"] == "build" and "cannot build" in errors[0]["error"]


async def test_an_observer_that_fails_costs_no_record_and_one_log_line(tmp_path):
    def broken(pairs: list) -> None:
        raise RuntimeError("stats are down")

    with capture_logs() as logs:
        async with Trail(tmp_path, batch_records=2) as trail:
            trail.recorder.observe(broken)
            for i in range(6):
                trail.recorder.submit(record(i))
            await asyncio.wait_for(trail.recorder.wait_idle(), 5)
    assert [r.get("n") for r in trail.verified()] == [0, 1, 2, 3, 4, 5, None]
    assert len([e for e in logs if e["event"] == "audit.writer_error"]) == 1
    assert metric(trail.metrics, "audit_write_errors_total") >= 3  # one per batch, counted every time


class FlakySink(FileSink):
    """A file sink whose flush fails with a bug-like error (not OSError) the first ``n`` times."""

    def __init__(self, *args: Any, failures: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures

    async def flush(self) -> None:
        if self.failures and self.pending:
            self.failures -= 1
            raise RuntimeError("unexpected")
        await super().flush()


async def test_a_flush_that_raises_anything_is_retried_with_nothing_lost(tmp_path):
    sink = FlakySink(tmp_path, start_id=ulid(), rotate_bytes=10**9, compress_rotated=False, host="h", failures=2)
    async with Trail(tmp_path, sink) as trail:
        for i in range(3):
            trail.recorder.submit(record(i))
        await asyncio.wait_for(trail.recorder.wait_idle(), 10)
        assert not trail.runner.done()
    assert [r.get("n") for r in trail.verified()] == [0, 1, 2, None]
    assert metric(trail.metrics, "audit_write_errors_total") == 2


class HalfChain(Chain):
    """A chain that refuses records marked ``refuse`` (Chain.link itself never raises)."""

    def link(self, record: dict[str, Any]) -> bytes:
        if record.get("refuse"):
            raise TypeError("refused")
        return super().link(record)


async def test_a_record_the_sink_cannot_chain_is_dropped_without_a_gap(tmp_path):
    with capture_logs():
        async with Trail(tmp_path) as trail:
            trail.recorder.chain = trail.chain = HalfChain(trail.chain.writer)
            for i in range(4):
                trail.recorder.submit(record(i, refuse=i == 1))
            await asyncio.wait_for(trail.recorder.wait_idle(), 5)
    records = trail.verified()
    assert [r.get("n") for r in records] == [0, 2, 3, None]
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert trail.recorder.dropped == 1 and trail.recorder.written == 3


class PlanThenBreak(FileSink):
    """A sink whose plan chains its first record, then fails (a bug): the chained record must stay planned."""

    def plan(self, records: list[dict[str, Any]], chain: Chain) -> list:
        if len(records) > 1 and records[1].get("break"):
            super().plan(records[:1], chain)
            raise RuntimeError("bug after the first record")
        return super().plan(records, chain)


async def test_a_plan_that_raises_midway_loses_only_what_it_did_not_chain(tmp_path):
    sink = PlanThenBreak(tmp_path, start_id=ulid(), rotate_bytes=10**9, compress_rotated=False, host="h")
    with capture_logs():
        async with Trail(tmp_path, sink, batch_records=3) as trail:
            for i, brk in enumerate([False, True, False]):
                trail.recorder.submit(record(i, **({"break": True} if brk else {})))
            await asyncio.wait_for(trail.recorder.wait_idle(), 5)
            trail.recorder.submit(record(3))
    records = trail.verified()
    assert [r.get("n") for r in records] == [0, 3, None]
    assert trail.recorder.dropped == 2


async def test_finish_seals_even_when_the_writer_task_died(tmp_path):
    start = ulid()
    sink = FileSink(tmp_path, start_id=start, rotate_bytes=10**9, compress_rotated=False, host="h")
    await sink.open()
    chain = Chain(f"h:{os.getpid()}:{start}")
    metrics = Metrics()
    recorder = Recorder(sink, chain, Builder(), metrics, flush_interval_s=0.01)

    async def died() -> None:
        raise RuntimeError("writer crashed")

    runner = TaskOwner("test").spawn(died())
    await asyncio.wait({runner})
    recorder.submit(record(1))
    recorder.submit(record(2))
    with capture_logs() as logs:
        await recorder.finish(runner, timeout_s=5.0)  # must not raise
    assert any(e["event"] == "audit.writer_died" for e in logs)
    result = verify([tmp_path])
    assert result.ok and result.writers[chain.writer].sealed, result.problems
    assert [r.get("n") for r in records_in(tmp_path)] == [1, 2, None]


async def test_finish_after_a_stuck_writer_counts_what_it_could_not_write_and_still_seals(tmp_path):
    class Stuck(FileSink):
        async def flush(self) -> None:
            await asyncio.sleep(3600)

    sink = Stuck(tmp_path, start_id=ulid(), rotate_bytes=10**9, compress_rotated=False, host="h")
    trail = Trail(tmp_path, sink)
    await trail.sink.open()
    runner = trail.tasks.spawn(trail.recorder.run())
    trail.recorder.submit(record(1))
    await asyncio.sleep(0.1)  # planned, then stuck in flush
    trail.recorder.submit(record(2))
    with capture_logs() as logs:
        await trail.recorder.finish(runner, timeout_s=0.3)
    assert any(e["event"] == "audit.flush_timeout" for e in logs)
    assert trail.recorder.dropped == 1  # record 2 never reached the chain
    records = records_in(tmp_path)  # record 1 was planned: close writes it, then the seal
    assert [r.get("n") for r in records] == [1, None] and records[-1]["records"] == 1


async def test_transitions_are_never_refused_by_a_full_queue(tmp_path):
    metrics = Metrics()
    sink = FileSink(tmp_path, start_id=ulid(), rotate_bytes=10**9, host="h")
    recorder = Recorder(sink, Chain("w"), Builder(), metrics, queue_records=2)
    assert recorder.submit(record(1)) and recorder.submit(record(2))
    assert not recorder.submit(record(3))
    assert recorder.submit(record(4, kind="transition"))
    assert recorder.backlog == 3 and recorder.dropped == 1


@pytest.mark.parametrize("where", ["build", "flush"])
async def test_repeated_failures_are_logged_at_1_10_100(tmp_path, where):
    sink = FileSink(tmp_path, start_id=ulid(), rotate_bytes=10**9, host="h")
    recorder = Recorder(sink, Chain("w"), Builder(), Metrics())
    with capture_logs() as logs:
        for _ in range(150):
            recorder._error(where, ValueError("x"))
    assert [e["occurrences"] for e in logs] == [1, 10, 100]
