"""Reading audit trails for the report: files and folders, JSON Lines, gzip, de-duplication.

The only I/O of the report besides writing its output. Records stream one at a time; nothing here
holds more than one line, except :class:`Seen`, whose memory grows with writers and gaps, not records.
"""

from __future__ import annotations

import bisect
import gzip
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


def _open(path: Path) -> IO[bytes]:
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        return io.BufferedReader(gzip.GzipFile(path), buffer_size=1 << 20)  # type: ignore[arg-type]
    return path.open("rb", buffering=1 << 20)


def read_lines(files: Iterable[Path], on_bad: OnBad) -> Iterator[tuple[bytes, Path, int]]:
    """Yield ``(line, path, number)`` for every non-blank line. A file that cannot be opened or
    decompressed is reported to ``on_bad`` (with the line it broke at) and the next file is read.
    """
    for path in files:
        number = 0
        try:
            with _open(path) as stream:
                for number, line in enumerate(stream, 1):
                    if line.strip():
                        yield line, path, number
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            on_bad(Where(str(path), number + 1), f"cannot read further ({exc})")


def parse(line: bytes) -> dict[str, Any] | str:
    """The record on ``line``, or why it is not one (a string)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({str(exc).split(':', 1)[0]})"
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("type"), str):
        return "no record type"
    return record


def records(files: Iterable[Path], on_bad: OnBad, only: bytes | None = None) -> Iterator[tuple[dict, Where]]:
    """Every record of ``files`` in order with where it is; malformed lines go to ``on_bad``.

    ``only``: skip lines not containing these bytes before parsing them (a cheap pre-filter).
    """
    for line, path, number in read_lines(files, on_bad):
        if only is not None and only not in line:
            continue
        record = parse(line)
        if isinstance(record, str):
            on_bad(Where(str(path), number), record)
        else:
            yield record, Where(str(path), number)


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
