"""Demo, test and load-test upstreams: a legacy rules engine stub and an ML model stub.

Both stubs serve the loan-decision API of ``example-config.yaml`` (``POST /v1/decide``, though any path
works). A client sends::

    {"applicant": {"id": "a-123", "income": 52000, "ssn": "900-45-6789"}, "amount": 12000, "region": "eu"}

* The **legacy** stub answers ``{"decision", "score", "request_id"}`` by a fixed rule of the body (the
  loan-to-income ratio, see :func:`rule_decision`). When the request carries ``X-Model-Suggestion``
  (JSON with ``decision``, as the proxy sends in assisted stage), it follows the suggestion with
  probability ``accept_rate``: a human accepting the model's advice.
* The **model** stub applies the same rule, then with probability ``disagree_rate`` (or the override in
  ``segment_disagree`` for the request's ``region``) changes the decision to another label. It answers
  ``{"decision", "confidence", "reasons", "usage": {"total_tokens"}, "model_version", "score",
  "request_id"}``: a superset of the legacy format, so it can answer in autonomous stage too.

Faults per stub (:class:`StubSettings`): ``latency`` (``0``, ``5ms``, ``uniform:2ms:10ms``,
``lognormal:20ms:0.5``), ``error_rate`` (500 JSON), ``garbage_rate`` (200 whose body ``<html>oops`` is
not JSON although labelled as such), ``hang_rate`` (no answer for ``hang_seconds``; released at once
when the stub closes).

Control endpoints on both stubs: ``GET|POST /_stub/config`` (read / change settings live; the POST body
is a JSON object of settings, validated as a whole: 400 and nothing changed on any bad key or value),
``GET /_stub/stats`` (counters) and ``DELETE /_stub/stats`` (reset counters). ``GET`` on any other path
answers ``{"ok": true}``.

Every response is JSON (or the deliberate garbage) and carries ``X-Stub: legacy|model``. Nothing from a
request is reflected except a well-formed ``X-Request-Id`` (letters, digits, ``._:-``, at most 128
characters); error messages never quote the body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import random
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from proxy.units import parse_duration

__all__ = [
    "DECISIONS",
    "DEFAULT_SEGMENTS",
    "Latency",
    "RunningStubs",
    "StubSettings",
    "StubStats",
    "add_arguments",
    "build_legacy_app",
    "build_model_app",
    "parse_latency",
    "rule_decision",
    "run",
    "settings_from_args",
    "start_stubs",
    "synthetic_request",
]

DECISIONS: tuple[str, ...] = ("approve", "review", "decline")
DEFAULT_SEGMENTS: tuple[str, ...] = ("eu", "us", "apac")

# The rule: loan-to-income ratio r = amount / income; approve r <= 0.25, review r <= 0.5, else decline.
_APPROVE_MAX_RATIO = 0.25
_REVIEW_MAX_RATIO = 0.5

_OTHER_DECISIONS = {d: tuple(o for o in DECISIONS if o != d) for d in DECISIONS}
_MODEL_PATTERN_REASON = {
    "approve": "pattern: similar applicants repaid",
    "review": "pattern: uncertain profile, refer",
    "decline": "pattern: elevated default risk",
}
_GARBAGE = b"<html>oops"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_HEALTH_BODY = orjson.dumps({"ok": True})


# --------------------------------------------------------------------------------------------------
# Latency


_LATENCY_HINT = "use 0, 5ms, uniform:2ms:10ms or lognormal:20ms:0.5 (median, sigma)"


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency distribution in seconds: ``fixed`` (a), ``uniform`` (a..b) or ``lognormal`` (median a,
    sigma b). ``spec`` is the text it was parsed from."""

    kind: str
    a: float
    b: float
    spec: str

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds. A fixed latency draws nothing from ``rng``."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        return rng.lognormvariate(math.log(self.a), self.b)


def _latency_duration(text: str, spec: str) -> float:
    if text.strip() == "0":
        return 0.0
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError(f"latency {spec!r}: {text!r} is not a duration; {_LATENCY_HINT}") from None


