"""`shadow-proxy demo`, the README's first command: the whole ladder plays out, and the trail verifies."""

from __future__ import annotations

import subprocess
import sys

from proxy.verify import verify
from tests.conftest import read_records


def test_the_demo_climbs_the_ladder_and_rolls_back_after_the_drift(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--audit-dir", str(tmp_path), "--seconds", "60"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trail = tmp_path / "audit"
    moves = [(r["from"], r["to"]) for r in read_records(trail) if r["type"] == "transition"]
    assert moves[:2] == [("shadow", "assisted"), ("assisted", "autonomous")]
    assert moves[-1][1] == "shadow" and ("autonomous", "assisted") in moves  # the drift rolled it back
    assert verify([trail]).ok
    text = " ".join(proc.stdout.split())  # rich wraps lines at the width of a pipe
    assert "hash chain verified" in text and "client errors: 0" in text
