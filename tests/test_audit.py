"""The audit trail: canonical hashing, the chain, seals, rotation, and what `audit verify` catches."""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import rfc8785
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.audit import Chain, Redactor, body_for_record, canonical, jcs_value, record_hash
from proxy.cli import main
from proxy.ids import ulid
from proxy.records import base_record
from proxy.sinks import FileSink
from proxy.verify import verify

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(max_codepoint=0xD7FF)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=st.characters(max_codepoint=0xD7FF), max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
@example(5.573253948024485e16)  # integral float above 2**53: shortest digits, not the binary value
@example({"b": [1.0, -0.0, 1e21, 1e-7], "a": "é"})
@example(-9.223372036854776e18)  # integral, beyond 64-bit integers once printed as digits
@example(1.8446744073709552e19)
@example([1.811406748957132e-06, -1e-6, 9.99e-6])  # plain decimals in ECMAScript, exponents in orjson
def test_canonical_form_is_rfc8785(value):
    assert canonical(jcs_value(value)) == rfc8785.dumps(value)


def test_a_record_with_an_unwritable_value_is_still_chained_without_a_gap():
    chain = Chain("w")
    first = orjson.loads(chain.link({"type": "decision", "n": 1}))
    odd = orjson.loads(chain.link({"type": "decision", "weird": {1, 2}, "huge": 2**70}))
    third = orjson.loads(chain.link({"type": "decision", "n": 3}))
    assert [r["seq"] for r in (first, odd, third)] == [1, 2, 3]
    assert odd["prev_hash"] == first["hash"] and third["prev_hash"] == odd["hash"]
    assert odd["weird"] == "{1, 2}" and record_hash(odd) == odd["hash"]


def nested(levels: int) -> list:
    """A list nested ``levels`` deep: [[[...]]]."""
    root: list = []
    node = root
    for _ in range(levels - 1):
        node.append([])
        node = node[0]
    return root


def depth_of(value) -> int:
    depth = 0
    while isinstance(value, list | dict):
        depth += 1
        if not value:
            break
        value = value[0] if isinstance(value, list) else next(iter(value.values()))
    return depth


@pytest.mark.parametrize("levels", [200, 300, 5000])
def test_a_record_nested_deeper_than_orjson_writes_is_chained_with_its_deep_part_cut(levels):
    """orjson writes at most 254 levels; a deeper record keeps 64 levels, then "[TOO DEEP]"; no gap."""
    chain = Chain("w")
    first = orjson.loads(chain.link({"type": "decision", "n": 1}))
    odd = orjson.loads(chain.link({"type": "decision", "request": {"body": jcs_value(nested(levels))}}))
    third = orjson.loads(chain.link({"type": "decision", "n": 3}))
    assert [r["seq"] for r in (first, odd, third)] == [1, 2, 3]
    assert odd["prev_hash"] == first["hash"] and third["prev_hash"] == odd["hash"]
    assert record_hash(odd) == odd["hash"]
    body = odd["request"]["body"]
    if levels == 200:  # orjson writes it: kept whole
        assert depth_of(body) == 200
        return
    # 300: the record is level 1, request level 2: the body keeps levels 3 to 64, then the marker;
    # 5000: too deep to normalise at all, the body alone keeps 64 levels (then the record is writable)
    kept = 62 if levels == 300 else 64
    assert depth_of(body) == kept
    for _ in range(kept - 1):
        body = body[0]
    assert body == ["[TOO DEEP]"]


def test_a_body_too_deep_for_python_recursion_still_builds_a_record():
    doc = orjson.loads(b"[" * 1000 + b"]" * 1000)  # orjson parses 1000 levels; recursion would fail
    body = body_for_record(b"[...]", doc)
    assert depth_of(body) == 64 and orjson.dumps(body)


async def test_a_deep_record_in_a_real_trail_verifies(tmp_path):
    start = ulid()
    chain = Chain(f"host:{os.getpid()}:{start}")
    sink = FileSink(tmp_path, start_id=start, rotate_bytes=10**9, compress_rotated=False, host="host")
    await sink.open()
    records = [base_record("decision", time.time(), "r") for _ in range(3)]
    records[1]["request"] = {"body": nested(400)}
    sink.plan(records, chain)
    await sink.flush()
    await sink.close(chain)
    result = verify([tmp_path])
    assert result.ok, result.problems
    assert result.writers[chain.writer].records == 4


