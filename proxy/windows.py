"""Window statistics (SPEC §6): what a gate or rollback rule counts, bucketed by time. Pure.

Every decision record adds to the buckets of its route and *stage epoch* (incremented on each stage
change), so "records since the route entered its current stage" is simply "the current epoch". Buckets
come in three resolutions, without keeping records: 1 s buckets (kept 1 h), 1 min (kept 3 d), 1 h
(kept 35 d). A window is answered by :func:`plan_buckets`: hours for its aligned middle, minutes and
seconds only at its edges, so a 24 h window costs at most 84 buckets and a 5 min window 64, not
thousands (see there for the precision).
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


def bucket_start(ts: float, resolution: int) -> int:
    return int(ts // resolution) * resolution


RETENTION: dict[int, int] = dict(TIERS)
# How long after a bucket's end a store must still have it: its tier's retention, plus one bucket of
# slack between planning a query and running it. Stores keep a bucket ``retention + 2 * resolution``
# after its start (Redis: a TTL of that much from every write).
KEEP_S: dict[int, int] = {resolution: retention + 2 * resolution for resolution, retention in TIERS}
# A window whose end is at most this far before now is "up to now": nothing newer than its end exists
# yet (the query runs moments after the caller read the clock), so a bucket may reach past the end.
OPEN_END_S = 1.0


def retained(resolution: int, start: int, now: float) -> bool:
    """True when the bucket still holds its data at ``now``: it ends within its tier's retention."""
    return start + resolution + RETENTION[resolution] > now


def plan_buckets(since: float, until: float, now: float) -> list[tuple[int, int]]:
    """The ``(resolution, start)`` buckets whose sum answers the window ``[since, until]`` at ``now``.

    Records are bucketed by whole second, so the window is the seconds ``floor(since)`` to
    ``floor(until)``. The buckets are disjoint and aligned, each one still retained, newest first. The
    window is covered from its newest end backwards by the coarsest bucket that fits: seconds up to
    the next whole minute, minutes up to the next whole hour, hours for the middle, then minutes and
    seconds down to ``since``.

    Precision: the plan covers exactly those seconds, except

    * at the oldest edge, where the finest tier no longer reaches (1 s buckets older than 1 h, 1 min
      older than 3 d), the bucket of the next tier containing ``since`` is taken whole: under 60 s
      (resp. 3600 s) more than asked, as before; with ``since`` at the start of the stage (the usual
      case for young stages) the extra part holds no records of the epoch anyway;
    * at the newest edge, when ``until`` is within :data:`OPEN_END_S` of ``now`` (or after it), the
      bucket containing ``until`` is taken at the coarsest tier starting inside the window: it
      holds nothing newer than ``now`` but records stamped by a clock slightly ahead;
    * an end older than a tier's retention is likewise widened to the bucket of the next tier (not a
      query the proxy makes); seconds older than 35 days are gone and not covered.

    Count: with an open end (the proxy's queries) at most ``1 + hours + 59 + 59 + 1`` buckets, where
    ``hours`` is the number of whole hours in the window (24 h: 84 at most, 15 min: 74, 5 min: 64);
    otherwise at most ``4 * 59 + hours + 2``. ``tests/test_policy.py`` checks all of this as a property.
    """
    low, end = int(since // 1), int(until // 1) + 1  # the window's seconds: [low, end)
    if end <= low:
        return []
    plan: list[tuple[int, int]] = []
    pos = end  # seconds from pos on are covered
    if until >= now - OPEN_END_S:
        for resolution, _ in reversed(TIERS):
            start = bucket_start(end - 1, resolution)
            if start >= low and retained(resolution, start, now):
                plan.append((resolution, start))
                pos = start
                break
    while pos > low:
        for resolution, _ in reversed(TIERS):  # the coarsest bucket that ends at pos and fits
            start = pos - resolution
            if pos % resolution == 0 and start >= low and retained(resolution, start, now):
                plan.append((resolution, start))
                pos = start
                break
        else:  # the finest tier that still holds pos - 1 is too coarse to end at pos or to fit
            for resolution, _ in TIERS:
                start = bucket_start(pos - 1, resolution)
                if retained(resolution, start, now):
                    while plan and plan[-1][1] < start + resolution:  # finer buckets it contains
                        plan.pop()
                    plan.append((resolution, start))
                    pos = start
                    break
            else:
                break  # older than every tier keeps
    return plan


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
