"""Window statistics (SPEC §6): what a gate or rollback rule counts, bucketed by time. Pure.

Every decision record adds to the buckets of its route and *stage epoch* (incremented on each stage
change), so "records since the route entered its current stage" is simply "the current epoch". Buckets
come in three resolutions so any window from seconds to weeks is answered by summing at most a few
thousand buckets, without keeping records: 1 s buckets (kept 1 h), 1 min (kept 3 d), 1 h (kept 35 d).
A window is answered from the coarsest resolution at most 1/60 of its length, so the oldest edge is off
by at most one bucket (under 2% of the window).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.stats import LatencyHistogram, wilson_interval

# (resolution in seconds, retention in seconds)
TIERS: tuple[tuple[int, int], ...] = ((1, 3600), (60, 3 * 86400), (3600, 35 * 86400))
BucketKey = tuple[str, int, int, int]  # route, epoch, resolution, bucket start
COUNTS = ("requests", "samples", "agreed", "attempts", "errors", "timeouts", "invalid", "skipped")


def sample_state(stage: Any, agree: Any, primary: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    """``sample``, ``unpaired`` (agree is null) or ``excluded`` by the stage's rule (SPEC §6).

    In assisted stage only requests whose suggestion was shown count; in autonomous stage only the
    ``primary_sample`` share (a fallback's primary answer is not a sample).
    """
    if agree is not True and agree is not False:
        return "unpaired"
    if stage == "assisted" and model.get("suggestion_shown") is False:
        return "excluded"
    if stage == "autonomous" and primary.get("sampled") is False:
        return "excluded"
    return "sample"


def tier_for(window_s: float) -> tuple[int, int]:
    """The (resolution, retention) that answers a window of ``window_s``."""
    for resolution, retention in TIERS:
        if window_s <= resolution * 3600 and window_s <= retention:
            return resolution, retention
    return TIERS[-1]


def bucket_start(ts: float, resolution: int) -> int:
    return int(ts // resolution) * resolution


@dataclass
class WindowStats:
    """Counts and model latency of one bucket, or summed over a window."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    cost: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add_record(self, record: Mapping[str, Any]) -> None:
        """Count one ``decision`` record."""
        c = self.counts
        c["requests"] += 1
        primary, model = record["primary"], record["model"]
        if sample_state(record["stage"], record["agree"], primary, model) == "sample":
            c["samples"] += 1
            c["agreed"] += record["agree"] is True
        self.cost += model.get("cost") or 0.0
        if model.get("skipped") is not None:
            c["skipped"] += 1
            return
        c["attempts"] += 1
        error = model.get("error")
        if error is not None:
            c["errors"] += 1
            c["timeouts"] += error == "timeout"
            c["invalid"] += error == "invalid"
        if model.get("latency_ms") is not None:
            self.latency.record(model["latency_ms"])

    def merge(self, other: WindowStats) -> None:
        for key, value in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        self.cost += other.cost
        self.latency.merge(other.latency)

    @classmethod
    def total(cls, parts: Iterable[WindowStats]) -> WindowStats:
        out = cls()
        for part in parts:
            out.merge(part)
        return out

    # --- the figures gates and rules use --------------------------------------------------------

    @property
    def samples(self) -> int:
        return self.counts["samples"]

    @property
    def agreement(self) -> float | None:
        return self.counts["agreed"] / self.samples if self.samples else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.counts["agreed"], self.samples)

    @property
    def error_rate(self) -> float | None:
        attempts = self.counts["attempts"]
        return self.counts["errors"] / attempts if attempts else None

    @property
    def p99_ms(self) -> float | None:
        return self.latency.quantile(0.99)

    def figures(self) -> dict[str, Any]:
        """The evidence as written into transition records and shown by the admin API."""
        low, high = self.interval
        return {
            "requests": self.counts["requests"],
            "samples": self.samples,
            "agreed": self.counts["agreed"],
            "agreement": _round(self.agreement),
            "agreement_lower": _round(low),
            "agreement_upper": _round(high),
            "attempts": self.counts["attempts"],
            "errors": self.counts["errors"],
            "timeouts": self.counts["timeouts"],
            "invalid": self.counts["invalid"],
            "skipped": self.counts["skipped"],
            "error_rate": _round(self.error_rate),
            "p99_ms": _round(self.p99_ms),
            "cost": _round(self.cost),
        }


def bucketize(entries: Iterable[tuple[str, int, float, Mapping[str, Any]]]) -> dict[BucketKey, WindowStats]:
    """Sum ``(route, epoch, ts, decision record)`` entries into every tier's buckets.

    Records are summed per second first, then each second is merged into its minute and hour: the
    cost is one small merge per distinct second of a batch, not per record.
    """
    seconds: dict[tuple[str, int, int], WindowStats] = {}
    for route, epoch, ts, record in entries:
        key = (route, epoch, int(ts))
        bucket = seconds.get(key)
        if bucket is None:
            seconds[key] = bucket = WindowStats()
        bucket.add_record(record)
    out: dict[BucketKey, WindowStats] = {}
    for (route, epoch, second), stats in seconds.items():
        out[(route, epoch, 1, second)] = stats
        for resolution, _ in TIERS[1:]:
            key4 = (route, epoch, resolution, bucket_start(second, resolution))
            coarse = out.get(key4)
            if coarse is None:
                out[key4] = coarse = WindowStats()
            coarse.merge(stats)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
