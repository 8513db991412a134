"""Reading audit trails for the report: files and folders, JSON Lines, gzip, de-duplication.

The only I/O of the report besides writing its output. Records stream chunk by chunk (a few MiB at
most in memory); :class:`Seen` grows with writers and gaps, not with records.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SUFFIXES = (".jsonl", ".jsonl.gz")


class ReportError(Exception):
    """A problem the user caused (missing file, bad timestamp): one line, exit code 2."""


@dataclass(frozen=True, slots=True)
class Where:
    """Where a record came from, for messages: ``FILE:LINE``."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


OnBad = Callable[[Where, str], None]


def audit_files(paths: Iterable[str | Path]) -> list[Path]:
    """The audit files named by ``paths``: files as given, folders searched recursively for
    ``*.jsonl`` and ``*.jsonl.gz``. Each folder's files come in sorted name order (which sorts a
    writer's files in write order). Raises :class:`ReportError` for a missing path or no files at all.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)))
        elif path.is_file():
            found.append(path)
        else:
            raise ReportError(f"{raw}: no such file or folder")
    if not found:
        shown = ", ".join(str(p) for p in paths)
        raise ReportError(f"no audit files (*.jsonl, *.jsonl.gz) under {shown}")
    return found


CHUNK = 1 << 20


def _gunzip() -> Any:
    return zlib.decompressobj(zlib.MAX_WBITS | 16)


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes in chunks of a few MiB, gunzipped when it starts with the gzip magic number
    (any number of gzip members). Raises EOFError for a gzip stream cut short, zlib.error for a broken one.
    """
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        if not gzipped:
            while chunk := f.read(CHUNK):
                yield chunk
            return
        d, pending, started = _gunzip(), b"", False
        while raw := d.unconsumed_tail or pending or f.read(CHUNK):
            pending, started = b"", True
            # max_length bounds the output a chunk can expand to, whatever the compression ratio
            if out := d.decompress(raw, 4 * CHUNK):
                yield out
            if d.eof:
                d, pending, started = _gunzip(), d.unused_data, False
        if started:
            raise EOFError("compressed file ends before the end of its stream")


def read_lines(files: Iterable[Path], on_bad: OnBad) -> Iterator[tuple[bytes, str, int]]:
    """Yield ``(line, file name, line number)`` for every non-blank line. A file that cannot be read
    or decompressed is reported to ``on_bad`` (at the line it broke at) and the next file is read.
    """
    for path in files:
        name, number, carry = str(path), 0, b""
        try:
            for chunk in _chunks(path):
                lines = (carry + chunk).split(b"\n")
                carry = lines.pop()
                for line in lines:
                    number += 1
                    if line and not line.isspace():
                        yield line, name, number
            if carry and not carry.isspace():
                number += 1
                yield carry, name, number
        except (OSError, EOFError, zlib.error) as exc:
            on_bad(Where(name, number + 1), f"cannot read further ({exc})")


def records(files: Iterable[Path], on_bad: OnBad) -> Iterator[tuple[dict[str, Any], str, int]]:
    """Every record of ``files`` in order, as ``(record, file name, line number)``; a line that is
    not a JSON object with a string ``type`` goes to ``on_bad`` instead.
    """
    loads = orjson.loads
    for line, name, number in read_lines(files, on_bad):
        try:
            record = loads(line)
        except orjson.JSONDecodeError as exc:
            on_bad(Where(name, number), f"not JSON ({str(exc).split(':', 1)[0]})")
            continue
        if type(record) is not dict or type(record.get("type")) is not str:
            on_bad(Where(name, number), "not an audit record (a JSON object with a type)")
            continue
        yield record, name, number


def lines_containing(files: Iterable[Path], needle: bytes) -> Iterator[bytes]:
    """The lines that contain ``needle``, found by searching whole chunks (cheap: no per-line work
    where the needle is absent). Unreadable files are skipped silently: the main pass reports them.
    """
    for path in files:
        carry = b""
        try:
            for chunk in _chunks(path):
                first, last = chunk.find(b"\n"), chunk.rfind(b"\n")
                if first < 0:
                    carry += chunk
                    continue
                if needle in (line := carry + chunk[:first]):  # the line begun in the previous chunk
                    yield line
                hit = chunk.find(needle, first, last)
                while hit >= 0:
                    end = chunk.find(b"\n", hit)
                    yield chunk[chunk.rfind(b"\n", 0, hit) + 1 : end]
                    hit = chunk.find(needle, end, last)
                carry = chunk[last + 1 :]
            if needle in carry:
                yield carry
        except (OSError, EOFError, zlib.error):
            continue


class Seen:
    """Which records were already counted, so a replayed record counts once.

    A record is identified by ``(writer, seq)`` when it has both (every record written by the proxy
    does): one sorted list of disjoint seq ranges per writer, so memory grows with writers and gaps,
    not with records. The two identify a record exactly as its ``id`` does in a chain that ``audit
    verify`` accepts. Records without them fall back to a set of their ``id``.
    """

    def __init__(self) -> None:
        self._ranges: dict[str, tuple[list[int], list[int]]] = {}  # writer -> (starts, ends), inclusive
        self._ids: set[str] = set()

    def first_time(self, record: dict[str, Any]) -> bool:
        """True the first time a record is offered, False for a duplicate."""
        writer, seq = record.get("writer"), record.get("seq")
        if isinstance(writer, str) and type(seq) is int:
            return self._add_seq(writer, seq)
        rid = record.get("id")
        if not isinstance(rid, str):
            return True
        if rid in self._ids:
            return False
        self._ids.add(rid)
        return True

    def _add_seq(self, writer: str, seq: int) -> bool:
        starts, ends = self._ranges.setdefault(writer, ([], []))
        if ends and seq == ends[-1] + 1:  # the common case: the next record of the writer
            ends[-1] = seq
            return True
        i = bisect.bisect_right(starts, seq) - 1
        if i >= 0 and seq <= ends[i]:
            return False
        if i >= 0 and seq == ends[i] + 1:
            ends[i] = seq
        else:
            i += 1
            starts.insert(i, seq)
            ends.insert(i, seq)
        if i + 1 < len(starts) and starts[i + 1] == ends[i] + 1:  # close the gap to the next range
            ends[i] = ends.pop(i + 1)
            starts.pop(i + 1)
        return True
