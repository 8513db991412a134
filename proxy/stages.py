"""The closed sets of the product: stages, skips, fallbacks, actors.

Metric label values and audit record fields come only from these enums, so a typo cannot invent
a new label. Each is a ``str`` enum: its value is what users see in YAML, JSON and metrics.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    SHADOW = "shadow"
    ASSISTED = "assisted"
    AUTONOMOUS = "autonomous"

    @property
    def level(self) -> int:
        """0, 1, 2: the value of the ``stage{route}`` gauge."""
        return _LEVEL[self]

    def next(self) -> Stage | None:
        return _NEXT.get(self)

    def previous(self) -> Stage | None:
        return _PREVIOUS.get(self)


_LEVEL = {Stage.SHADOW: 0, Stage.ASSISTED: 1, Stage.AUTONOMOUS: 2}
_NEXT = {Stage.SHADOW: Stage.ASSISTED, Stage.ASSISTED: Stage.AUTONOMOUS}
_PREVIOUS = {Stage.ASSISTED: Stage.SHADOW, Stage.AUTONOMOUS: Stage.ASSISTED}


class Skip(StrEnum):
    """Why the model was not called for a request (``model.skipped`` in the audit record)."""

    SAMPLED_OUT = "sampled_out"
    OVERLOAD = "overload"
    RATE = "rate"
    COST = "cost"
    CIRCUIT = "circuit"
    SHUTDOWN = "shutdown"


class Fallback(StrEnum):
    """Why the primary answered in autonomous stage (``fallback`` in the audit record)."""

    TIMEOUT = "timeout"
    ERROR = "error"
    INVALID = "invalid"
    LOW_CONFIDENCE = "low_confidence"
    BUDGET = "budget"
    OVERLOAD = "overload"
    CIRCUIT = "circuit"


class ModelResultKind(StrEnum):
    """``model_calls_total{result}`` for calls that were attempted."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    INVALID = "invalid"


class Actor(StrEnum):
    POLICY = "policy"
    ADMIN = "admin"


class ServedBy(StrEnum):
    PRIMARY = "primary"
    MODEL = "model"
