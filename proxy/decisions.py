"""Reading and comparing decisions (SPEC §2, §4 ``decision``, §7 ``agree``): the pure core.

No I/O, no clock, no aiohttp. Everything here is compiled once at config load and then called per
request; nothing called per request raises, whatever the upstreams send.

JSON values are compared as JSON, not as Python: a bool is never a number (``true != 1``), ``1 == 1.0``
(JSON has one number type), strings compare by code point (case-sensitive, no Unicode normalisation),
arrays and objects compare deeply by the same rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from typing import Any

import jmespath
import orjson

from proxy.config import Decision, Route

Comparator = Callable[[Any, Any], bool | None]
Search = Callable[[Any], Any]

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
# Unbounded precision: sums and differences of finite decimals are exact, so tolerance edges are exact.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def parse_json(body: bytes | None) -> Any | None:
    """The JSON document in ``body``, or None when it is empty, not valid JSON or not UTF-8.

    A body that is the JSON literal ``null`` also gives None: either way there is no document.
    Never raises.
    """
    if not body:
        return None
    try:
        return orjson.loads(body)
    except Exception:
        return None


def compile_expression(expr: str) -> Search:
    """A function ``search(doc)`` evaluating the JMESPath ``expr``; it returns None on any error.

    A plain dotted field path (``decision``, ``usage.total_tokens``) takes a fast path of dict lookups
    with JMESPath's semantics: a step into a non-object or a missing key gives None. Raises
    :class:`jmespath.exceptions.JMESPathError` for an invalid ``expr`` (config validation rejects those).
    """
    if _DOTTED.fullmatch(expr):
        keys = tuple(expr.split("."))

        def lookup(doc: Any) -> Any:
            for key in keys:
                if not isinstance(doc, dict):
                    return None
                doc = doc.get(key)
            return doc

        return lookup

    compiled = jmespath.compile(expr)

    def search(doc: Any) -> Any:
        try:
            return compiled.search(doc)
        except Exception:
            return None

    return search


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    """Whether ``value`` is a JSON number (not a bool) that is neither infinite nor NaN."""
    return _is_number(value) and (isinstance(value, int) or math.isfinite(value))


def _real(value: Any) -> float | None:
    """``value`` as a finite float when it is a JSON number (not a bool), else None."""
    if not _is_number(value):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class Extracted:
    """What a model response says. Each field is None when absent or of the wrong type."""

    decision: Any | None  # any JSON value; None: missing field, JSON null, or no document
    confidence: float | None  # a finite number (bools rejected); not range-checked here
    usage: float | None  # a finite number >= 0 (bools rejected)
    explanation: Any | None  # any JSON value


_NOTHING = Extracted(None, None, None, None)


class Extractor:
    """Reads a decision (and optionally confidence, usage, explanation) from a parsed JSON document.

    Compiled once at config load; :meth:`extract` and :meth:`decision_of` never raise.
    """

    __slots__ = ("_confidence", "_decision", "_explanation", "_usage")

    def __init__(
        self,
        decision: str,
        *,
        confidence: str | None = None,
        usage: str | None = None,
        explanation: str | None = None,
    ) -> None:
        self._decision = compile_expression(decision)
        self._confidence = compile_expression(confidence) if confidence else None
        self._usage = compile_expression(usage) if usage else None
        self._explanation = compile_expression(explanation) if explanation else None

    def decision_of(self, doc: Any) -> Any | None:
        """The decision in ``doc`` (None when ``doc`` is None, even for a literal expression)."""
        return None if doc is None else self._decision(doc)

    def extract(self, doc: Any) -> Extracted:
        """Every configured field of ``doc``; a field that is not configured is None."""
        if doc is None:
            return _NOTHING
        confidence = _real(self._confidence(doc)) if self._confidence else None
        usage = _real(self._usage(doc)) if self._usage else None
        if usage is not None:
            usage = None if usage < 0 else usage + 0.0  # + 0.0 turns -0.0 into 0.0
        explanation = self._explanation(doc) if self._explanation else None
        return Extracted(self._decision(doc), confidence, usage, explanation)


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: bools are not numbers, numbers compare by value, containers deeply.

    Iterative, so documents as deep as a JSON parser accepts cannot exhaust the stack. NaN (which
    JSON cannot carry) equals NaN, so the relation stays reflexive.
    """
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if isinstance(x, bool) or isinstance(y, bool):
            same = isinstance(x, bool) and isinstance(y, bool) and x == y
        elif _is_number(x):
            same = _is_number(y) and (x == y or (x != x and y != y))
        elif isinstance(x, str):
            same = isinstance(y, str) and x == y
        elif isinstance(x, list | tuple):
            same = isinstance(y, list | tuple) and len(x) == len(y)
            if same:
                stack.extend(zip(x, y, strict=True))
        elif isinstance(x, dict):
            same = isinstance(y, dict) and len(x) == len(y) and all(k in y for k in x)
            if same:
                stack.extend((x[k], y[k]) for k in x)
        elif x is None:
            same = y is None
        else:
            same = type(x) is type(y) and x == y
        if not same:
            return False
    return True