def parse_latency(text: object) -> Latency:
    """Parse a latency spec (``0``, ``5ms``, ``uniform:2ms:10ms``, ``lognormal:20ms:0.5``).

    Durations use the config's units (``ms``, ``s``, ...); a bare ``0`` means none. Raises ValueError with
    a one-line, user-facing message for anything else (uniform needs low <= high, lognormal a median
    > 0 and a finite sigma >= 0).
    """
    if isinstance(text, Latency):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"latency {text!r} is not a latency spec; {_LATENCY_HINT}")
    spec = text.strip()
    parts = [p.strip() for p in spec.split(":")]
    kind = parts[0].lower()
    if len(parts) == 1:
        return Latency("fixed", _latency_duration(parts[0], spec), 0.0, spec)
    if kind == "uniform" and len(parts) == 3:
        low, high = _latency_duration(parts[1], spec), _latency_duration(parts[2], spec)
        if low > high:
            raise ValueError(f"latency {spec!r}: low {parts[1]} is above high {parts[2]}")
        return Latency("uniform", low, high, spec)
    if kind == "lognormal" and len(parts) == 3:
        median = _latency_duration(parts[1], spec)
        if median <= 0:
            raise ValueError(f"latency {spec!r}: the median must be above 0")
        try:
            sigma = float(parts[2])
        except ValueError:
            sigma = math.nan
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"latency {spec!r}: sigma {parts[2]!r} must be a number >= 0")
        return Latency("lognormal", median, sigma, spec)
    if kind in ("uniform", "lognormal"):
        example = "uniform:2ms:10ms" if kind == "uniform" else "lognormal:20ms:0.5"
        raise ValueError(f"latency {spec!r}: {kind} takes exactly two values, e.g. {example}")
    raise ValueError(f"latency {spec!r} is not a latency spec; {_LATENCY_HINT}")


_NO_LATENCY = parse_latency("0")


# --------------------------------------------------------------------------------------------------
# Settings


_RATE_FIELDS = frozenset({"error_rate", "garbage_rate", "hang_rate", "disagree_rate", "accept_rate"})


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number from 0 to 1, not {_short(value)}")
    return float(value)


def _coerce_setting(name: str, value: Any) -> Any:
    if name in _RATE_FIELDS:
        return _rate(name, value)
    if name == "latency":
        return parse_latency(value).spec
    if name == "segment_disagree":
        if not isinstance(value, Mapping):
            raise ValueError(f"segment_disagree must be an object of segment: rate, not {_short(value)}")
        out: dict[str, float] = {}
        for key, rate in value.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"segment_disagree: segment names must be non-empty strings, not {_short(key)}")
            out[key] = _rate(f"segment_disagree[{key!r}]", rate)
        return out
    if name == "hang_seconds":
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"hang_seconds must be a number of seconds above 0, not {_short(value)}")
        return float(value)
    if name == "model_version":
        if not isinstance(value, str) or not 0 < len(value) <= 100 or not value.isprintable():
            raise ValueError(f"model_version must be a short printable string, not {_short(value)}")
        return value
    if name == "seed":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"seed must be an integer or null, not {_short(value)}")
        return value
    return value


