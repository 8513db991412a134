"""Audit records: canonical form, per-writer hash chain, redaction (SPEC §7). Pure: no I/O.

Canonical form is RFC 8785: keys sorted, no whitespace, UTF-8, numbers as ECMAScript prints them.
orjson matches RFC 8785 for every value except integral floats (``2.0`` vs ``2``), ``-0.0``, numbers
from 1e-6 to 1e-5 (plain decimals in ECMAScript) and integers beyond 2**53 (doubles in RFC 8785); so
records are normalised first (:func:`jcs_value`) and then serialised by orjson, ~50x faster than a
pure-Python RFC 8785 encoder. A property test checks the result against the ``rfc8785`` package.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

ZERO_HASH = "0" * 64
REDACTED = "[REDACTED]"
# A record orjson refuses (it writes at most 254 levels of nesting) is rewritten keeping MAX_DEPTH
# levels (the record itself is level 1); an object or list deeper down becomes TOO_DEEP.
MAX_DEPTH = 64
TOO_DEEP = "[TOO DEEP]"
_SORTED = orjson.OPT_SORT_KEYS


_INT64 = (-(2**63), 2**64)  # what orjson writes as an integer (signed and unsigned 64-bit)


def num(value: float) -> float | int | orjson.Fragment:
    """A float as RFC 8785 prints it: integral values (below 1e21) become ints, -0.0 becomes 0.

    Above 2**53 an integral float's exact binary value is not what ECMAScript prints: it prints the
    shortest round-trip digits padded with zeros (5.573253948024485e16 -> 55732539480244850). Where
    that integer is beyond what orjson writes, it goes in as a pre-serialised fragment.
    """
    if value.is_integer() and -1e21 < value < 1e21:
        if -(2**53) < value < 2**53:
            return int(value)
        return _integer(int(Decimal(repr(value))))
    if 1e-6 <= abs(value) < 1e-5:  # ECMAScript writes these in plain decimals, orjson with an exponent
        return orjson.Fragment(format(Decimal(repr(value)), "f").encode())
    return value


def _integer(value: int) -> int | orjson.Fragment:
    return value if _INT64[0] <= value < _INT64[1] else orjson.Fragment(str(value).encode())


def jcs_value(value: Any) -> Any:
    """Normalise any JSON value for canonical serialisation (see module docstring).

    A value nested too deeply for Python's recursion limit (a JSON body of ~500 levels parses fine)
    is returned as :func:`plain` makes it, so building a record never fails on it.
    """
    try:
        return _jcs(value)
    except RecursionError:
        return plain(value)


def _jcs(value: Any) -> Any:
    kind = type(value)
    if kind is str or value is None or kind is bool:  # most decisions and segments: nothing to do
        return value
    if isinstance(value, float):
        return num(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**53) < value < 2**53:
        return num(float(value))  # RFC 8785 numbers are IEEE doubles: a large integer as its double
    if isinstance(value, dict):
        return {k: _jcs(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jcs(v) for v in value]
    return value


def plain(value: Any, level: int = 1) -> Any:
    """``value`` as normalised JSON that orjson always writes; never raises.

    Objects and lists below :data:`MAX_DEPTH` levels become :data:`TOO_DEEP`; non-string keys and
    values of other types (sets, objects) become their text; strings orjson refuses (lone
    surrogates) are escaped; NaN and infinities become null (as orjson writes them anyway).
    """
    if isinstance(value, str):
        return _text(value)
    if value is None or isinstance(value, bool | orjson.Fragment):
        return value
    if isinstance(value, float):
        return num(value) if math.isfinite(value) else None
    if isinstance(value, int):
        return _jcs(int(value))
    if isinstance(value, dict | list | tuple):
        if level > MAX_DEPTH:
            return TOO_DEEP
        if isinstance(value, dict):
            return {_text(k): plain(v, level + 1) for k, v in value.items()}
        return [plain(v, level + 1) for v in value]
    return _text(value)


def _text(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else str(value)
        text.encode("utf-8")
        return str.__str__(text)
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    except Exception:  # a __str__ that fails (or recurses without end)
        return f"<{type(value).__name__}>"


def canonical(record: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of an already-normalised record."""
    return orjson.dumps(record, option=_SORTED)


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 hex over the canonical form of ``record`` without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(jcs_value(body))).hexdigest()


def digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


class Chain:
    """One writer's hash chain: assigns ``writer``, ``seq``, ``prev_hash`` and ``hash``.

    Records handed to :meth:`link` must already be JSON-normalised (:func:`jcs_value` or built
    with :func:`num`), so hashing needs no second walk over the record.
    """

    def __init__(self, writer: str, seq: int = 0, prev_hash: str = ZERO_HASH) -> None:
        self.writer = writer
        self.seq = seq
        self.prev_hash = prev_hash
        self.since_seal = 0

    def link(self, record: dict[str, Any]) -> bytes:
        """Chain ``record`` in place and return its JSON line (with ``\\n``). Never raises.

        Never leaves a gap: a record orjson cannot write (nesting deeper than 254 levels, a value of
        a type records never hold, a non-string key) is first rewritten by :func:`plain` (deep
        parts as ``[TOO DEEP]``, unknown values as text), then chained. The chain advances only
        once the line exists.
        """
        seq = self.seq + 1
        record["writer"] = self.writer
        record["seq"] = seq
        record["prev_hash"] = self.prev_hash
        try:
            body = canonical(record)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            rewritten = plain(record)
            record.clear()
            record.update(rewritten)
            body = canonical(record)
        digest_ = hashlib.sha256(body).hexdigest()
        record["hash"] = digest_
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        self.seq, self.prev_hash = seq, digest_
        self.since_seal += 1
        return line

    def seal(self, record: dict[str, Any], *, reason: str, file: str | None = None) -> bytes:
        """Close the current segment: a ``seal`` record counting the records since the last seal."""
        record.update(type="seal", records=self.since_seal, reason=reason)
        if file is not None:
            record["file"] = file
        line = self.link(record)
        self.since_seal = 0
        return line


# --- redaction --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Path:
    part: str  # "body" or "headers"
    keys: tuple[str, ...]


class Redactor:
    """Replaces configured paths (``body.applicant.ssn``, ``headers.authorization``) by ``[REDACTED]``.

    ``*`` matches any key of an object or every item of a list. Header names are case-insensitive.
    :meth:`apply` copies only along redacted paths and returns the input itself when nothing matched.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        compiled = []
        for path in paths:
            part, *keys = path.split(".")
            if part == "headers":
                keys = [k.lower() for k in keys]
            compiled.append(_Path(part, tuple(keys)))
        self._paths = tuple(compiled)
        self.touches_body = any(p.part == "body" for p in self._paths)

    def __bool__(self) -> bool:
        return bool(self._paths)

    def body(self, doc: Any) -> Any:
        for path in self._paths:
            if path.part == "body":
                doc = _redact(doc, path.keys)
        return doc

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        for path in self._paths:
            if path.part == "headers":
                headers = _redact(headers, path.keys)
        return headers


def _redact(node: Any, keys: tuple[str, ...]) -> Any:
    if not keys:
        return REDACTED
    head, rest = keys[0], keys[1:]
    if isinstance(node, dict):
        targets = list(node) if head == "*" else [head] if head in node else []
        if not targets:
            return node
        copy = dict(node)
        for key in targets:
            copy[key] = _redact(node[key], rest)
        return copy
    if isinstance(node, list) and (head == "*" or head.isdigit()):
        indexes = range(len(node)) if head == "*" else [int(head)] if int(head) < len(node) else []
        if not indexes:
            return node
        copy = list(node)
        for i in indexes:
            copy[i] = _redact(node[i], rest)
        return copy
    return node


def body_for_record(raw: bytes | None, doc: Any) -> Any:
    """A body as stored with ``include_bodies``: parsed JSON (redacted), else text, else base64."""
    if raw is None:
        return None
    if doc is not None:
        return jcs_value(doc)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}