def _decimal(value: int | float) -> Decimal:
    """A number as the decimal it prints as (the shortest repr of a float), exactly."""
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


def _label_key(label: Any) -> Hashable | None:
    """A map key that keeps JSON types apart (``True`` and ``1`` hash alike in Python)."""
    if isinstance(label, bool):
        return ("bool", label)
    if _is_number(label):
        return ("number", label)
    if isinstance(label, str):
        return ("string", label)
    if label is None or isinstance(label, list | dict):
        return None  # null and containers are never map keys
    try:
        hash(label)
    except TypeError:
        return None
    return (type(label), label)


def build_comparator(cfg: Decision) -> Comparator:
    """``compare(primary, model)``: True/False, or None when either side has no decision.

    ``exact``: :func:`json_equal`. ``numeric``: both sides must be finite numbers (else None); they
    agree iff ``|primary - model| <= tolerance``, computed exactly on the decimals the numbers print as
    (so 1.0 and 1.01 agree at tolerance 0.01, and tolerance 0 is the same as ``exact``). ``map``: the
    model label is replaced by ``map[label]`` when present (keys match type-aware: ``true`` never matches
    the key ``1``), then compared with ``exact``.
    """
    if cfg.compare == "numeric":
        tol = cfg.tolerance if cfg.tolerance is not None else 0.0
        if not tol >= 0:
            raise ValueError(f"tolerance must be a number >= 0, not {tol!r}")
        tolerance = _decimal(tol)

        def numeric(primary: Any, model: Any) -> bool | None:
            if not (_finite(primary) and _finite(model)):
                return None
            return _EXACT.subtract(_decimal(primary), _decimal(model)).copy_abs() <= tolerance

        return numeric

    if cfg.compare == "map":
        table = {}
        for source, target in (cfg.map or {}).items():
            key = _label_key(source)
            if key is not None:
                table[key] = target

        def mapped(primary: Any, model: Any) -> bool | None:
            if primary is None or model is None:
                return None
            key = _label_key(model)
            if key is not None and key in table:
                model = table[key]
            return json_equal(primary, model)

        return mapped

    def exact(primary: Any, model: Any) -> bool | None:
        if primary is None or model is None:
            return None
        return json_equal(primary, model)

    return exact


def _grouping_key(value: Any) -> Any | None:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class RouteDecisions:
    """Everything a route needs to read and compare decisions, built once from its config."""

    __slots__ = ("_segment", "compare", "model", "primary")

    def __init__(self, route: Route) -> None:
        d = route.decision
        self.primary = Extractor(d.primary)
        self.model = Extractor(d.model, confidence=d.confidence, usage=d.usage, explanation=d.explanation)
        self.compare: Comparator = build_comparator(d)
        self._segment = compile_expression(route.segment) if route.segment else None

    def segment(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: Any,
    ) -> Any | None:
        """The route's ``segment`` over ``{method, path, query, headers, body}``, or None.

        Header names are lower-cased and repeated headers joined with ``", "``; a repeated query
        parameter keeps its first value; ``body`` is the parsed JSON or None. A result that is not a
        JSON scalar becomes compact JSON text with sorted keys, so it can be a grouping key. None
        when the route has no segment, on any failure, and for a non-finite number. Never raises.
        """
        if self._segment is None:
            return None
        try:
            lowered: dict[str, str] = {}
            for name, value in headers.items():
                key = name.lower()
                lowered[key] = f"{lowered[key]}, {value}" if key in lowered else value
            params: dict[str, str] = {}
            for name, value in query.items():
                params.setdefault(name, value)
            view = {"method": method, "path": path, "query": params, "headers": lowered, "body": body}
            return _grouping_key(self._segment(view))
        except Exception:
            return None
