"""``redis://host:port/DB/STREAM``: the audit trail in a Redis stream, with a local spill (SPEC §4, §7).

Each record is one stream entry with one field, ``r``: the record's JSON line without its ``\\n``.
Redis assigns entry ids; the proxy never trims the stream (no MAXLEN: an audit trail is not capped).

Records are XADDed in batches of up to :data:`BATCH_RECORDS` (and :data:`BATCH_BYTES`), one round trip
per batch. A batch is one call of a tiny Lua script that XADDs each record in order, not a pipeline of
XADD commands: redis-py packs and parses every pipelined command in Python on the event loop (~33 µs a
record, a 30 ms stall per 1000-record batch, measured), the script call costs ~3 µs a record. And a
script runs whole or not at all, so a dropped connection never leaves half a batch in the stream
(an error reply midway, such as Redis out of memory, can: that batch is then sent again whole).

What happens to a planned record (the failure semantics, also in ``docs/audit-format.md``):

* Redis reachable and nothing spilled: XADDed by :meth:`RedisSink.flush`; done once Redis answers.
* The XADD fails (refused, reset, timed out, or an error reply): the failed batch and every later
  one go to the spill file instead, written and fsynced before ``flush`` returns. The failed batch
  may have reached the stream anyway (its answer was lost, or Redis was slow past the timeout); it
  is sent again on replay (at least once). ``audit export`` drops such repeats by record ``id``.
* While anything is spilled, new records are appended to the spill too, behind it (never straight
  to Redis), so each writer's records reach the stream in chain order.
* The replayer (an owned task) sends spill files to the stream oldest first, in the same batches,
  remembering how far Redis acknowledged; a file is deleted only once all its records are
  acknowledged. When the last one is gone, the writer goes back to XADD.
* The spill write itself fails (disk full, read-only): ``flush`` raises ``OSError`` with the batch
  still planned, so the recorder retries it (nothing dropped, nothing half-written: a failed append
  is truncated back).
* Clean shutdown (:meth:`RedisSink.close`): a ``seal`` (reason ``shutdown``) is added, everything is
  flushed, and for up to :data:`CLOSE_REPLAY_S` the spill is replayed; what is still spilled then
  stays on disk, fsynced, for the next start.
* Start (:meth:`RedisSink.open`): spill files left by an earlier process of this host (its pid is
  gone, or now names a process younger than the file's writer) are claimed by an atomic rename, a
  torn last line from a crash is cut off (and logged), and they are replayed before this writer's
  own records.

Timeouts: :data:`CONNECT_TIMEOUT_S` to connect, :data:`SOCKET_TIMEOUT_S` per read/write. Both only
delay the writer task, never a client request (the request path only queues). A dropped pooled
connection (Redis restarted) is retried once at once; otherwise the client reconnects on next use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.audit import Chain
from proxy.ids import ulid_time_s
from proxy.log import get_logger
from proxy.records import base_record
from proxy.sinks import AppendFile, _pid_alive, repair_torn_tail
from proxy.tasks import TaskOwner

log = get_logger("proxy.audit")

SPILL_NAME = re.compile(r"^spill-([0-9A-Z]{26})-(.+)-(\d+)-(\d{6})\.jsonl$")
FIELD = b"r"
# A batch is one round trip (~0.7 MiB with typical records) and keeps Redis busy ~1 ms. It also bounds
# what a lost acknowledgement can make us send twice.
BATCH_RECORDS = 1000
BATCH_BYTES = 4 << 20  # a batch also stops at this size (records with bodies can be large)
# XADD every argument, in order, to the stream KEYS[1]; '*': Redis assigns ids; no MAXLEN, ever.
_XADD_ALL = "for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'r', ARGV[i]) end return #ARGV"
# Connecting to a live Redis on a LAN takes well under a millisecond; a second means it is not there.
CONNECT_TIMEOUT_S = 1.0
# A batch of 1000 XADDs takes a few ms; two seconds without an answer is an outage, not load.
SOCKET_TIMEOUT_S = 2.0
RETRY_S = (0.1, 0.25, 0.5, 1.0, 2.0)  # replayer's wait between attempts while Redis is away
CLOSE_REPLAY_S = 5.0  # how long a clean shutdown keeps replaying before leaving the rest on disk


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """A parsed ``redis://host:port/DB/STREAM``: the connection URL, the stream key, a loggable form."""

    connection_url: str
    stream: str
    shown: str


