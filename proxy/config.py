"""The configuration and policy schemas (SPEC §4, §6): pydantic models, validated once at start.

Pure: no file or environment access here (that is :mod:`proxy.loading`). Unknown keys are errors
everywhere. Durations are floats in seconds (``*_s``), rates are :class:`proxy.units.Rate`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

import jmespath
from jmespath.exceptions import (
    EmptyExpressionError,
    IncompleteExpressionError,
    JMESPathError,
    LexerError,
    ParseError,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from proxy.stages import Stage
from proxy.units import Rate, parse_duration, parse_rate


class FieldProblem(ValueError):
    """A problem a model-level check finds in one of the model's fields.

    ``loc`` is the field's path below the model (``("tolerance",)``, ``(1, "name")``); the loader
    appends it to the model's own path, so the user sees ``routes[0].decision.tolerance``.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


# --- field types ------------------------------------------------------------------------------

Duration = Annotated[float, BeforeValidator(parse_duration)]
RateValue = Annotated[Rate, BeforeValidator(parse_rate)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


def _jmespath(expr: str) -> str:
    try:
        jmespath.compile(expr)
    except JMESPathError as exc:
        raise ValueError(f"{expr!r} is not a valid JMESPath expression ({_jmespath_detail(exc)})") from None
    return expr


def _jmespath_detail(exc: JMESPathError) -> str:
    """What is wrong and where, in words (jmespath's own text spans three lines with a caret)."""
    if isinstance(exc, EmptyExpressionError):
        return "it is empty"
    if isinstance(exc, LexerError):
        return f"{exc.message[:1].lower()}{exc.message[1:]} at character {exc.lexer_position + 1}"
    if isinstance(exc, IncompleteExpressionError) or getattr(exc, "token_type", None) == "EOF":
        return "it ends too soon"
    if isinstance(exc, ParseError):
        return f"unexpected {exc.token_value!r} at character {exc.lex_position + 1}"
    return str(exc).splitlines()[0]


def _split(url: str) -> SplitResult:
    """urlsplit, with its errors (bad IPv6 literal, port out of range) naming the URL."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError as exc:
        detail = str(exc)
        raise ValueError(f"{url!r} is not a valid URL ({detail[:1].lower()}{detail[1:]})") from None
    return parts


def _http_url(url: str) -> str:
    parts = _split(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: an upstream URL takes no query or fragment")
    return url.rstrip("/")


def _store_url(url: str) -> str:
    if url == "memory://" or _split(url).scheme in ("redis", "rediss", "unix"):
        return url
    raise ValueError(f"{url!r} is not a store URL (use memory:// or redis://host:6379/0)")


def _sink_url(url: str) -> str:
    scheme = _split(url).scheme
    if scheme == "file" and len(url) > len("file://"):
        return url
    if scheme in ("redis", "rediss"):
        segments = [s for s in urlsplit(url).path.split("/") if s]
        if len(segments) == 2 and segments[0].isdigit():
            return url
        raise ValueError(f"{url!r} is not a Redis audit sink (use redis://host:port/DB/STREAM)")
    raise ValueError(f"{url!r} is not an audit sink (use file://DIR or redis://host:port/DB/STREAM)")


_REDACT = re.compile(r"^(body|headers)(\.([A-Za-z0-9_\-]+|\*))+$")


def _redact_path(path: str) -> str:
    if not _REDACT.match(path):
        raise ValueError(f"{path!r} is not a redaction path (body.a.b or headers.name; '*' matches any key or item)")
    return path


_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


def _route_name(name: str) -> str:
    if not _ROUTE_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a route name (1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit)"
        )
    return name


def _path_prefix(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ValueError(f"{prefix!r} is not a path prefix (it starts with /, e.g. /v1/decide)")
    return prefix


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


JMESPath = Annotated[str, AfterValidator(_jmespath)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
RouteName = Annotated[str, AfterValidator(_route_name)]


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- top-level sections -----------------------------------------------------------------------


class Listen(Strict):
    host: str = Field("0.0.0.0", description="Address the proxy listens on for client traffic.")
    port: int = Field(8080, ge=0, le=65535, description="Port for client traffic (0 picks a free one).")


class Admin(Strict):
    host: str = Field("127.0.0.1", description="Admin API address (0.0.0.0 in a pod for probes).")
    port: int = Field(9901, ge=0, le=65535, description="Admin API port (0 picks a free one).")
    token_env: str = Field(
        "SHADOW_PROXY_ADMIN_TOKEN", description="Environment variable holding the admin bearer token."
    )
    outcomes_token_env: str | None = Field(
        None, description="Environment variable holding a token that may only POST /v1/outcomes."
    )


class Log(Strict):
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = Field(
        "info", description="Lowest level logged (any case: INFO is info)."
    )
    format: Literal["json", "console"] | None = Field(
        None, description="json or console; unset means console on a terminal, json otherwise."
    )
    access_sample: Share = Field(1.0, description="Share of requests that emit an access-log event.")


class Store(Strict):
    url: Annotated[str, AfterValidator(_store_url)] = Field(
        "memory://", description="memory:// (one process) or redis://host:port/db (shared by replicas)."
    )
    timeout: Duration = Field(0.25, gt=0, description="Timeout of one store operation.")
    key_prefix: str = Field("shadow-proxy", description="Prefix of every Redis key this proxy writes.")


class Audit(Strict):
    sink: Annotated[str, AfterValidator(_sink_url)] = Field(
        "file://./audit", description="file://DIR (JSON Lines) or redis://host:port/DB/STREAM."
    )
    rotate_bytes: int = Field(64 * 2**20, ge=4096, description="Rotate a file sink's file at this size.")
    compress_rotated: bool = Field(True, description="Gzip rotated files of a file sink.")
    spill_dir: str = Field("./audit-spill", description="Where records wait while the sink is unreachable.")
    include_bodies: bool = Field(False, description="Store bodies in records, not only their SHA-256.")
    redact: list[Annotated[str, AfterValidator(_redact_path)]] = Field(
        default_factory=list, description="Paths replaced by [REDACTED] before anything is written."
    )
    flush_interval: Duration = Field(0.2, gt=0, description="Longest time a record waits to be written.")
    batch_records: int = Field(1024, ge=1, description="Most records written in one batch.")
    queue_records: int = Field(100_000, ge=1, description="Records waiting to be written before drops.")
    fsync: Literal["batch", "rotate"] = Field(
        "batch", description="fsync after every batch, or only at rotation and shutdown."
    )


class Shutdown(Strict):
    grace: Duration = Field(20.0, ge=0, description="How long in-flight client requests may finish.")
    mirror_grace: Duration = Field(5.0, ge=0, description="How long in-flight model calls may finish.")


# --- routes -----------------------------------------------------------------------------------


class Match(Strict):
    path_prefix: Annotated[str, AfterValidator(_path_prefix)] = Field(
        "/", description="Requests whose path starts with this."
    )
    methods: list[Annotated[str, AfterValidator(str.upper)]] | None = Field(
        None, description="HTTP methods matched; unset matches every method."
    )


class Primary(Strict):
    url: HttpUrl = Field(description="Base URL of the legacy system or human review path.")
    timeout: Duration = Field(10.0, gt=0, description="Total time allowed for the primary's answer.")


class Circuit(Strict):
    failures: int = Field(
        50, ge=0, description="Consecutive failed model calls that open the circuit (0: never)."
    )
    cooldown: Duration = Field(5.0, gt=0, description="How long an open circuit skips the model.")


class Model(Strict):
    url: HttpUrl = Field(description="Base URL of the model service.")
    timeout: Duration = Field(1.0, gt=0, description="Total time allowed for the model's answer.")
    version: str = Field("unversioned", description="Model version written into every record.")
    circuit: Circuit = Field(default_factory=Circuit, description="Skip a model that keeps failing.")


class Decision(Strict):
    primary: JMESPath = Field(description="JMESPath to the decision in the primary's JSON response.")
    model: JMESPath = Field(description="JMESPath to the decision in the model's JSON response.")
    confidence: JMESPath | None = Field(None, description="JMESPath to the model's confidence (0..1).")
    usage: JMESPath | None = Field(None, description="JMESPath to the units the model call used.")
    explanation: JMESPath | None = Field(None, description="JMESPath to the model's explanation.")
    compare: Literal["exact", "numeric", "map"] = Field("exact", description="How decisions are compared.")
    tolerance: float | None = Field(None, ge=0, description="Absolute tolerance for compare: numeric.")
    map: dict[Any, Any] | None = Field(None, description="Model label -> primary label, for compare: map.")

    @model_validator(mode="after")
    def _compare_args(self) -> Decision:
        if self.compare == "numeric" and self.tolerance is None:
            raise FieldProblem(("tolerance",), "required with compare: numeric (e.g. tolerance: 0.01)")
        if self.compare == "map" and not self.map:
            raise FieldProblem(("map",), "required with compare: map (model label: primary label)")
        return self


class Mirror(Strict):
    sample: Share = Field(1.0, description="Share of requests copied to the model in shadow stage.")
    max_in_flight: int = Field(1024, ge=1, description="Most model calls in flight for this route.")
    max_queued_bytes: int = Field(16 * 2**20, ge=0, description="Most request bytes held by in-flight model calls.")


class Assisted(Strict):
    max_wait_ms: int = Field(150, ge=0, description="How long the primary call waits for a suggestion.")


class Autonomous(Strict):
    min_confidence: Share = Field(0.8, description="Least confidence for the model to answer.")
    primary_sample: Share = Field(0.1, description="Share also sent to the primary to measure agreement.")


class Cost(Strict):
    per_request: float = Field(0.0, ge=0, description="Price of one model call.")
    per_1k_units: float = Field(0.0, ge=0, description="Price per 1000 units (from decision.usage).")
    limit: float = Field(gt=0, description="Most spend per window.")
    window: Duration = Field(86400.0, gt=0, description="Fixed window aligned to UTC (1d resets at 00:00).")


class Budget(Strict):
    rate: RateValue | None = Field(None, description="Most model calls per second or minute.")
    burst: int | None = Field(None, ge=1, description="Calls allowed at once (default: one second's worth).")
    cost: Cost | None = Field(None, description="Spend limit per window.")
    on_store_error: Literal["closed", "open"] = Field(
        "closed", description="closed: no model calls while the store fails; open: local limits."
    )
    local_share: Annotated[float, Field(gt=0, le=1)] = Field(
        0.25, description="Share of the budget each replica may use alone while the store fails."
    )

    @property
    def burst_calls(self) -> int | None:
        if self.rate is None:
            return None
        return self.burst or max(1, round(self.rate.per_second))


class Route(Strict):
    name: RouteName = Field(description="Unique route name (metrics label, audit field).")
    match: Match = Field(default_factory=Match, description="Which requests this route takes.")
    primary: Primary = Field(description="The path that answers today.")
    model: Model = Field(description="The model under evaluation.")
    decision: Decision = Field(description="How decisions are read and compared.")
    segment: JMESPath | None = Field(
        None, description="JMESPath over {method, path, query, headers, body} of the request."
    )
    stage: Stage = Field(Stage.SHADOW, description="Initial stage (state in the store wins later).")
    mirror: Mirror = Field(default_factory=Mirror, description="Shadow copies.")
    assisted: Assisted = Field(default_factory=Assisted, description="Assisted stage settings.")
    autonomous: Autonomous = Field(default_factory=Autonomous, description="Autonomous stage settings.")
    budget: Budget = Field(default_factory=Budget, description="Rate and cost limits on the model.")
    policy: str | None = Field(None, description="Policy file (relative to the config) or shipped name.")


class Config(Strict):
    listen: Listen = Field(default_factory=Listen, description="Client traffic listener.")
    admin: Admin = Field(default_factory=Admin, description="Admin API listener and tokens.")
    log: Log = Field(default_factory=Log, description="Logging.")
    store: Store = Field(default_factory=Store, description="Where shared state lives.")
    audit: Audit = Field(default_factory=Audit, description="Audit trail.")
    shutdown: Shutdown = Field(default_factory=Shutdown, description="Graceful shutdown limits.")
    max_body_bytes: int = Field(2**20, ge=1, description="Largest request body accepted (413 above).")
    default_upstream: HttpUrl | None = Field(None, description="Where unmatched requests go (else 404).")
    routes: list[Route] = Field(default_factory=list, description="Routed decision endpoints.")

    @field_validator("routes")
    @classmethod
    def _unique_names(cls, routes: list[Route]) -> list[Route]:
        seen: dict[str, int] = {}
        for i, route in enumerate(routes):
            if route.name in seen:
                raise FieldProblem((i, "name"), f"{route.name!r} is already the name of routes[{seen[route.name]}]")
            seen[route.name] = i
        return routes


# --- policies (SPEC §6) -----------------------------------------------------------------------


class Gate(Strict):
    window: Duration = Field(gt=0, description="Evidence window, counted from entering the stage.")
    min_samples: int = Field(0, ge=0, description="Least paired decisions in the window.")
    min_dwell: Duration = Field(0.0, ge=0, description="Least time spent in the current stage.")
    min_agreement_lower_bound: Share = Field(0.0, description="Least Wilson 95% lower bound of agreement.")
    max_error_rate: Share = Field(1.0, description="Largest model error rate.")
    max_p99: Duration | None = Field(None, gt=0, description="Largest model p99 latency.")
    approval: Literal["auto", "manual"] = Field("auto", description="manual: wait for an operator.")


class Promote(Strict):
    shadow_to_assisted: Gate | None = Field(None, description="Gate from shadow to assisted.")
    assisted_to_autonomous: Gate | None = Field(None, description="Gate from assisted to autonomous.")


class RollbackRule(Strict):
    window: Duration = Field(gt=0, description="Evidence window, counted from entering the stage.")
    min_samples: int = Field(0, ge=0, description="Least samples before the rule may fire.")
    agreement_below: Share | None = Field(None, description="Fire when agreement falls below this.")
    error_rate_above: Share | None = Field(None, description="Fire when the error rate rises above this.")
    p99_above: Duration | None = Field(None, gt=0, description="Fire when model p99 rises above this.")
    to: Literal["previous", "shadow"] = Field("previous", description="Where the route goes.")

    @model_validator(mode="after")
    def _has_threshold(self) -> RollbackRule:
        if self.agreement_below is None and self.error_rate_above is None and self.p99_above is None:
            raise ValueError("a rollback rule needs agreement_below, error_rate_above or p99_above")
        return self


class Policy(Strict):
    evaluate_every: Duration = Field(30.0, gt=0, description="How often the policy is evaluated.")
    promote: Promote = Field(default_factory=Promote, description="Promotion gates.")
    rollback: list[RollbackRule] = Field(default_factory=list, description="Rules; the first that fires wins.")

    @model_validator(mode="before")
    @classmethod
    def _rollback_as_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("rollback"), dict):
            data = {**data, "rollback": [data["rollback"]]}
        return data
