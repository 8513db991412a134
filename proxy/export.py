"""``shadow-proxy audit export redis://host:port/DB/STREAM -o DIR``: the stream back to JSON Lines files.

Reads the whole stream with XRANGE, page by page, and writes one file per writer,
``audit-<start-ULID>-<host>-<pid>-000001.jsonl`` (the file sink's naming), so ``audit verify`` and
``report`` read the folder as they read a file sink's. Each writer's records keep stream order.

De-duplication: the sink sends records at least once (a batch whose acknowledgement was lost is sent
again), so an entry whose record has the ``id`` of a record already exported for the same writer and
``seq`` is dropped. A repeat is always close behind the newest record of its writer (within one lost
batch), so ids are remembered for the last :data:`WINDOW` seqs of each writer: memory grows with
writers, not with the stream. An entry that reuses a ``seq`` with another ``id``, or repeats one
older than the window, is written, not dropped, so ``audit verify`` reports it.

Files are written as ``*.part`` and renamed when the stream has been read to its end.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from proxy.sink_redis import FIELD, StreamTarget, connect, parse_stream_url

PAGE = 2000  # entries per XRANGE call
WINDOW = 100_000  # seqs per writer whose ids are remembered for de-duplication
MAX_OPEN = 128  # output files kept open at once (a stream may hold many writers)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


class ExportError(Exception):
    """A problem worth one line and exit code 2: bad URL, Redis unreachable, no such stream."""


@dataclass
class _Writer:
    name: str
    path: Path
    last_seq: int = 0
    recent: dict[int, str] = field(default_factory=dict)  # seq -> id, the last WINDOW seqs
    records: int = 0
    started: bool = False  # the .part file was created in this run (later opens append)


@dataclass
class ExportResult:
    records: int = 0
    duplicates: int = 0
    writers: int = 0
    unreadable: int = 0  # stream entries that hold no proxy record
    first_unreadable: str | None = None  # the first such entry's id, to look at
    anomalies: int = 0  # entries kept although they repeat a seq (audit verify will say more)
    files: list[Path] = field(default_factory=list)

    def summary(self, out_dir: Path) -> str:
        line = (
            f"exported {self.records} record{'s' if self.records != 1 else ''} of {self.writers} "
            f"writer{'s' if self.writers != 1 else ''} to {out_dir} "
            f"({self.duplicates} duplicate{'s' if self.duplicates != 1 else ''} dropped)"
        )
        if self.anomalies:
            line += f"; {self.anomalies} out-of-order or conflicting records kept: run audit verify"
        if self.unreadable:
            line += f"; {self.unreadable} entries skipped, not audit records (first: {self.first_unreadable})"
        return line


def file_name(writer: str) -> str:
    """``host:pid:start-ULID`` -> ``audit-<ULID>-<host>-<pid>-000001.jsonl``, as the file sink names files."""
    host, _, rest = writer.partition(":")
    pid, _, start = rest.partition(":")
    if host and pid.isdigit() and re.fullmatch(r"[0-9A-Z]{26}", start):
        return f"audit-{start}-{_UNSAFE.sub('_', host)}-{pid}-000001.jsonl"
    return f"audit-{_UNSAFE.sub('_', writer)[:100]}-000001.jsonl"


class _Files:
    """Per-writer output files, at most MAX_OPEN open at once."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._open: dict[str, IO[bytes]] = {}

    def write(self, writer: _Writer, lines: Iterable[bytes]) -> None:
        f = self._open.pop(writer.name, None)  # re-inserted last: the dict is in use order
        if f is None:
            if len(self._open) >= MAX_OPEN:
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
            part = _part(writer.path)
            f = part.open("ab" if writer.started else "wb")
            writer.started = True
        self._open[writer.name] = f
        f.writelines(lines)

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


def export(url: str, out_dir: Path) -> ExportResult:
    """Export the stream at ``url`` into ``out_dir`` (blocking; runs its own event loop).

    Raises :class:`ExportError` for a bad URL, an unreachable Redis, a missing stream or an unwritable
    folder; then no ``*.part`` file is left behind.
    """
    try:
        target = parse_stream_url(url)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    writers: dict[str, _Writer] = {}
    files = _Files(out_dir)
    result = ExportResult()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(_export(target, writers, files, result))
        files.close()
        for w in writers.values():
            _part(w.path).replace(w.path)
            result.files.append(w.path)
    except (ExportError, RedisError, OSError) as exc:
        files.close()
        for w in writers.values():
            _part(w.path).unlink(missing_ok=True)
        if isinstance(exc, ExportError):
            raise
        if isinstance(exc, RedisError | ConnectionError | TimeoutError):
            raise ExportError(f"lost {target.shown} while reading the stream: {_short(exc)}") from None
        raise ExportError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    result.writers = len(writers)
    return result


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


async def _export(target: StreamTarget, writers: dict[str, _Writer], files: _Files, result: ExportResult) -> None:
    client = connect(target, socket_timeout_s=10.0)
    try:
        try:
            kind = await client.type(target.stream)
        except (RedisError, OSError) as exc:
            raise ExportError(f"cannot reach {target.shown}: {_short(exc)}") from None
        if kind == b"none":
            raise ExportError(f"{target.shown}: no such stream")
        if kind != b"stream":
            raise ExportError(f"{target.shown}: key is a {kind.decode()}, not a stream")
        await _read_stream(client, target.stream, writers, files, result)
    finally:
        await client.aclose()


async def _read_stream(
    client: aioredis.Redis, stream: str, writers: dict[str, _Writer], files: _Files, result: ExportResult
) -> None:
    start = "-"
    while True:
        entries = await client.xrange(stream, min=start, max="+", count=PAGE)
        if not entries:
            return
        batch: dict[str, list[bytes]] = {}
        for entry_id, fields in entries:
            raw = fields.get(FIELD)
            record = _parse(raw)
            if record is None:
                result.unreadable += 1
                result.first_unreadable = result.first_unreadable or entry_id.decode()
                continue
            name, seq, rid = record
            writer = writers.get(name)
            if writer is None:
                writer = writers[name] = _Writer(name, files.out_dir / file_name(name))
            if seq > writer.last_seq:
                writer.last_seq = seq
                writer.recent[seq] = rid
                if len(writer.recent) > 2 * WINDOW:
                    floor = seq - WINDOW
                    writer.recent = {s: i for s, i in writer.recent.items() if s > floor}
            elif writer.recent.get(seq) == rid:
                result.duplicates += 1
                continue
            else:
                result.anomalies += 1
            writer.records += 1
            result.records += 1
            batch.setdefault(name, []).append(raw.rstrip(b"\n") + b"\n")
        for name, lines in batch.items():
            files.write(writers[name], lines)  # a command-line tool's own loop: blocking writes are fine
        if len(entries) < PAGE:
            return
        start = _after(entries[-1][0].decode())


def _parse(raw: bytes | None) -> tuple[str, int, str] | None:
    """(writer, seq, id) of an entry's record, or None when it is not a proxy's audit record."""
    if raw is None:
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    writer, seq, rid = record.get("writer"), record.get("seq"), record.get("id")
    if not isinstance(writer, str) or type(seq) is not int or not isinstance(rid, str):
        return None
    return writer, seq, rid


def _after(entry_id: str) -> str:
    """The smallest stream id after ``entry_id`` (XRANGE's exclusive ``(`` needs Redis 6.2)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq) + 1}"


def _short(exc: BaseException) -> str:
    if isinstance(exc, ResponseError):
        return f"Redis replied: {exc}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__