def test_integral_floats_hash_like_integers():
    assert record_hash({"a": 2.0, "b": -0.0}) == record_hash({"a": 2, "b": 0})


# --- writing a trail with the real file sink --------------------------------------------------


async def write_trail(directory: Path, n: int, *, rotate_bytes: int = 10**9, compress: bool = False) -> str:
    start = ulid()
    writer = f"host:{os.getpid()}:{start}"
    chain = Chain(writer)
    sink = FileSink(directory, start_id=start, rotate_bytes=rotate_bytes, compress_rotated=compress, host="host")
    await sink.open()
    for i in range(n):
        record = base_record("decision", time.time(), "r")
        record.update(agree=i % 3 == 0, stage="shadow", n=i)
        sink.plan([record], chain)
        await sink.flush()
    await sink.close(chain)
    return writer


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def only_file(directory: Path) -> Path:
    (path,) = directory.iterdir()
    return path


async def test_fresh_trail_verifies_and_is_sealed(tmp_path):
    writer = await write_trail(tmp_path, 20)
    result = verify([tmp_path])
    assert result.ok, result.problems
    state = result.writers[writer]
    assert state.records == 21 and state.sealed
    last = orjson.loads(lines_of(only_file(tmp_path))[-1])
    assert last["type"] == "seal" and last["records"] == 20 and last["reason"] == "shutdown"
    first = orjson.loads(lines_of(only_file(tmp_path))[0])
    assert first["seq"] == 1 and first["prev_hash"] == "0" * 64


async def test_one_changed_byte_is_caught_and_named(tmp_path):
    await write_trail(tmp_path, 10)
    path = only_file(tmp_path)
    lines = lines_of(path)
    lines[4] = lines[4].replace(b'"n":4', b'"n":5')
    path.write_bytes(b"".join(lines))
    result = verify([tmp_path])
    assert not result.ok
    assert "seq 5" in result.problems[0] and "hash does not match" in result.problems[0]
    assert f"{path}:5" in result.problems[0]


async def test_a_deleted_record_is_caught(tmp_path):
    await write_trail(tmp_path, 10)
    path = only_file(tmp_path)
    lines = lines_of(path)
    del lines[3]
    path.write_bytes(b"".join(lines))
    result = verify([tmp_path])
    assert not result.ok
    assert "seq 4..4 are missing" in result.problems[0]


