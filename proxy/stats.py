"""Statistics shared by the policy engine and the report: pure functions, no I/O, no clock.

- :func:`wilson_interval`: two-sided Wilson score interval of a proportion (SPEC §6 uses z = 1.96).
- :func:`cohen_kappa`: chance-corrected agreement of primary vs model labels from a confusion matrix.
- :func:`bucket_of` / :func:`bucket_value` / :class:`LatencyHistogram`: a log-bucketed latency
  histogram with constant memory, mergeable across windows, replicas and files.

Bucket formula (stable: a store keeps these indexes as Redis hash fields, so never change it)::

    GAMMA = 1.02                      # 1 + 2 * 0.01
    index = 0                                         if ms <= MIN_MS (0.01 ms)
    index = ceil(log(ms / MIN_MS) / log(GAMMA))       otherwise

Bucket ``i >= 1`` holds latencies in ``(MIN_MS * GAMMA**(i-1), MIN_MS * GAMMA**i]``. Its
representative value (:func:`bucket_value`) is ``MIN_MS * GAMMA**i * 2 / (GAMMA + 1)``, the point
equally far, relatively, from both bounds, so any latency above the floor reads back within
``(GAMMA - 1) / (GAMMA + 1)`` (< 0.99 %) of its true value. Bucket 0 reads back as 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

MIN_MS = 0.01
GAMMA = 1.02
RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1)
_LOG_GAMMA = math.log(GAMMA)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Two-sided Wilson score interval of ``successes / n``; ``(0.0, 1.0)`` when ``n == 0``.

    Bounds are clamped to [0, 1]; ``0/n`` has lower bound exactly 0 and ``n/n`` upper bound exactly 1.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def cohen_kappa(confusion: Mapping[tuple[Hashable, Hashable], int]) -> float | None:
    """Cohen's kappa from ``(primary_label, model_label) -> count``.

    None when undefined: no observations, or chance agreement ``p_e == 1`` (both sides always gave
    the same single label). Labels are compared with ``==``/hash, so callers that must keep ``true``
    apart from ``1`` pass canonical JSON strings as labels.
    """
    n = sum(confusion.values())
    if n <= 0:
        return None
    rows: dict[Hashable, int] = {}
    cols: dict[Hashable, int] = {}
    agreed = 0
    for (primary, model), count in confusion.items():
        rows[primary] = rows.get(primary, 0) + count
        cols[model] = cols.get(model, 0) + count
        if primary == model:
            agreed += count
    p_o = agreed / n
    p_e = sum(rows[label] * cols.get(label, 0) for label in rows) / (n * n)
    if math.isclose(p_e, 1.0):
        return None
    return (p_o - p_e) / (1 - p_e)


def bucket_of(ms: float) -> int:
    """Histogram bucket index of a latency in milliseconds (see the module docstring for the formula)."""
    if ms <= MIN_MS:
        return 0
    if not ms < math.inf:
        raise ValueError(f"latency must be finite, got {ms!r}")
    return max(1, math.ceil(math.log(ms / MIN_MS) / _LOG_GAMMA))


def bucket_value(index: int) -> float:
    """Representative latency (ms) of a bucket: its relative midpoint; 0.0 for bucket 0."""
    if index < 0:
        raise ValueError(f"bucket index must be >= 0, got {index}")
    if index == 0:
        return 0.0
    return MIN_MS * GAMMA**index * 2 / (GAMMA + 1)


class LatencyHistogram:
    """Counts per latency bucket: constant memory (a few hundred buckets cover 10 µs to hours)."""

    __slots__ = ("_buckets", "_count")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self._count = 0

    def record(self, ms: float, count: int = 1) -> None:
        """Add ``count`` observations of latency ``ms``."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count:
            index = bucket_of(ms)
            self._buckets[index] = self._buckets.get(index, 0) + count
            self._count += count

    def merge(self, other: LatencyHistogram) -> None:
        """Add every observation of ``other`` to this histogram (``other`` is unchanged)."""
        for index, count in other._buckets.items():
            self._buckets[index] = self._buckets.get(index, 0) + count
        self._count += other._count

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile (``0 <= q <= 1``) as a bucket's value; None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q}")
        if not self._count:
            return None
        rank = max(1, math.ceil(q * self._count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                return bucket_value(index)
        raise AssertionError("unreachable: bucket counts add up to count")

    @property
    def count(self) -> int:
        return self._count

    def to_dict(self) -> dict[int, int]:
        """``{bucket index: count}``, only non-empty buckets (a copy)."""
        return dict(self._buckets)

    @classmethod
    def from_dict(cls, d: Mapping[int | str | bytes, int | str | bytes]) -> LatencyHistogram:
        """Inverse of :meth:`to_dict`; keys and counts may be strings or bytes (as Redis returns them)."""
        hist = cls()
        for key, value in d.items():
            index, count = int(key), int(value)
            if index < 0 or count < 0:
                raise ValueError(f"bad histogram bucket {key!r}: {value!r}")
            if count:
                hist._buckets[index] = hist._buckets.get(index, 0) + count
                hist._count += count
        return hist

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return self._buckets == other._buckets

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LatencyHistogram(count={self._count}, p99={self.quantile(0.99)})"
