"""Time ``shadow-proxy report`` over a large synthetic audit trail.

    .venv/bin/python bench/report_bench.py [--records 1000000] [--keep DIR] [--format json]

Generates realistic decision records (two routes, three segments, a shadow -> assisted ->
autonomous history with transitions, model errors, skips, fallbacks, costs, outcomes for 5 % of
requests, a replayed file of duplicates), written as a writer would: rotated files gzipped, the
live file plain. Then runs the report in a child process and prints wall time, records per second
and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import gzip
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proxy.ids import ulid
from proxy.records import rfc3339

START = 1_795_000_000.0  # 2026-11-17
SPAN_S = 7 * 86400
ROTATE_RECORDS = 200_000
LABELS = {"loan-decision": ["approve", "decline", "review"], "fraud-check": ["allow", "block", "challenge"]}
SEGMENTS = {"loan-decision": ["eu", "us", "apac"], "fraud-check": ["web", "app"]}
STAGES = [(0.0, "shadow"), (2.5, "assisted"), (5.0, "autonomous")]  # (day, stage) per route


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def _stage_at(day: float) -> str:
    return [stage for start, stage in STAGES if day >= start][-1]


def _model_side(rng: random.Random, route: str, truth: str, stage: str) -> dict:
    labels = LABELS[route]
    side = {
        "status": 200,
        "latency_ms": round(rng.lognormvariate(3.6, 0.5), 3),
        "decision": None,
        "error": None,
        "detail": None,
        "sha256": _hex(rng),
        "confidence": round(rng.random(), 3),
        "explanation": ["income", "history"],
        "cost": 0.0004,
        "skipped": None,
        "sampled_at": 1.0,
    }
    roll = rng.random()
    if stage == "shadow" and roll < 0.10:
        side.update(
            status=None,
            latency_ms=None,
            sha256=None,
            confidence=None,
            explanation=None,
            cost=0,
            skipped="sampled_out",
            sampled_at=0.9,
        )
    elif roll < 0.11:
        side.update(
            status=None,
            latency_ms=None,
            sha256=None,
            confidence=None,
            explanation=None,
            cost=0,
            skipped="rate",
        )
    elif roll < 0.115:
        side.update(status=503, error="error", detail="HTTP 503", confidence=None, explanation=None)
    elif roll < 0.118:
        side.update(
            status=None,
            latency_ms=1000,
            sha256=None,
            error="timeout",
            detail="timed out after 1s",
            confidence=None,
            explanation=None,
        )
    else:
        side["decision"] = truth if rng.random() < 0.93 else rng.choice(labels)
    return side


def decision(rng: random.Random, ts: float, route: str) -> tuple[dict, str]:
    """One decision record and the request's true label."""
    day = (ts - START) / 86400
    stage = _stage_at(day)
    truth = rng.choices(LABELS[route], weights=[70, 25, 5])[0]
    primary_label = truth if rng.random() < 0.96 else rng.choice(LABELS[route])
    rid = ulid(ts)
    model = _model_side(rng, route, truth, stage)
    primary = {
        "status": 200,
        "latency_ms": round(rng.lognormvariate(2.5, 0.4), 3),
        "decision": primary_label,
        "error": None,
        "detail": None,
        "sha256": _hex(rng),
    }
    fallback = None
    if stage == "assisted":
        model["suggestion_shown"] = model["decision"] is not None and rng.random() < 0.97
        model["suggestion_late"] = False
    if stage == "autonomous":
        primary["sampled"] = rng.random() < 0.1
        if model["decision"] is None:
            fallback = "error" if model["error"] else "budget"
        elif not primary["sampled"]:
            primary.update(status=None, latency_ms=None, decision=None, sha256=None)
    agree = (
        None if primary["decision"] is None or model["decision"] is None else primary["decision"] == model["decision"]
    )
    record = {
        "type": "decision",
        "id": ulid(ts),
        "ts": rfc3339(ts),
        "route": route,
        "stage": stage,
        "model_version": "credit-v7" if day < 4 else "credit-v8",
        "served_by": "model" if stage == "autonomous" and fallback is None else "primary",
        "fallback": fallback,
        "request": {
            "id": rid,
            "method": "POST",
            "path": "/v1/decide",
            "sha256": _hex(rng),
            "segment": rng.choice(SEGMENTS[route]),
        },
        "primary": primary,
        "model": model,
        "agree": agree,
    }
    return record, truth


