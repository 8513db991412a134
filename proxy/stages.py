"""The closed sets of the product: stages, skips, fallbacks, actors.

Metric label values and audit record fields come only from these enums, so a typo cannot invent
a new label. Each is a ``str`` enum: its value is what users see in YAML, JSON and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


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


@dataclass(frozen=True, slots=True)
class RouteState:
    """A route's place on the ladder, as stored (shared by replicas with a Redis store).

    ``epoch`` increments on every stage change (window statistics are kept per epoch, so a window
    counts only records since the route entered its stage); ``version`` increments on every change
    of any field and is what compare-and-set checks.
    """

    stage: Stage
    epoch: int = 1
    version: int = 1
    entered_at: float = 0.0
    hold: bool = False
    pending: str | None = None
    pending_evidence: dict[str, Any] | None = None

    def with_stage(self, stage: Stage, now: float) -> RouteState:
        """Move to ``stage``: a new epoch, no pending promotion."""
        return replace(
            self, stage=stage, epoch=self.epoch + 1, version=self.version + 1, entered_at=now,
            pending=None, pending_evidence=None,
        )  # fmt: skip

    def changed(self, **fields: Any) -> RouteState:
        """Any other change (hold, pending): same epoch, next version."""
        return replace(self, version=self.version + 1, **fields)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage.value, "epoch": self.epoch, "version": self.version,
            "entered_at": self.entered_at, "hold": self.hold, "pending": self.pending,
            "pending_evidence": self.pending_evidence,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouteState:
        return cls(
            stage=Stage(data["stage"]), epoch=int(data["epoch"]), version=int(data["version"]),
            entered_at=float(data["entered_at"]), hold=bool(data["hold"]), pending=data.get("pending"),
            pending_evidence=data.get("pending_evidence"),
        )  # fmt: skip
