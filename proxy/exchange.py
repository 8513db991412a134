"""What one request did: the values the I/O edges fill in and the record builder reads.

Plain dataclasses with slots: the handler and the model task each fill their half, and whichever
finishes second hands the exchange to the recorder (:meth:`Exchange.half_done`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.decisions import Extracted
from proxy.stages import Fallback, ServedBy, Skip, Stage


@dataclass(slots=True)
class Reply:
    """What an upstream answered, or why it did not (``error``: ``timeout`` | ``error``)."""

    status: int | None = None
    headers: Mapping[str, str] | None = None
    body: bytes | None = None
    latency_ms: float | None = None
    error: str | None = None
    detail: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


@dataclass(slots=True)
class ModelCall:
    """The model's side of an exchange. ``error`` is the final class: timeout, error or invalid."""

    sampled_at: float = 1.0
    started: bool = False
    reply: Reply | None = None
    skipped: Skip | None = None
    doc: Any = None
    extracted: Extracted | None = None
    error: str | None = None
    cost: float = 0.0
    suggestion_shown: bool | None = None
    suggestion_late: bool | None = None

    @property
    def decision(self) -> Any:
        """The model's decision when the call succeeded, else None."""
        if self.error is None and self.extracted is not None:
            return self.extracted.decision
        return None


@dataclass(slots=True)
class Exchange:
    """One client request through one route."""

    route: Any  # the route's runtime object (name, decisions, model_version)
    stage: Stage
    epoch: int
    ts: float
    request_id: str
    method: str
    path: str
    query: str  # the raw query string (parsed only if the route's segment reads it)
    headers: Mapping[str, str]
    body: bytes
    send_body: bytes | None = None  # what upstreams get: None when the client sent no body at all
    model: ModelCall = field(default_factory=ModelCall)
    primary: Reply | None = None
    primary_sampled: bool | None = None
    served_by: ServedBy = ServedBy.PRIMARY
    fallback: Fallback | None = None
    halves: int = 1
    on_complete: Callable[[Exchange], None] | None = None

    def half_done(self) -> None:
        """Called once by each side that runs apart; the last call hands the exchange on."""
        self.halves -= 1
        if self.halves == 0 and self.on_complete is not None:
            self.on_complete(self)
