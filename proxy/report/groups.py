"""The statistics of one group of decision records (SPEC §6 definitions, §7). Pure: no I/O.

Constant memory per group: counters, two latency histograms (:class:`proxy.stats.LatencyHistogram`)
and confusion counts over at most :data:`MAX_LABELS` labels a side.

Decision labels are keyed by their canonical JSON text, so ``true``, ``1`` and ``"1"`` stay apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.decisions import json_equal
from proxy.stats import LatencyHistogram
from proxy.windows import sample_state

OTHER = "(other)"  # never canonical JSON, so it cannot collide with a real label
MAX_LABELS = 1000
STAGE_ORDER = {"shadow": 0, "assisted": 1, "autonomous": 2}
GroupKey = tuple[str, str, str | None]  # route, stage, --by value (canonical JSON text) or None


class BadRecord(Exception):
    """A record that parses as JSON but lacks what its type needs; reported like a malformed line."""


_STRING_LABELS: dict[str, str] = {}  # the few labels most routes use, serialised once


def label(value: Any) -> str:
    """Canonical JSON text of a decision or group value."""
    if type(value) is str:
        text = _STRING_LABELS.get(value)
        if text is None:
            text = orjson.dumps(value).decode()
            if len(_STRING_LABELS) < 4096:
                _STRING_LABELS[value] = text
        return text
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _judge(decision: Any, truth: Any) -> bool | None:
    if decision is None or truth is None:
        return None
    return json_equal(decision, truth)


@dataclass(frozen=True)
class Judge:
    """How one route's decisions are compared with outcomes and labelled in the confusion matrix.

    ``primary(decision, truth)`` / ``model(decision, truth)``: correct, wrong or None (not judged).
    ``model_label``: maps a model label (canonical JSON) into the primary's labels, for ``compare: map``.
    The default judges by JSON equality (a bool is never a number) and labels as written.
    """

    primary: Callable[[Any, Any], bool | None] = _judge
    model: Callable[[Any, Any], bool | None] = _judge
    model_label: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Accuracy:
    """Decisions judged against outcomes, and how many were right."""

    n: int = 0
    correct: int = 0

    def add(self, verdict: bool | None) -> None:
        if verdict is not None:
            self.n += 1
            self.correct += verdict

    def merge(self, other: Accuracy) -> None:
        self.n += other.n
        self.correct += other.correct


def _bump(counts: dict[str, int], key: str, by: int = 1) -> None:
    counts[key] = counts.get(key, 0) + by


def _latency(value: Any) -> float | None:
    if type(value) is float or type(value) is int:
        return value
    return None


class GroupStats:
    """Everything the report shows for one route x stage (x group); mergeable."""

    __slots__ = (
        "_model_labels",
        "_primary_labels",
        "agreed",
        "attempted",
        "awaiting",
        "confusion",
        "cost",
        "errors",
        "excluded",
        "fallback",
        "first_ts",
        "last_ts",
        "matched",
        "model_acc",
        "model_ms",
        "ok",
        "primary_acc",
        "primary_ms",
        "requests",
        "samples",
        "skipped",
        "truncated",
        "unpaired",
    )

    def __init__(self) -> None:
        self.requests = self.samples = self.agreed = self.unpaired = self.excluded = 0
        self.attempted = self.ok = self.awaiting = self.matched = 0
        self.cost = 0.0
        self.first_ts = self.last_ts = ""
        self.errors: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.fallback: dict[str, int] = {}
        self.confusion: dict[tuple[str, str], int] = {}
        self.truncated = False
        self._primary_labels: set[str] = set()
        self._model_labels: set[str] = set()
        self.primary_ms = LatencyHistogram()
        self.model_ms = LatencyHistogram()
        self.primary_acc = Accuracy()
        self.model_acc = Accuracy()

    def add(self, record: dict, primary: dict, model: dict, ts: str, judge: Judge) -> bool | None:
        """Count one decision record; returns its agreement if it is a sample, else None."""
        self.requests += 1
        if not self.first_ts or ts < self.first_ts:
            self.first_ts = ts
        if ts > self.last_ts:
            self.last_ts = ts
        agree = self._pairing(record, primary, model, judge)
        self._model_call(model)
        if (reason := record.get("fallback")) is not None:
            _bump(self.fallback, str(reason))
        if (ms := _latency(primary.get("latency_ms"))) is not None:
            self.primary_ms.record(ms)
        cost = model.get("cost")
        if type(cost) is float or type(cost) is int:
            self.cost += cost
        return agree

    def _pairing(self, record: dict, primary: dict, model: dict, judge: Judge) -> bool | None:
        agree = record.get("agree")
        state = sample_state(record.get("stage"), agree, primary, model)
        if state == "unpaired":
            self.unpaired += 1
            return None
        if state == "excluded":
            self.excluded += 1
            return None
        self.samples += 1
        self.agreed += agree
        p = self._label(self._primary_labels, label(primary.get("decision")))
        m = label(model.get("decision"))
        m = self._label(self._model_labels, judge.model_label.get(m, m))
        self.confusion[p, m] = self.confusion.get((p, m), 0) + 1
        return agree

    def _label(self, seen: set[str], text: str) -> str:
        if text in seen:
            return text
        if len(seen) >= MAX_LABELS:  # bounded memory for free-form decisions (e.g. amounts)
            self.truncated = True
            return OTHER
        seen.add(text)
        return text

    def _model_call(self, model: dict) -> None:
        skipped = model.get("skipped")
        if skipped is not None:
            _bump(self.skipped, str(skipped))  # not an attempt: neither an error nor a latency
            return
        self.attempted += 1
        error = model.get("error")
        if error is None:
            self.ok += 1
        else:
            _bump(self.errors, str(error))
        if (ms := _latency(model.get("latency_ms"))) is not None:
            self.model_ms.record(ms)

    def merge(self, other: GroupStats) -> None:
        """Add ``other``'s counts to this group's (the confusion label cap applies per group)."""
        for name in (
            "requests",
            "samples",
            "agreed",
            "unpaired",
            "excluded",
            "attempted",
            "ok",
            "awaiting",
            "matched",
            "cost",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in (
            (self.errors, other.errors),
            (self.skipped, other.skipped),
            (self.fallback, other.fallback),
        ):
            for key, n in theirs.items():
                _bump(mine, key, n)
        for cell, n in other.confusion.items():
            self.confusion[cell] = self.confusion.get(cell, 0) + n
        self.truncated = self.truncated or other.truncated
        self.first_ts = min(filter(None, (self.first_ts, other.first_ts)), default="")
        self.last_ts = max(self.last_ts, other.last_ts)
        self.primary_ms.merge(other.primary_ms)
        self.model_ms.merge(other.model_ms)
        self.primary_acc.merge(other.primary_acc)
        self.model_acc.merge(other.model_acc)
