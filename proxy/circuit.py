"""A consecutive-failure circuit breaker for the model path (``skipped: circuit``). Pure; clock injected."""

from __future__ import annotations


class Circuit:
    """Opens after ``failures`` consecutive failed calls; after ``cooldown_s`` lets one trial through.

    ``failures == 0`` disables it: :meth:`allow` is always true.
    """

    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._streak = 0
        self._open_until: float | None = None
        self._trial = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self, now: float) -> bool:
        if self._open_until is None:
            return True
        if now >= self._open_until and not self._trial:
            self._trial = True  # half-open: exactly one call probes the model
            return True
        return False

    def abandon(self) -> None:
        """The call :meth:`allow` let through was not made (budget refused it, shutdown): let the
        next one probe instead, so an open circuit can never stay open for good."""
        self._trial = False

    def record(self, ok: bool, now: float) -> None:
        if not self.failures:
            return
        if ok:
            self._streak, self._open_until, self._trial = 0, None, False
            return
        self._streak += 1
        if self._trial or self._streak >= self.failures:
            self._open_until, self._trial = now + self.cooldown_s, False