def transitions() -> list[tuple[float, dict]]:
    out = []
    for route in LABELS:
        for (day, stage), (_, prev) in zip(STAGES[1:], STAGES, strict=False):
            ts = START + day * 86400
            evidence = {"samples": 2400, "agreement": 0.93, "agreement_lower": 0.92, "error_rate": 0.008}
            out.append(
                (
                    ts,
                    {
                        "type": "transition",
                        "id": ulid(ts),
                        "ts": rfc3339(ts),
                        "route": route,
                        "event": "promote",
                        "from": prev,
                        "to": stage,
                        "actor": "policy",
                        "reason": f"gate {prev}_to_{stage} passed",
                        "version": 2,
                        "evidence": evidence,
                    },
                )
            )
    return out


class Writer:
    """Writes one writer's chain fields and rotates files every ROTATE_RECORDS records."""

    def __init__(self, folder: Path, rng: random.Random) -> None:
        self.folder, self.rng = folder, rng
        self.start = ulid(START)
        self.name = f"bench-host:4242:{self.start}"
        self.seq, self.n, self.prev = 0, 0, "0" * 64
        self.file_no, self.lines = 0, []

    def write(self, record: dict) -> bytes:
        self.seq += 1
        record.update(writer=self.name, seq=self.seq, prev_hash=self.prev, hash=_hex(self.rng))
        self.prev = record["hash"]
        line = orjson.dumps(record) + b"\n"
        self.lines.append(line)
        if len(self.lines) >= ROTATE_RECORDS:
            self.flush(gz=True)
        return line

    def flush(self, gz: bool) -> None:
        self.file_no += 1
        path = self.folder / f"audit-{self.start}-bench-host-4242-{self.file_no:06d}.jsonl"
        data = b"".join(self.lines)
        if gz:
            path.with_suffix(".jsonl.gz").write_bytes(gzip.compress(data, compresslevel=6))
        else:
            path.write_bytes(data)
        self.lines = []


def generate(folder: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    writer = Writer(folder, rng)
    pending = transitions()
    outcomes: list[bytes] = []
    replay: list[bytes] = []
    for i in range(n):
        ts = START + SPAN_S * i / n
        while pending and pending[0][0] <= ts:
            writer.write(pending.pop(0)[1])
        route = "loan-decision" if rng.random() < 0.7 else "fraud-check"
        record, truth = decision(rng, ts, route)
        line = writer.write(record)
        if rng.random() < 0.05:
            outcomes.append(
                orjson.dumps(
                    {
                        "type": "outcome",
                        "id": ulid(ts),
                        "ts": rfc3339(ts + 3600),
                        "route": route,
                        "request_id": record["request"]["id"],
                        "outcome": truth,
                    }
                )
                + b"\n"
            )
        if i % 1000 == 0:
            replay.append(line)
    writer.flush(gz=False)
    # outcomes from the admin API's own writer (sorts before the proxy's files: joined either way)
    (folder / "audit-00000000000000000000000000-admin-1-000001.jsonl").write_bytes(b"".join(outcomes))
    (folder / "zz-redis-export-replay.jsonl").write_bytes(b"".join(replay))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    parser.add_argument("--format", default="json")
    parser.add_argument("--by", default="segment")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.iterdir()):
            t0 = time.perf_counter()
            generate(folder, args.records)
            print(f"generated {args.records:,} decisions in {time.perf_counter() - t0:.1f} s into {folder}")
        size = sum(p.stat().st_size for p in folder.iterdir())
        out = Path(tmp) / f"report.{args.format}"
        # VmHWM: the child's own peak RSS (ru_maxrss would include the forked parent's, kept across exec)
        code = (
            "import argparse, sys; from proxy import report; p = argparse.ArgumentParser(); "
            "report.add_arguments(p); rc = report.run(p.parse_args(sys.argv[1:])); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]); "
            "sys.exit(rc)"
        )
        cmd = [
            sys.executable,
            "-c",
            code,
            str(folder),
            "--format",
            args.format,
            "--by",
            args.by,
            "-o",
            str(out),
        ]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak_mib = int(done.stdout.split()[-1]) / 1024
        print(
            f"report of {args.records:,} decisions ({size / 2**20:,.0f} MiB on disk, --format {args.format} "
            f"--by {args.by}): {wall:.1f} s, {args.records / wall:,.0f} decisions/s, "
            f"peak RSS {peak_mib:,.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