@dataclass
class StubSettings:
    """Live settings of one stub. Every assignment is validated (ValueError on a bad value), so a
    stub's settings are always usable; the stubs read them on every request, so changes apply at once.

    Fields a stub does not use are ignored by it: ``disagree_rate``, ``segment_disagree`` and
    ``model_version`` are the model's, ``accept_rate`` is the legacy's.

    * ``latency``: delay before answering, a :func:`parse_latency` spec (stored normalised).
    * ``error_rate`` / ``garbage_rate`` / ``hang_rate``: shares of requests answered 500, answered
      200 with a non-JSON body, or left hanging for ``hang_seconds``; together at most 1.
    * ``disagree_rate``: share of requests where the model changes the rule's decision;
      ``segment_disagree`` overrides it per ``region``.
    * ``accept_rate``: share of valid ``X-Model-Suggestion`` headers the legacy stub follows.
    * ``seed``: seeds the stub's ``random.Random`` when its app is built (and when changed via
      ``/_stub/config``); None for an unseeded generator.
    """

    latency: str = "0"
    error_rate: float = 0.0
    garbage_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 3600.0
    disagree_rate: float = 0.05
    segment_disagree: dict[str, float] = field(default_factory=dict)
    accept_rate: float = 0.9
    model_version: str = "credit-v7"
    seed: int | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        value = _coerce_setting(name, value)
        object.__setattr__(self, name, value)
        if name == "latency":
            object.__setattr__(self, "_latency", parse_latency(value))

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Cross-field rules (each field is checked on assignment): the fault shares sum to at most 1."""
        total = self.error_rate + self.garbage_rate + self.hang_rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"error_rate + garbage_rate + hang_rate must be at most 1, not {round(total, 6):g}")

    @property
    def latency_dist(self) -> Latency:
        """The parsed ``latency``."""
        return getattr(self, "_latency", _NO_LATENCY)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (what ``/_stub/config`` returns)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["segment_disagree"] = dict(self.segment_disagree)
        return out

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply several settings at once, all or nothing: ValueError naming the first unknown key or
        bad value, and then nothing is changed."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(str(k) for k in changes if k not in known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        candidate = dataclasses.replace(self, **changes)  # validates every field and check()
        for name in changes:
            setattr(self, name, getattr(candidate, name))


# --------------------------------------------------------------------------------------------------
# Requests and the rule


def rule_decision(amount: float, income: float) -> tuple[str, float]:
    """The legacy rule: ``(decision, score)`` from the loan-to-income ratio r = amount / income.

    approve if r <= 0.25, review if r <= 0.5, else decline (income 0 declines). ``score`` is
    1 / (1 + 4r) rounded to 4 places: 1.0 for no loan, 0.5 at the approve limit, 1/3 at the review limit.
    """
    if income <= 0:
        return "decline", 0.0
    ratio = amount / income
    score = round(1.0 / (1.0 + 4.0 * ratio), 4)
    if ratio <= _APPROVE_MAX_RATIO:
        return "approve", score
    if ratio <= _REVIEW_MAX_RATIO:
        return "review", score
    return "decline", score


def synthetic_request(rng: random.Random, segments: Sequence[str] = DEFAULT_SEGMENTS) -> dict[str, Any]:
    """One realistic request body, drawn from ``rng`` (same seed, same sequence).

    Incomes are log-normal around 55,000 (rounded to 100); the loan-to-income ratio is log-normal with
    median 0.23, so about 55% of requests approve, 30% go to review and 15% decline under
    :func:`rule_decision`. ``region`` is drawn uniformly from ``segments`` (ValueError if empty). The
    ``ssn`` is in the 9xx area, never issued as a social security number.
    """
    if isinstance(segments, str) or not segments:
        raise ValueError("segments must be a non-empty sequence of segment names")
    income = max(8000, round(rng.lognormvariate(math.log(55000), 0.45), -2))
    ratio = rng.lognormvariate(math.log(0.23), 0.75)
    amount = max(500, round(income * ratio, -2))
    ssn = f"9{rng.randrange(100):02d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"
    return {
        "applicant": {"id": f"a-{rng.randrange(1_000_000):06d}", "income": int(income), "ssn": ssn},
        "amount": int(amount),
        "region": segments[rng.randrange(len(segments))],
    }


class _BadRequest(Exception):
    pass


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _parse_application(raw: bytes) -> tuple[float, float, str | None]:
    """``(amount, income, region)`` from a request body; _BadRequest with a message that quotes nothing."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _BadRequest("body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object")
    applicant = body.get("applicant")
    if not isinstance(applicant, dict):
        raise _BadRequest("applicant must be an object")
    income = _number(applicant.get("income"))
    if income is None or income < 0:
        raise _BadRequest("applicant.income must be a number >= 0")
    amount = _number(body.get("amount"))
    if amount is None or amount <= 0:
        raise _BadRequest("amount must be a number > 0")
    region = body.get("region")
    if region is not None and not isinstance(region, str):
        raise _BadRequest("region must be a string")
    return amount, income, region


def _request_id(request: web.BaseRequest) -> str | None:
    value = request.headers.get("X-Request-Id")
    if value is not None and _SAFE_REQUEST_ID.fullmatch(value):
        return value
    return None


# --------------------------------------------------------------------------------------------------
# The stubs


