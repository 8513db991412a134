"""Build audit records from finished exchanges and admin events. Pure: values in, dicts out.

Records are built already normalised for canonical hashing (floats through :func:`num`, JSON from
upstreams through :func:`jcs_value`), so the chain hashes them without another walk.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

from proxy.audit import REDACTED, Redactor, body_for_record, digest, jcs_value, num
from proxy.decisions import parse_json
from proxy.exchange import Exchange, ModelCall, Reply
from proxy.ids import ulid

_second: list[object] = [None, ""]  # the last whole second formatted, and its text


def rfc3339(ts: float) -> str:
    """``2026-11-22T10:00:00.123456Z`` for a POSIX timestamp (the date part is formatted once a second)."""
    whole = int(ts)
    micros = round((ts - whole) * 1e6)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    if _second[0] != whole:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{micros:06d}Z"


def base_record(kind: str, ts: float, route: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"type": kind, "id": ulid(ts), "ts": rfc3339(ts)}
    if route is not None:
        record["route"] = route
    return record


def _first_values(query_string: str) -> dict[str, str]:
    """A query string as the segment expression sees it: the first value of each name."""
    out: dict[str, str] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        out.setdefault(name, value)
    return out


def _ms(value: float | None) -> float | int | None:
    return None if value is None else num(round(value, 3))


class RecordBuilder:
    """Turns exchanges of one proxy into ``decision`` records (bodies, redaction, agreement)."""

    def __init__(self, redactor: Redactor, include_bodies: bool) -> None:
        self.redactor = redactor
        self.include_bodies = include_bodies

    def decision(self, ex: Exchange) -> dict[str, Any]:
        route = ex.route
        decisions = route.decisions
        primary_doc = parse_json(ex.primary.body) if ex.primary is not None else None
        primary_decision = decisions.primary.decision_of(primary_doc)
        agree = decisions.compare(primary_decision, ex.model.decision)
        record = base_record("decision", ex.ts, route.name)
        record.update(
            stage=ex.stage.value,
            model_version=route.model_version,
            served_by=ex.served_by.value,
            fallback=ex.fallback.value if ex.fallback is not None else None,
            request=self._request(ex),
            primary=self._primary(ex, primary_doc, primary_decision),
            model=self._model(ex),
            agree=agree,
        )
        return record

    def _request(self, ex: Exchange) -> dict[str, Any]:
        decisions = ex.route.decisions
        out: dict[str, Any] = {
            "id": ex.request_id,
            "method": ex.method,
            "path": ex.path,
            "sha256": digest(ex.body),
            "segment": None,
        }
        needs_doc = ex.route.has_segment or self.include_bodies
        doc = self.redactor.body(parse_json(ex.body)) if needs_doc else None
        if ex.route.has_segment:
            headers: dict[str, str] = {}
            if ex.route.segment_reads_headers:  # most segments read the body only
                headers = {k.lower(): v for k, v in ex.headers.items()}
                if self.redactor:
                    headers = self.redactor.headers(headers)
            query = _first_values(ex.query) if ex.route.segment_reads_query else {}
            out["segment"] = jcs_value(decisions.segment(ex.method, ex.path, query, headers, doc))
        if self.include_bodies:
            out["body"] = self._body(ex.body, doc)
        return out

    def _body(self, raw: bytes | None, redacted_doc: Any) -> Any:
        if self.redactor.touches_body and redacted_doc is None and raw:
            return REDACTED  # not JSON: the configured paths cannot be found, so store nothing
        return body_for_record(raw, redacted_doc)

    def _side(self, reply: Reply | None) -> dict[str, Any]:
        if reply is None:
            return {"status": None, "latency_ms": None, "error": None, "detail": None, "sha256": None}
        return {
            "status": reply.status,
            "latency_ms": _ms(reply.latency_ms),
            "error": reply.error,
            "detail": reply.detail,
            "sha256": digest(reply.body),
        }

    def _primary(self, ex: Exchange, doc: Any, decision: Any) -> dict[str, Any]:
        out = self._side(ex.primary)
        if self.redactor.touches_body and doc is not None:
            doc = self.redactor.body(doc)
            decision = ex.route.decisions.primary.decision_of(doc)
        out["decision"] = jcs_value(decision)
        if ex.primary_sampled is not None:
            out["sampled"] = ex.primary_sampled
        if self.include_bodies:
            out["body"] = self._body(ex.primary.body if ex.primary else None, doc)
        return out

    def _model(self, ex: Exchange) -> dict[str, Any]:
        call: ModelCall = ex.model
        out = self._side(call.reply)
        if call.error is not None:
            out["error"] = call.error
        extracted = call.extracted
        doc = call.doc
        if self.redactor.touches_body and doc is not None:
            doc = self.redactor.body(doc)
            extracted = ex.route.decisions.model.extract(doc)
        out.update(
            decision=jcs_value(extracted.decision) if extracted else None,
            confidence=jcs_value(extracted.confidence) if extracted else None,
            explanation=jcs_value(extracted.explanation) if extracted else None,
            cost=num(round(call.cost, 9)),
            skipped=call.skipped.value if call.skipped is not None else None,
            sampled_at=num(call.sampled_at),
        )
        if call.suggestion_shown is not None:
            out["suggestion_shown"] = call.suggestion_shown
            out["suggestion_late"] = bool(call.suggestion_late)
        if self.include_bodies:
            out["body"] = self._body(call.reply.body if call.reply else None, doc)
        return out
