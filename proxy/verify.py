"""``shadow-proxy audit verify``: check every writer's hash chain and seals (SPEC §7).

Fails on a wrong hash, a broken link, a gap in ``seq`` (a deleted record, a cut-off file or a
missing file) and on records out of order. A writer's last file may be unsealed (still being
written, or its writer crashed): that is reported, not failed. Reads files as a stream, so memory
does not grow with the trail.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson

from proxy.audit import ZERO_HASH, record_hash


def audit_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named (or found recursively in folders named), in name order = write order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(p for p in path.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    return sorted(set(found), key=lambda p: (p.name, str(p)))


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a JSON Lines file, gzipped or not."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


@dataclass
class WriterState:
    writer: str
    seq: int = 0
    last_hash: str = ZERO_HASH
    since_seal: int = 0
    records: int = 0
    files: list[str] = field(default_factory=list)
    sealed: bool = False
    open_rotation: str | None = None  # a file sealed for rotation: its successor must follow
    problem: str | None = None


@dataclass
class VerifyResult:
    writers: dict[str, WriterState] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _where(path: Path, line: int, record: dict[str, Any]) -> str:
    return f"{path}:{line} (seq {record.get('seq')}, id {record.get('id')})"


def _check(state: WriterState, record: dict[str, Any], where: str) -> str | None:
    seq = record.get("seq")
    if not isinstance(seq, int):
        return f"record at {where} has no seq"
    if record_hash(record) != record.get("hash"):
        return f"record at {where}: hash does not match its content (modified)"
    if seq <= state.seq:
        return f"record at {where} is out of order (after seq {state.seq})"
    if seq != state.seq + 1:
        missing = "missing" if state.seq else "missing before the first record found (a missing file?)"
        return f"records seq {state.seq + 1}..{seq - 1} are {missing}; next found at {where}"
    if record.get("prev_hash") != state.last_hash:
        return f"record at {where}: prev_hash does not link to seq {state.seq} (broken chain)"
    if record.get("type") == "seal" and record.get("records") != state.since_seal:
        return (
            f"seal at {where} counts {record.get('records')} records, "
            f"but {state.since_seal} precede it (records removed or added)"
        )
    return None


def _advance(state: WriterState, record: dict[str, Any], path: Path) -> None:
    state.seq = record["seq"]
    state.last_hash = record["hash"]
    state.records += 1
    state.open_rotation = None
    if record.get("type") == "seal":
        state.since_seal = 0
        state.sealed = True
        if record.get("reason") == "rotate":
            state.open_rotation = path.name
    else:
        state.since_seal += 1
        state.sealed = False


def verify(paths: Iterable[str | Path]) -> VerifyResult:
    result = VerifyResult()
    for path in audit_files(paths):
        try:
            _verify_file(path, result)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            result.problems.append(f"{path}: cannot read ({exc})")
    for state in result.writers.values():
        if state.problem is None and state.open_rotation is not None:
            state.problem = f"file after {state.open_rotation} is missing (it was sealed for rotation)"
            result.problems.append(f"writer {state.writer}: {state.problem}")
    return result


def _verify_file(path: Path, result: VerifyResult) -> None:
    for number, line in read_lines(path):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            result.problems.append(f"{path}:{number}: not a JSON record (damaged line)")
            continue
        writer = record.get("writer") if isinstance(record, dict) else None
        if not isinstance(writer, str):
            result.problems.append(f"{path}:{number}: record has no writer")
            continue
        state = result.writers.setdefault(writer, WriterState(writer))
        if state.problem is not None:
            continue
        if not state.files or state.files[-1] != path.name:
            state.files.append(path.name)
        if record.get("seq") == state.seq and record.get("hash") == state.last_hash:
            continue  # an exact repeat of the previous record (a replayed write): harmless
        problem = _check(state, record, _where(path, number, record))
        if problem is not None:
            state.problem = problem
            result.problems.append(f"writer {writer}: {problem}")
            continue
        _advance(state, record, path)


def print_result(result: VerifyResult, out: TextIO) -> None:
    for state in result.writers.values():
        files = f"{len(state.files)} file{'s' if len(state.files) != 1 else ''}"
        if state.problem is not None:
            out.write(f"FAIL {state.writer}: {state.problem}\n")
        elif state.sealed:
            out.write(f"ok   {state.writer}: {state.records} records in {files}, sealed\n")
        else:
            out.write(
                f"ok   {state.writer}: {state.records} records in {files}, last file unsealed "
                "(still being written, or the writer stopped without a clean shutdown)\n"
            )
    for problem in result.problems:
        if not problem.startswith("writer "):
            out.write(f"FAIL {problem}\n")
    if not result.writers and not result.problems:
        out.write("no audit records found\n")