@dataclass
class StubStats:
    """Counters of one stub since start (or the last ``DELETE /_stub/stats``).

    ``requests`` counts decision requests (POSTs outside ``/_stub/``), whatever their fate; ``decisions``
    counts answered decisions by label; ``errors``, ``garbage``, ``hangs`` count injected faults;
    ``bad_requests`` counts 400s. The model counts ``disagreements`` (decisions it changed); the legacy
    stub counts ``suggestions_seen`` (requests with an ``X-Model-Suggestion`` header),
    ``suggestions_accepted`` (followed), ``suggestions_rejected`` (own rule kept) and
    ``suggestions_invalid`` (header not JSON with a known ``decision``: rule kept).
    """

    requests: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DECISIONS, 0))
    errors: int = 0
    garbage: int = 0
    hangs: int = 0
    bad_requests: int = 0
    disagreements: int = 0
    suggestions_seen: int = 0
    suggestions_accepted: int = 0
    suggestions_rejected: int = 0
    suggestions_invalid: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict (what ``GET /_stub/stats`` returns)."""
        return dataclasses.asdict(self)


class _Stub:
    """One stub's state and request handler (legacy or model)."""

    def __init__(self, role: str, settings: StubSettings, rng: random.Random | None) -> None:
        self.role = role
        self.settings = settings
        self.rng = rng if rng is not None else random.Random(settings.seed)
        self.stats = StubStats()
        self.closing = asyncio.Event()
        self.headers = {"Content-Type": "application/json", "X-Stub": role}
        self._decide: Callable[[web.Request, float, float, str | None], web.Response] = (
            self._legacy if role == "legacy" else self._model
        )

    def _json(self, obj: Any, status: int = 200, extra: Mapping[str, str] | None = None) -> web.Response:
        headers = self.headers if extra is None else {**self.headers, **extra}
        return web.Response(body=orjson.dumps(obj), status=status, headers=headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_stub/"):
            return await self._control(request)
        method = request.method
        if method == "POST":
            return await self._decision(request)
        if method in ("GET", "HEAD"):
            return web.Response(body=_HEALTH_BODY, headers=self.headers)
        return self._json({"error": "method not allowed: use POST for decisions, GET for health"}, 405)

    async def _hang(self, seconds: float) -> bool:
        """Wait ``seconds`` or until the stub closes; True if it closed."""
        try:
            async with asyncio.timeout(seconds):
                await self.closing.wait()
        except TimeoutError:
            return False
        return True

    async def _decision(self, request: web.Request) -> web.Response:
        s = self.settings
        stats = self.stats
        rng = self.rng
        stats.requests += 1
        # One draw decides the fault (always drawn, so the stream does not depend on the fault settings):
        # [0, hang) hangs, [hang, hang + error) fails, the next garbage_rate answers garbage.
        fault = rng.random()
        hang_below = s.hang_rate
        error_below = hang_below + s.error_rate
        garbage_below = error_below + s.garbage_rate
        delay = s.latency_dist.sample(rng)
        raw = await request.read()
        if fault < hang_below:
            stats.hangs += 1
            if await self._hang(s.hang_seconds):
                return self._json({"error": "stub closing"}, 503)
        if delay > 0:
            await asyncio.sleep(delay)
        if hang_below <= fault < error_below:
            stats.errors += 1
            return self._json({"error": "injected failure"}, 500)
        if error_below <= fault < garbage_below:
            stats.garbage += 1
            return web.Response(body=_GARBAGE, headers=self.headers)
        try:
            amount, income, region = _parse_application(raw)
        except _BadRequest as exc:
            stats.bad_requests += 1
            return self._json({"error": str(exc)}, 400)
        return self._decide(request, amount, income, region)

    def _legacy(self, request: web.Request, amount: float, income: float, region: str | None) -> web.Response:
        decision, score = rule_decision(amount, income)
        extra = None
        suggestion = request.headers.get("X-Model-Suggestion")
        if suggestion is not None:
            stats = self.stats
            stats.suggestions_seen += 1
            suggested = None
            try:
                parsed = orjson.loads(suggestion)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                value = parsed.get("decision")
                if isinstance(value, str) and value in _OTHER_DECISIONS:
                    suggested = value
            if suggested is None:
                stats.suggestions_invalid += 1
                extra = {"X-Stub-Suggestion": "invalid"}
            elif self.rng.random() < self.settings.accept_rate:
                stats.suggestions_accepted += 1
                decision = suggested
                extra = {"X-Stub-Suggestion": "accepted"}
            else:
                stats.suggestions_rejected += 1
                extra = {"X-Stub-Suggestion": "rejected"}
        self.stats.decisions[decision] += 1
        return self._json({"decision": decision, "score": score, "request_id": _request_id(request)}, extra=extra)

    def _model(self, request: web.Request, amount: float, income: float, region: str | None) -> web.Response:
        s = self.settings
        rng = self.rng
        decision, score = rule_decision(amount, income)
        rate = s.disagree_rate if region is None else s.segment_disagree.get(region, s.disagree_rate)
        ratio = amount / income if income > 0 else math.inf
        reasons = [f"loan-to-income {ratio:.2f}" if math.isfinite(ratio) else "no declared income"]
        if rng.random() < rate:
            others = _OTHER_DECISIONS[decision]
            decision = others[rng.randrange(len(others))]
            confidence = rng.uniform(0.55, 0.9)
            reasons.append(_MODEL_PATTERN_REASON[decision])
            self.stats.disagreements += 1
        else:
            confidence = rng.uniform(0.85, 0.99)
            reasons.append(f"income band {'low' if income < 30000 else 'mid' if income < 90000 else 'high'}")
        self.stats.decisions[decision] += 1
        return self._json(
            {
                "decision": decision,
                "confidence": round(confidence, 4),
                "reasons": reasons,
                "usage": {"total_tokens": 120 + 25 * len(reasons) + rng.randrange(40)},
                "model_version": s.model_version,
                "score": score,
                "request_id": _request_id(request),
            }
        )

    async def _control(self, request: web.Request) -> web.Response:
        path, method = request.path, request.method
        if path == "/_stub/config":
            if method == "GET":
                return self._json(self.settings.as_dict())
            if method == "POST":
                try:
                    changes = orjson.loads(await request.read())
                except orjson.JSONDecodeError:
                    return self._json({"error": "body is not JSON"}, 400)
                if not isinstance(changes, dict):
                    return self._json({"error": "body must be a JSON object of settings"}, 400)
                try:
                    self.settings.update(changes)
                except ValueError as exc:
                    return self._json({"error": str(exc)}, 400)
                if "seed" in changes and self.settings.seed is not None:
                    self.rng.seed(self.settings.seed)
                return self._json(self.settings.as_dict())
            return self._json({"error": "use GET or POST on /_stub/config"}, 405)
        if path == "/_stub/stats":
            if method == "GET":
                return self._json(self.stats.as_dict())
            if method == "DELETE":
                self.stats = StubStats()
                return self._json(self.stats.as_dict())
            return self._json({"error": "use GET or DELETE on /_stub/stats"}, 405)
        return self._json({"error": "unknown control path: use /_stub/config or /_stub/stats"}, 404)


_STUB_KEY = web.AppKey("stub", _Stub)


def _build_app(role: str, settings: StubSettings, rng: random.Random | None) -> web.Application:
    stub = _Stub(role, settings, rng)
    app = web.Application()
    app[_STUB_KEY] = stub

    async def release_hangs(_app: web.Application) -> None:
        stub.closing.set()

    app.on_shutdown.append(release_hangs)
    app.router.add_route("*", "/{tail:.*}", stub.handle)
    return app


def build_legacy_app(settings: StubSettings, rng: random.Random | None = None) -> web.Application:
    """The legacy rules-engine stub as an aiohttp app, reading ``settings`` live on every request.

    ``rng`` defaults to ``random.Random(settings.seed)``; it drives faults, latency and suggestion
    acceptance, never the rule itself (decisions without a suggestion are a pure function of the body).
    On app shutdown, hanging requests are released (answered 503).
    """
    return _build_app("legacy", settings, rng)


def build_model_app(settings: StubSettings, rng: random.Random | None = None) -> web.Application:
    """The ML model stub as an aiohttp app, reading ``settings`` live on every request.

    ``rng`` defaults to ``random.Random(settings.seed)``; it drives faults, latency, disagreement,
    confidence and token usage. On app shutdown, hanging requests are released (answered 503).
    """
    return _build_app("model", settings, rng)


# --------------------------------------------------------------------------------------------------
# Running both


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _start_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    return runner, _url(host, bound)


@dataclass
class RunningStubs:
    """Both stubs, serving. ``legacy_settings`` / ``model_settings`` are the live settings (mutate them
    to change behaviour at once). ``close()`` stops both, releasing hanging requests first; it is
    idempotent. Usable as ``async with``."""

    legacy_url: str
    model_url: str
    legacy_settings: StubSettings
    model_settings: StubSettings
    _runners: list[web.AppRunner] = field(repr=False, default_factory=list)

    @property
    def legacy_stats(self) -> StubStats:
        """The legacy stub's counters (also at ``GET /_stub/stats``)."""
        return self._runners[0].app[_STUB_KEY].stats

    @property
    def model_stats(self) -> StubStats:
        """The model stub's counters (also at ``GET /_stub/stats``)."""
        return self._runners[1].app[_STUB_KEY].stats

    async def close(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            runner.app[_STUB_KEY].closing.set()
        for runner in runners:
            await runner.cleanup()

    async def __aenter__(self) -> RunningStubs:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_stubs(
    legacy: StubSettings,
    model: StubSettings,
    host: str = "127.0.0.1",
    legacy_port: int = 0,
    model_port: int = 0,
) -> RunningStubs:
    """Start the legacy and model stubs on ``host`` (port 0: a free port) in the running loop.

    The given settings objects are used live (not copied). Each stub seeds its own
    ``random.Random(settings.seed)``. Raises OSError if a port cannot be bound (nothing is left running).
    """
    legacy_runner, legacy_url = await _start_app(build_legacy_app(legacy), host, legacy_port)
    try:
        model_runner, model_url = await _start_app(build_model_app(model), host, model_port)
    except BaseException:
        await legacy_runner.cleanup()
        raise
    return RunningStubs(legacy_url, model_url, legacy, model, [legacy_runner, model_runner])


# --------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``shadow-proxy stubs``. Values are checked by :func:`run` (one error line, exit 2)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--legacy-port", default="9001", help="legacy stub port, 0 for any (default 9001)")
    parser.add_argument("--model-port", default="9002", help="model stub port, 0 for any (default 9002)")
    latency_help = "e.g. 0, 5ms, uniform:2ms:10ms, lognormal:20ms:0.5 (default 0)"
    parser.add_argument("--legacy-latency", default="0", help=f"legacy stub latency: {latency_help}")
    parser.add_argument("--model-latency", default="0", help=f"model stub latency: {latency_help}")
    parser.add_argument("--error-rate", default="0", help="share of legacy answers that are 500 (default 0)")
    parser.add_argument("--model-error-rate", default="0", help="share of model answers that are 500 (default 0)")
    parser.add_argument(
        "--garbage-rate",
        default="0",
        help="share of model answers that are 200 with a non-JSON body (default 0)",
    )
    parser.add_argument("--hang-rate", default="0", help="share of model requests that never get an answer (default 0)")
    parser.add_argument(
        "--disagree-rate",
        default="0.05",
        help="share of model decisions that differ from the rule (default 0.05)",
    )
    parser.add_argument(
        "--segment-disagree",
        action="append",
        default=[],
        metavar="SEGMENT=RATE",
        help="per-region disagreement override, e.g. apac=0.3 (repeatable, or comma-separated)",
    )
    parser.add_argument(
        "--segments",
        default=None,
        help="comma list of the regions synthetic traffic uses (default eu,us,apac); "
        "--segment-disagree must name one of them when given",
    )
    parser.add_argument(
        "--accept-rate",
        default="0.9",
        help="share of model suggestions the legacy stub follows (default 0.9)",
    )
    parser.add_argument("--model-version", default="credit-v7", help="model_version the model reports")
    parser.add_argument("--seed", default=None, help="integer seed for reproducible stubs (default random)")


def _flag_rate(flag: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{flag}: {value!r} is not a number from 0 to 1")
    return number


def _flag_int(flag: str, value: object, low: int | None = None, high: int | None = None) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{flag}: {value!r} is not an integer") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{flag}: {number} is out of range {low}..{high}")
    return number


def settings_from_args(args: argparse.Namespace) -> tuple[StubSettings, StubSettings, tuple[str, ...]]:
    """``(legacy settings, model settings, segments)`` from parsed ``stubs`` flags; ValueError with a
    one-line message naming the flag on any bad value. With ``--seed N`` the legacy stub uses N and the
    model N + 1 (independent but reproducible streams)."""
    seed = None if args.seed is None else _flag_int("--seed", args.seed)
    segments = DEFAULT_SEGMENTS
    if args.segments is not None:
        segments = tuple(s.strip() for s in str(args.segments).split(",") if s.strip())
        if not segments:
            raise ValueError(f"--segments: {args.segments!r} names no segment")
    overrides: dict[str, float] = {}
    for item in args.segment_disagree or []:
        for part in str(item).split(","):
            if not part.strip():
                continue
            name, sep, rate = part.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ValueError(f"--segment-disagree: {part!r} is not SEGMENT=RATE (e.g. apac=0.3)")
            if args.segments is not None and name not in segments:
                raise ValueError(f"--segment-disagree: segment {name!r} is not in --segments ({','.join(segments)})")
            overrides[name] = _flag_rate(f"--segment-disagree {name}", rate.strip())

    def latency(flag: str, value: object) -> str:
        try:
            return parse_latency(value).spec
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None

    def checked(**kwargs: Any) -> StubSettings:
        try:
            return StubSettings(**kwargs)
        except ValueError as exc:  # cross-field rules
            raise ValueError(f"model stub: {exc} (--model-error-rate, --garbage-rate, --hang-rate)") from None

    legacy = StubSettings(
        latency=latency("--legacy-latency", args.legacy_latency),
        error_rate=_flag_rate("--error-rate", args.error_rate),
        accept_rate=_flag_rate("--accept-rate", args.accept_rate),
        seed=seed,
    )
    model_version = str(args.model_version)
    try:
        _coerce_setting("model_version", model_version)
    except ValueError as exc:
        raise ValueError(f"--model-version: {exc}") from None
    model = checked(
        latency=latency("--model-latency", args.model_latency),
        error_rate=_flag_rate("--model-error-rate", args.model_error_rate),
        garbage_rate=_flag_rate("--garbage-rate", args.garbage_rate),
        hang_rate=_flag_rate("--hang-rate", args.hang_rate),
        disagree_rate=_flag_rate("--disagree-rate", args.disagree_rate),
        segment_disagree=overrides,
        model_version=model_version,
        seed=None if seed is None else seed + 1,
    )
    return legacy, model, segments


async def _serve(
    legacy: StubSettings,
    model: StubSettings,
    host: str,
    legacy_port: int,
    model_port: int,
    segments: Sequence[str],
) -> None:
    stubs = await start_stubs(legacy, model, host, legacy_port, model_port)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        print(
            f"stubs: legacy {stubs.legacy_url} model {stubs.model_url} (segments {','.join(segments)}; Ctrl-C to stop)",
            flush=True,
        )
        await stop.wait()
    finally:
        await stubs.close()


def _event_loop_runner() -> Callable[[Awaitable[None]], None]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run  # type: ignore[return-value]
    return uvloop.run  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> int:
    """Run both stubs until SIGINT/SIGTERM (uvloop when available), after printing one line with both
    URLs. Returns 0 after a signal, 2 on a bad flag value, 1 if a port cannot be bound; errors are one
    line on stderr, never a traceback."""
    try:
        legacy, model, segments = settings_from_args(args)
        host = str(args.host)
        legacy_port = _flag_int("--legacy-port", args.legacy_port, 0, 65535)
        model_port = _flag_int("--model-port", args.model_port, 0, 65535)
        if legacy_port == model_port != 0:
            raise ValueError(f"--legacy-port and --model-port are both {legacy_port}")
    except ValueError as exc:
        print(f"shadow-proxy stubs: {exc}", file=sys.stderr)
        return 2
    try:
        _event_loop_runner()(_serve(legacy, model, host, legacy_port, model_port, segments))  # type: ignore[arg-type]
    except OSError as exc:
        print(f"shadow-proxy stubs: cannot listen on {host}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