async def test_two_swapped_records_are_caught(tmp_path):
    await write_trail(tmp_path, 10)
    path = only_file(tmp_path)
    lines = lines_of(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    result = verify([tmp_path])
    assert not result.ok
    assert "seq 3..3 are missing" in result.problems[0] or "out of order" in result.problems[0]


async def test_a_recomputed_hash_still_breaks_the_next_link(tmp_path):
    """Rewriting a record and its own hash is caught by the following record's prev_hash."""
    await write_trail(tmp_path, 5)
    path = only_file(tmp_path)
    lines = lines_of(path)
    record = orjson.loads(lines[1])
    record["agree"] = not record["agree"]
    record["hash"] = record_hash(record)
    lines[1] = orjson.dumps(record) + b"\n"
    path.write_bytes(b"".join(lines))
    result = verify([tmp_path])
    assert "seq 3" in result.problems[0] and "broken chain" in result.problems[0]


async def test_rotation_seals_each_file_and_gzips_it(tmp_path):
    writer = await write_trail(tmp_path, 60, rotate_bytes=4096, compress=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) >= 3
    assert all(n.endswith(".jsonl.gz") for n in names[:-1]) and names[-1].endswith(".jsonl")
    for name in names[:-1]:
        with gzip.open(tmp_path / name, "rb") as f:
            last = orjson.loads(f.read().splitlines()[-1])
        assert last["type"] == "seal" and last["reason"] == "rotate" and last["file"] == name[: -len(".gz")]
    result = verify([tmp_path])
    assert result.ok, result.problems
    assert result.writers[writer].records == 60 + len(names)


async def test_a_missing_rotated_file_is_caught(tmp_path):
    await write_trail(tmp_path, 60, rotate_bytes=4096)
    names = sorted(tmp_path.iterdir())
    names[1].unlink()
    result = verify([tmp_path])
    assert not result.ok and "missing" in result.problems[0]


async def test_a_missing_last_file_after_rotation_is_caught(tmp_path):
    await write_trail(tmp_path, 60, rotate_bytes=4096)
    sorted(tmp_path.iterdir())[-1].unlink()
    result = verify([tmp_path])
    assert not result.ok and "is missing (it was sealed for rotation)" in result.problems[0]


async def test_an_unsealed_last_file_is_reported_not_failed(tmp_path):
    writer = await write_trail(tmp_path, 10)
    path = only_file(tmp_path)
    path.write_bytes(b"".join(lines_of(path)[:-1]))  # the writer died before its seal
    result = verify([tmp_path])
    assert result.ok
    assert not result.writers[writer].sealed


async def test_a_seal_count_that_disagrees_is_caught(tmp_path):
    await write_trail(tmp_path, 10)
    path = only_file(tmp_path)
    lines = lines_of(path)
    seal = orjson.loads(lines[-1])
    seal["records"] = 9
    seal["hash"] = record_hash(seal)
    lines[-1] = orjson.dumps(seal) + b"\n"
    path.write_bytes(b"".join(lines))
    assert "counts 9 records" in verify([tmp_path]).problems[0]


async def test_torn_last_line_of_a_dead_writer_is_truncated_on_start(tmp_path):
    dead_pid = 2**22 + 17  # above pid_max on Linux: no such process
    torn = tmp_path / f"audit-{ulid()}-host-{dead_pid}-000001.jsonl"
    chain = Chain("host:1:x")
    good = chain.link(base_record("decision", time.time(), "r"))
    torn.write_bytes(good + b'{"type":"decision","id":"01')
    sink = FileSink(tmp_path, start_id=ulid(), rotate_bytes=10**6, host="host")
    await sink.open()
    await sink.close(Chain("host:2:y"))
    assert torn.read_bytes() == good


async def test_a_live_writers_file_is_never_truncated(tmp_path):
    mine = tmp_path / f"audit-{ulid()}-host-1-000001.jsonl"  # pid 1 is alive
    mine.write_bytes(b'{"partial')
    sink = FileSink(tmp_path, start_id=ulid(), rotate_bytes=10**6, host="host")
    await sink.open()
    await sink.close(Chain("host:2:y"))
    assert mine.read_bytes() == b'{"partial'


def test_redactor_copies_only_what_it_changes():
    redactor = Redactor(["body.a.b", "body.items.*.secret", "headers.Authorization"])
    doc = {"a": {"b": 1, "c": 2}, "items": [{"secret": "x", "ok": 1}], "untouched": {"k": 1}}
    out = redactor.body(doc)
    assert out == {
        "a": {"b": "[REDACTED]", "c": 2},
        "items": [{"secret": "[REDACTED]", "ok": 1}],
        "untouched": {"k": 1},
    }
    assert doc["a"]["b"] == 1  # the input is not modified
    assert out["untouched"] is doc["untouched"]
    assert redactor.headers({"authorization": "Bearer x"}) == {"authorization": "[REDACTED]"}
    assert redactor.body("not a mapping") == "not a mapping"


# --- the command line -------------------------------------------------------------------------


async def test_verify_command_exit_codes(tmp_path, capsys):
    writer = await write_trail(tmp_path, 5)
    assert main(["audit", "verify", str(tmp_path)]) == 0
    assert f"ok   {writer}: 6 records in 1 file, sealed" in capsys.readouterr().out
    path = only_file(tmp_path)
    path.write_bytes(path.read_bytes().replace(b'"n":2', b'"n":7'))
    assert main(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL {writer}: record at {path}:3 (seq 3")


def test_verify_of_a_missing_path_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", str(tmp_path / "nope")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage", [b"not json at all\n", b'{"no": "writer"}\n'])
async def test_damaged_lines_fail_verification(tmp_path, damage):
    await write_trail(tmp_path, 3)
    path = only_file(tmp_path)
    lines = lines_of(path)
    lines.insert(1, damage)
    path.write_bytes(b"".join(lines))
    result = verify([tmp_path])
    assert not result.ok and f"{path}:2" in result.problems[0]


# --- a write that fails half-way (disk full) -------------------------------------------------

# Runs in a child process: RLIMIT_FSIZE makes the file system refuse bytes past a size, exactly as a
# full disk does (a short write, then EFBIG instead of ENOSPC), without touching the test process.
FAILING_WRITE = """
import asyncio, os, resource, signal, sys, time
from pathlib import Path
from proxy.audit import Chain
from proxy.ids import ulid
from proxy.records import base_record

def batch(first, n):
    return [dict(base_record("decision", time.time(), "r"), n=i, pad="x" * 200) for i in range(first, first + n)]

async def main(kind, directory):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    start = ulid()
    chain = Chain(f"h:{os.getpid()}:{start}")
    if kind == "file":
        from proxy.sinks import FileSink
        sink = FileSink(Path(directory), start_id=start, rotate_bytes=10**9, compress_rotated=False, host="h")
        size = lambda: sink.current_path.stat().st_size
    else:
        from proxy.sink_redis import RedisSink
        sink = RedisSink(sys.argv[3], Path(directory), start_id=start, host="h")
        size = lambda: 0  # the replayer takes the first spill file over: the next batch starts a new one
    await sink.open()
    sink.plan(batch(0, 3), chain)
    await sink.flush()
    while kind == "redis" and sink._open is not None:
        await asyncio.sleep(0.01)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size() + 300, hard))  # the next batch fits in part
    sink.plan(batch(3, 3), chain)
    for _ in range(2):
        try:
            await sink.flush()
        except OSError as exc:
            print("write failed:", exc.errno, flush=True)
        else:
            raise SystemExit("the write should have failed")
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
    await sink.flush()
    await sink.close(chain)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def run_failing_write(kind: str, directory: Path, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", FAILING_WRITE, kind, str(directory), *extra],
        capture_output=True, text=True, check=False, cwd=Path(__file__).parent.parent, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("write failed") == 2
    return proc.stdout


def test_a_batch_whose_write_fails_half_way_is_written_once_on_retry(tmp_path):
    run_failing_write("file", tmp_path)
    result = verify([tmp_path])
    assert result.ok, result.problems
    records = [orjson.loads(line) for line in lines_of(only_file(tmp_path))]
    assert [r.get("n") for r in records] == [0, 1, 2, 3, 4, 5, None] and records[-1]["records"] == 6


def test_a_spill_append_that_fails_half_way_is_written_once_on_retry(tmp_path):
    from tests.conftest import dead_url

    run_failing_write("redis", tmp_path, dead_url().replace("http", "redis") + "/0/audit")
    records = [orjson.loads(line) for spill in sorted(tmp_path.glob("spill-*.jsonl")) for line in lines_of(spill)]
    assert [r.get("n") for r in records] == [0, 1, 2, 3, 4, 5, None]
    assert [r["seq"] for r in records] == list(range(1, 8))
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"] and record_hash(after) == after["hash"]


CLOSE_ON_A_FULL_DISK = """
import asyncio, os, resource, signal, sys, time
from pathlib import Path
from proxy.audit import Chain
from proxy.ids import ulid
from proxy.records import base_record
from proxy.sinks import FileSink

async def main(directory):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    start = ulid()
    chain = Chain(f"h:{os.getpid()}:{start}")
    sink = FileSink(Path(directory), start_id=start, rotate_bytes=10**9, compress_rotated=False, host="h")
    await sink.open()
    sink.plan([base_record("decision", time.time(), "r") for _ in range(3)], chain)
    await sink.flush()
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (sink.current_path.stat().st_size, hard))  # the disk is full
    sink.plan([base_record("decision", time.time(), "r") for _ in range(2)], chain)
    await sink.close(chain)  # logs what it could not write, does not raise
    print("closed", flush=True)

asyncio.run(main(sys.argv[1]))
"""


def test_a_file_sink_that_cannot_write_at_shutdown_says_how_many_records_are_lost(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CLOSE_ON_A_FULL_DISK, str(tmp_path)],
        capture_output=True, text=True, check=False, cwd=Path(__file__).parent.parent, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and "closed" in proc.stdout, proc.stderr
    assert "audit.records_lost" in proc.stdout and "records=3" in proc.stdout  # 2 decisions and the seal
    result = verify([tmp_path])
    assert result.ok and len(result.writers) == 1
    (state,) = result.writers.values()
    assert state.records == 3 and not state.sealed