def parse_stream_url(url: str) -> StreamTarget:
    """Split a stream URL; raise ``ValueError`` with a one-line message when it is not one."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{_hide_password(parts)!r} is not a valid URL ({exc})") from None
    segments = [s for s in parts.path.split("/") if s]
    if (
        parts.scheme not in ("redis", "rediss")
        or not parts.hostname
        or len(segments) != 2
        or not segments[0].isdigit()
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"{_hide_password(parts)!r} is not a Redis audit stream (use redis://host:port/DB/STREAM)")
    db, stream = segments
    netloc = parts.netloc
    connection = f"{parts.scheme}://{netloc}/{db}"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    shown = f"{parts.scheme}://{host}:{port or 6379}/{db}/{stream}"
    return StreamTarget(connection, unquote(stream), shown)


def _hide_password(parts: SplitResult) -> str:
    if parts.password is None:
        return parts.geturl()
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def connect(target: StreamTarget, *, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> aioredis.Redis:
    """A client with its own small pool, short timeouts and one immediate retry on a dropped connection.

    The retry covers a pooled connection that died with a restarted Redis (the retry reconnects);
    timeouts are not retried, so an unresponsive Redis costs one timeout, not several.
    """
    return aioredis.from_url(
        target.connection_url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=30,
        max_connections=4,
    )


@dataclass(slots=True)
class _Spill:
    """One spill file: records not yet acknowledged by Redis, and how far replay got (bytes)."""

    path: Path
    records: int
    pos: int = 0


class RedisSink:
    """Audit records to a Redis stream; a local, fsynced spill while Redis is unreachable.

    Implements :class:`proxy.sinks.Sink`. ``spilled`` is the number of records in spill files not
    yet acknowledged by Redis (the ``shadow_proxy_audit_spilled_records`` gauge).
    """

    def __init__(self, url: str, spill_dir: Path, *, start_id: str, host: str | None = None) -> None:
        self.target = parse_stream_url(url)
        self.spill_dir = spill_dir
        self.spilled = 0
        self._start_id = start_id
        self._host = (host or socket.gethostname()).replace("/", "_")
        self._prefix = f"spill-{start_id}-{self._host}-{os.getpid()}-"
        self._next_index = 1
        self._redis = connect(self.target)
        self._xadd_all = self._redis.register_script(_XADD_ALL)  # EVALSHA; loads itself after a Redis restart
        self._planned: list[bytes] = []
        self._queue: deque[_Spill] = deque()  # closed spill files, oldest first
        self._open: _Spill | None = None  # the spill file new records are appended to
        self._file: AppendFile | None = None
        self._lock = asyncio.Lock()  # the open spill file: appended by flush, rotated by the replayer
        self._wake = asyncio.Event()
        self._tasks = TaskOwner("audit-replay")
        self._io = ThreadPoolExecutor(1, thread_name_prefix="audit-spill")
        self._outage_started: float | None = None
        self._replayed = 0  # records replayed since the spill last emptied (for the log)

    @property
    def pending(self) -> bool:
        return bool(self._planned)

    @property
    def spilling(self) -> bool:
        """True while any record waits in a spill file: new records then go to the spill too."""
        return self._open is not None or bool(self._queue)

    def spill_files(self) -> list[Path]:
        """This writer's spill files, oldest first (the one being appended to last)."""
        files = [s.path for s in self._queue]
        return [*files, self._open.path] if self._open is not None else files

    # --- start ----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Claim spill files left by dead processes of this host, then start the replayer."""
        loop = asyncio.get_running_loop()
        claimed = await loop.run_in_executor(self._io, self._claim_leftovers)
        self._queue.extend(claimed)
        self.spilled += sum(s.records for s in claimed)
        if claimed:
            self._outage_started = time.monotonic()
            log.warning("audit.spill_found", files=len(claimed), records=self.spilled, spill_dir=str(self.spill_dir))
        self._tasks.spawn(self._replayer(), name="audit-replay")
        self._wake.set()

    def _claim_leftovers(self) -> list[_Spill]:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        claimed: list[_Spill] = []
        for path in sorted(self.spill_dir.glob("spill-*.jsonl")):
            m = SPILL_NAME.match(path.name)
            if not m or m.group(2) != self._host or path.name.startswith(self._prefix):
                continue
            if not _writer_gone(int(m.group(3)), m.group(1)):
                continue  # a live writer (another worker on this host) replays its own
            target = self.spill_dir / self._name(self._next_index)
            try:
                # Atomic: when two new processes find the same leftovers, exactly one gets each file.
                os.rename(path, target)
            except FileNotFoundError:
                continue
            self._next_index += 1
            removed = repair_torn_tail(target)
            if removed:
                log.warning("audit.torn_line_truncated", file=str(path), bytes_removed=removed)
            records = _count_lines(target)
            if records == 0:
                target.unlink()
                continue
            log.info("audit.spill_claimed", file=path.name, as_file=target.name, records=records)
            claimed.append(_Spill(target, records))
        _fsync_dir(self.spill_dir)
        return claimed

    def _name(self, index: int) -> str:
        return f"{self._prefix}{index:06d}.jsonl"

    # --- the writer's side ----------------------------------------------------------------------

    def plan(self, records: list[dict[str, Any]], chain: Chain) -> list[tuple[dict[str, Any], Exception]]:
        failed: list[tuple[dict[str, Any], Exception]] = []
        for record in records:
            try:
                line = chain.link(record)
            except Exception as exc:  # Chain.link does not raise; if it ever did, nothing was chained
                failed.append((record, exc))
                continue
            self._planned.append(line)
        return failed

    async def flush(self) -> None:
        """Send what is planned to Redis, or to the spill (see the module docstring).

        Raises ``OSError`` only when the spill cannot be written; the unwritten rest stays planned.
        """
        if not self._planned:
            return
        if not self.spilling:
            try:
                while self._planned:
                    batch = self._planned[: _batch_size(self._planned)]
                    await self._xadd(batch)
                    del self._planned[: len(batch)]
                return
            except Exception as exc:  # whatever went wrong, the spill keeps the records
                self._outage_started = time.monotonic()
                log.warning(
                    "audit.sink_unreachable",
                    sink=self.target.shown,
                    error=_describe(exc),
                    spill_dir=str(self.spill_dir),
                )
        await self._spill(self._planned)
        self._planned = []

    async def _xadd(self, lines: list[bytes]) -> None:
        added = await self._xadd_all(keys=[self.target.stream], args=[line.rstrip(b"\n") for line in lines])
        if added != len(lines):  # cannot happen with this script; never count records as sent unless sure
            raise RuntimeError(f"Redis added {added} of {len(lines)} records")

    async def _spill(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        async with self._lock:
            loop = asyncio.get_running_loop()
            if self._open is None:
                spill = _Spill(self.spill_dir / self._name(self._next_index), 0)
                self._next_index += 1
                self._file = await loop.run_in_executor(self._io, _create, spill.path)
                self._open = spill
            file = self._file
            assert file is not None
            await loop.run_in_executor(self._io, _append, file, data)
            self._open.records += len(lines)
            self.spilled += len(lines)
        self._wake.set()

    # --- replay ---------------------------------------------------------------------------------

    async def _replayer(self) -> None:
        """Owned task: empty the spill into the stream whenever Redis answers."""
        failures = 0
        while True:
            if not self.spilling:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._replay_next()
            except Exception as exc:  # Redis still away (or the spill unreadable): wait, try again
                if failures == 0 or failures % 50 == 0:
                    log.warning(
                        "audit.replay_waiting", sink=self.target.shown, error=_describe(exc), spilled=self.spilled
                    )
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1
                continue
            failures = 0
            if not self.spilling:
                outage = None if self._outage_started is None else round(time.monotonic() - self._outage_started, 3)
                log.info("audit.spill_replayed", sink=self.target.shown, records=self._replayed, outage_s=outage)
                self._outage_started, self._replayed = None, 0

    async def _replay_next(self) -> None:
        """Send the oldest spill file to the stream and delete it; raises when Redis does not take it."""
        if not self._queue:
            async with self._lock:  # hand the open file over: new records start a new one
                if self._open is not None:
                    self._close_file()
                    self._queue.append(self._open)
                    self._open = None
            if not self._queue:
                return
        spill = self._queue[0]
        loop = asyncio.get_running_loop()
        while True:
            lines, consumed, end = await loop.run_in_executor(self._io, _read_batch, spill.path, spill.pos)
            if not consumed:
                break
            if lines:
                await self._xadd(lines)
            spill.pos = end
            spill.records -= consumed
            self.spilled -= consumed
            self._replayed += len(lines)
        if spill.records:  # only after a torn tail we could not read: never expected, but say so
            log.error("audit.spill_unreadable_tail", file=str(spill.path), records=spill.records)
            self.spilled -= spill.records
        await loop.run_in_executor(self._io, spill.path.unlink)
        self._queue.popleft()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # --- shutdown -------------------------------------------------------------------------------

    async def close(self, chain: Chain) -> None:
        """Seal (reason ``shutdown``), flush, replay the spill for a bounded time, close.

        What cannot reach Redis stays in the spill folder, fsynced, for the next start to replay.
        """
        if chain.since_seal or self._planned:
            self._planned.append(chain.seal(base_record("seal", time.time()), reason="shutdown"))
        await self._tasks.cancel()
        try:
            await self.flush()
        except OSError as exc:
            log.error("audit.records_lost", records=len(self._planned), error=str(exc), spill_dir=str(self.spill_dir))
        if self.spilling:
            try:
                async with asyncio.timeout(CLOSE_REPLAY_S):
                    while self.spilling:
                        await self._replay_next()
            except Exception as exc:
                log.warning(
                    "audit.spill_left",
                    records=self.spilled,
                    files=len(self.spill_files()),
                    spill_dir=str(self.spill_dir),
                    reason=_describe(exc),
                )
        self._close_file()
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        self._io.shutdown(wait=True)


# --- spill file I/O (runs in the sink's one I/O thread) ---------------------------------------


def _create(path: Path) -> AppendFile:
    file = AppendFile(path)
    _fsync_dir(path.parent)  # the file's name must survive a crash as well as its content
    return file


def _append(file: AppendFile, data: bytes) -> None:
    file.append(data, fsync=True)  # whole or not at all: a failed append is cut back, the retry rewrites it


def _read_batch(path: Path, pos: int) -> tuple[list[bytes], int, int]:
    """Up to BATCH_RECORDS whole lines from ``pos``: (non-blank lines, lines consumed, position after)."""
    lines: list[bytes] = []
    consumed = size = 0
    with path.open("rb") as f:
        f.seek(pos)
        while consumed < BATCH_RECORDS and size < BATCH_BYTES:
            line = f.readline()
            if not line.endswith(b"\n"):
                break  # end of file (or a torn tail, which claiming already cut off)
            consumed += 1
            size += len(line)
            if line.strip():
                lines.append(line)
    return lines, consumed, pos + size


def _batch_size(lines: list[bytes]) -> int:
    """How many of ``lines`` make the next batch: at most BATCH_RECORDS and BATCH_BYTES, at least one."""
    size = 0
    for n, line in enumerate(lines[:BATCH_RECORDS]):
        size += len(line)
        if size > BATCH_BYTES:
            return max(n, 1)
    return min(len(lines), BATCH_RECORDS)


def _writer_gone(pid: int, start_id: str) -> bool:
    """True when the writer that made a spill file no longer runs.

    As for the file sink: its pid is gone, or is ours (an earlier process of ours). Also when the pid
    now belongs to a process that started after that writer did: a restarted container hands out the
    same pids again, and a sibling worker must not be taken for the dead writer.
    """
    if not _pid_alive(pid):
        return True
    started = _process_start_s(pid)
    return started is not None and started > ulid_time_s(start_id) + 1.0


def _process_start_s(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where /proc tells (Linux); else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, counted after "pid (comm)"
        return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
