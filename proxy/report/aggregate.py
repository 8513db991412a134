"""Folding a stream of audit records into a report's figures (SPEC §6 definitions, §7). Pure: no I/O.

Memory is constant in the number of decision records: one :class:`GroupStats` per route x stage
(x group), agreement counts per route and minute for the timeline, one entry per *outcome* for the
outcome join, and the transitions themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.report.groups import BadRecord, GroupKey, GroupStats, Judge, label
from proxy.report.times import ts_key

DEFAULT_JUDGE = Judge()


@dataclass(frozen=True)
class Scope:
    """Which decisions and transitions count: routes (empty: all), ``since <= ts < until``
    (canonical timestamps, None: open), and the ``--by`` grouping (None, segment, model_version, day).
    """

    routes: frozenset[str] = frozenset()
    since: str | None = None
    until: str | None = None
    by: str | None = None

    def admits(self, route: str, ts: str) -> bool:
        if self.routes and route not in self.routes:
            return False
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


def collect_outcomes(records: Iterable[dict]) -> dict[str, Any]:
    """``request_id -> outcome`` from the outcome records (the latest one per request id wins).
    Outcomes are joined whatever their time: the truth often arrives after the report's window.
    """
    latest: dict[str, tuple[str, Any]] = {}
    for record in records:
        rid = record.get("request_id")
        if record.get("type") != "outcome" or not isinstance(rid, str) or "outcome" not in record:
            continue
        try:
            ts = ts_key(record["ts"])
        except (KeyError, TypeError, ValueError):
            ts = ""
        if rid not in latest or ts >= latest[rid][0]:
            latest[rid] = (ts, record["outcome"])
    return {rid: outcome for rid, (_, outcome) in latest.items()}


class Aggregator:
    """Consumes records one at a time (:meth:`add`); then :meth:`finish` joins the outcomes.

    ``outcomes`` comes from a first pass (:func:`collect_outcomes`) so that an outcome written before
    or after its decision joins the same way without holding every decision in memory.
    """

    def __init__(self, scope: Scope, outcomes: Mapping[str, Any], judges: Mapping[str, Judge] | None = None) -> None:
        self.scope = scope
        self.outcomes = outcomes
        self.judges = dict(judges or {})
        self.groups: dict[GroupKey, GroupStats] = {}
        self.timeline: dict[str, dict[str, list[int]]] = {}  # route -> minute -> [samples, agreed]
        self.transitions: list[dict[str, Any]] = []
        self.counts = dict.fromkeys(
            ("records", "decisions", "transitions", "outcomes", "seals", "other", "out_of_scope"), 0
        )
        self._filtered = bool(scope.routes or scope.since or scope.until)
        self._cell_key: tuple[str, str] = ("", "")
        self._cell: list[int] = [0, 0]
        # request id -> (ts, group, primary decision, model decision) of its latest decision
        self._latest: dict[str, tuple[str, GroupKey, Any, Any]] = {}

    def add(self, record: dict[str, Any]) -> None:
        """Count one (already de-duplicated) record; raises :class:`BadRecord` when it is unusable."""
        self.counts["records"] += 1
        kind = record.get("type")
        if kind == "decision":
            self._decision(record)
        elif kind == "transition":
            self._transition(record)
        elif kind == "outcome":
            if not isinstance(record.get("request_id"), str) or "outcome" not in record:
                raise BadRecord("outcome record without request_id or outcome")
            self.counts["outcomes"] += 1
        else:
            self.counts["seals" if kind == "seal" else "other"] += 1

    def _decision(self, record: dict[str, Any]) -> None:
        route, primary, model = record.get("route"), record.get("primary"), record.get("model")
        if not (isinstance(route, str) and isinstance(primary, dict) and isinstance(model, dict)):
            wanted = {"route": str, "primary": dict, "model": dict}
            missing = [k for k, kind in wanted.items() if not isinstance(record.get(k), kind)]
            raise BadRecord(f"decision record without {' or '.join(missing)}")
        ts = _ts(record)
        if self._filtered and not self.scope.admits(route, ts):
            self.counts["out_of_scope"] += 1
            return
        self.counts["decisions"] += 1
        key = (route, str(record.get("stage")), self._group_value(record, ts))
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = GroupStats()
        agree = group.add(record, primary, model, ts, self.judges.get(route, DEFAULT_JUDGE))
        if agree is not None:
            cell = self._timeline_cell(route, ts[:16])
            cell[0] += 1
            cell[1] += agree
        self._join(record, ts, key, primary, model, group)

    def _timeline_cell(self, route: str, minute: str) -> list[int]:
        if (route, minute) != self._cell_key:  # records come in time order: mostly the same cell
            self._cell_key = (route, minute)
            self._cell = self.timeline.setdefault(route, {}).setdefault(minute, [0, 0])
        return self._cell

    def _group_value(self, record: dict[str, Any], ts: str) -> str | None:
        by = self.scope.by
        if by is None:
            return None
        if by == "day":
            return label(ts[:10])
        if by == "segment":
            request = record.get("request")
            return label(request.get("segment") if isinstance(request, dict) else None)
        return label(record.get(by))

    def _join(self, record: dict, ts: str, key: GroupKey, primary: dict, model: dict, group: GroupStats) -> None:
        request = record.get("request")
        rid = request.get("id") if isinstance(request, dict) else None
        if rid not in self.outcomes:
            group.awaiting += 1
            return
        seen = self._latest.get(rid)
        if seen is None or ts >= seen[0]:  # equal times: the later record in reading order wins
            self._latest[rid] = (ts, key, primary.get("decision"), model.get("decision"))

    def _transition(self, record: dict[str, Any]) -> None:
        route = record.get("route")
        if not isinstance(route, str):
            raise BadRecord("transition record without route")
        ts = _ts(record)
        if not self.scope.admits(route, ts):
            self.counts["out_of_scope"] += 1
            return
        self.counts["transitions"] += 1
        fields = ("event", "from", "to", "actor", "reason", "version", "evidence")
        self.transitions.append({"ts": ts, "route": route} | {f: record.get(f) for f in fields})

    def finish(self) -> None:
        """Judge each outcome against the latest decision for its request id (call once, at the end)."""
        for rid, (_, key, primary, model) in self._latest.items():
            group, truth = self.groups[key], self.outcomes[rid]
            judge = self.judges.get(key[0], DEFAULT_JUDGE)
            group.matched += 1
            group.primary_acc.add(judge.primary(primary, truth))
            group.model_acc.add(judge.model(model, truth))
        self.transitions.sort(key=lambda t: t["ts"])

    @property
    def unmatched_outcomes(self) -> int:
        """Outcomes whose request id matched no decision in scope."""
        return len(self.outcomes) - len(self._latest)


def _ts(record: dict[str, Any]) -> str:
    try:
        return ts_key(record["ts"])
    except (KeyError, TypeError, ValueError):
        raise BadRecord(f"{record.get('type')} record without a valid RFC 3339 ts") from None
