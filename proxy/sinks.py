"""Audit sinks: where chained records are written. The file sink is JSON Lines in a folder.

A sink works in two steps so that CPU work stays on the event loop in small slices and only
blocking file I/O goes to a thread: :meth:`plan` chains records into bytes (and decides rotation,
so each seal lands at the right place in the chain); :meth:`flush` writes what is planned. A failed
write leaves the rest planned and is retried; nothing planned is dropped.

Files are written through :class:`AppendFile`: no user-space buffer, a batch appended whole or not at
all. A write that fails half-way (disk full) is cut back before the error is raised, so the retry
writes the batch exactly once (a buffered file would keep the unwritten bytes and write them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import re
import shutil
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from proxy.audit import Chain
from proxy.log import get_logger
from proxy.records import base_record

log = get_logger("proxy.audit")

FILE_NAME = re.compile(r"^audit-([0-9A-Z]{26})-(.+)-(\d+)-(\d{6})\.jsonl(\.gz)?$")


class Sink(Protocol):
    """A place records go. ``plan`` is CPU only; ``flush`` and ``close`` do the I/O."""

    @property
    def pending(self) -> bool: ...

    async def open(self) -> None: ...

    def plan(self, records: list[dict[str, Any]], chain: Chain) -> list[tuple[dict[str, Any], Exception]]:
        """Chain ``records`` into what ``flush`` writes. Never raises: a record that cannot be chained
        is returned with its error, unchained (the chain does not advance for it: no gap)."""
        ...

    async def flush(self) -> None: ...

    async def close(self, chain: Chain) -> None: ...


@dataclass(slots=True)
class _Chunk:
    index: int
    data: bytes
    seals: bool


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # same pid, other start ULID: an earlier process of ours that is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AppendFile:
    """An append-only file written without a user-space buffer, one whole batch per :meth:`append`.

    Runs in an I/O thread. ``append`` either adds all of ``data`` (continuing short writes) or leaves
    the file as it was and raises: a failed write or fsync is cut back (``ftruncate``) to the size
    before the call. If even the cut fails, the next ``append`` cuts first and raises until it can,
    so a partial batch is never followed by the whole batch.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        self._cut_to: int | None = None  # a failed append not yet cut back

    def _fileno(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        return self._fd

    def append(self, data: bytes, *, fsync: bool = True) -> None:
        fd = self._fileno()
        if self._cut_to is not None:
            os.ftruncate(fd, self._cut_to)
            self._cut_to = None
        good = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        except OSError:
            self._cut_to = good
            with contextlib.suppress(OSError):
                os.ftruncate(fd, good)  # never leave half a batch: the retry rewrites it whole
                self._cut_to = None
            raise

    def fsync(self) -> None:
        os.fsync(self._fileno())

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def repair_torn_tail(path: Path) -> int:
    """Truncate a partial last line (a crash mid-write). Returns the bytes removed."""
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            block = f.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = pos - step + newline + 1
                break
            pos -= step
        else:
            keep = 0
        f.truncate(keep)
        os.fsync(f.fileno())
        return size - keep


class FileSink:
    """JSON Lines files per writer, rotated at ``rotate_bytes``, sealed, optionally gzipped."""

    def __init__(
        self,
        directory: Path,
        *,
        start_id: str,
        rotate_bytes: int,
        compress_rotated: bool = True,
        fsync_each_batch: bool = True,
        host: str | None = None,
    ) -> None:
        self.directory = directory
        self.rotate_bytes = rotate_bytes
        self.compress_rotated = compress_rotated
        self.fsync_each_batch = fsync_each_batch
        self._host = (host or socket.gethostname()).replace("/", "_")
        self._prefix = f"audit-{start_id}-{self._host}-{os.getpid()}-"
        self._index = 1
        self._size = 0
        self._planned: deque[_Chunk] = deque()
        self._file: AppendFile | None = None
        self._file_index = 0
        self._io = ThreadPoolExecutor(1, thread_name_prefix="audit-io")
        self._gzip = ThreadPoolExecutor(1, thread_name_prefix="audit-gzip")

    def name(self, index: int) -> str:
        return f"{self._prefix}{index:06d}.jsonl"

    @property
    def current_path(self) -> Path:
        return self.directory / self.name(self._index)

    @property
    def pending(self) -> bool:
        return bool(self._planned)

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._io, self._open_sync)

    def _open_sync(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.glob("audit-*.jsonl")):
            m = FILE_NAME.match(path.name)
            if not m or m.group(2) != self._host or _pid_alive(int(m.group(3))):
                continue
            removed = repair_torn_tail(path)
            if removed:
                log.warning("audit.torn_line_truncated", file=str(path), bytes_removed=removed)

    def plan(self, records: list[dict[str, Any]], chain: Chain) -> list[tuple[dict[str, Any], Exception]]:
        failed: list[tuple[dict[str, Any], Exception]] = []
        lines: list[bytes] = []
        try:
            for record in records:
                if self._size >= self.rotate_bytes:
                    seal = base_record("seal", time.time())
                    lines.append(chain.seal(seal, reason="rotate", file=self.name(self._index)))
                    self._planned.append(_Chunk(self._index, b"".join(lines), seals=True))
                    lines = []
                    self._index += 1
                    self._size = 0
                try:
                    line = chain.link(record)
                except Exception as exc:  # Chain.link does not raise; if it ever did, nothing was chained
                    failed.append((record, exc))
                    continue
                lines.append(line)
                self._size += len(line)
        finally:  # whatever is chained is planned, so the chain never has a gap
            if lines:
                self._planned.append(_Chunk(self._index, b"".join(lines), seals=False))
        return failed

    async def flush(self) -> None:
        if self._planned:
            await asyncio.get_running_loop().run_in_executor(self._io, self._flush_sync)

    def _flush_sync(self) -> None:
        while self._planned:
            chunk = self._planned[0]
            self._file_for(chunk.index).append(chunk.data, fsync=self.fsync_each_batch or chunk.seals)
            self._planned.popleft()
            if chunk.seals:
                self._close_file()
                if self.compress_rotated:
                    self._gzip.submit(_gzip_file, self.directory / self.name(chunk.index))

    def _file_for(self, index: int) -> AppendFile:
        if self._file is None or self._file_index != index:
            self._close_file()
            self._file = AppendFile(self.directory / self.name(index))
            self._file_index = index
        return self._file

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def close(self, chain: Chain) -> None:
        """Seal the live file (if it has records), write everything planned, fsync, close.

        A write that fails now (disk full) is not retried: the records it could not write are logged
        as lost (``audit.records_lost``) and the file is left unsealed, as after a crash.
        """
        if self._size or self._planned:
            seal = base_record("seal", time.time())
            line = chain.seal(seal, reason="shutdown", file=self.name(self._index))
            self._planned.append(_Chunk(self._index, line, seals=False))
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._io, self._finish_sync)
        except OSError as exc:
            lost = sum(chunk.data.count(b"\n") for chunk in self._planned)
            log.error("audit.records_lost", records=lost, error=str(exc), file=str(self.current_path))
        finally:
            self._io.shutdown(wait=True)
            self._close_file()
            await loop.run_in_executor(None, self._gzip.shutdown, True)

    def _finish_sync(self) -> None:
        self._flush_sync()
        if self._file is not None:
            self._file.fsync()
        self._close_file()


def _gzip_file(path: Path) -> None:
    """Compress a sealed file to ``.gz`` next to it, then remove the original (crash-safe order)."""
    tmp = path.with_name(path.name + ".gz.tmp")
    try:
        with path.open("rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.rename(path.with_name(path.name + ".gz"))
        path.unlink()
    except OSError as exc:
        log.error("audit.compress_failed", file=str(path), error=str(exc))
        tmp.unlink(missing_ok=True)
