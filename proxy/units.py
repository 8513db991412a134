"""Durations and rates as users write them in YAML, parsed into plain numbers.

Durations: ``250ms``, ``30s``, ``10m``, ``1h``, ``1d`` (a number and one unit; decimals allowed).
Rates: ``200/s``, ``5000/m``, ``100/h``. Parsed values are seconds and calls per second.
Bare numbers are refused for durations: ``timeout: 2`` could mean seconds or milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")

DURATION_HINT = "use 250ms, 30s, 10m, 1h"
RATE_HINT = "use 200/s, 5000/m"


def parse_duration(text: object) -> float:
    """Return the duration in seconds; raise ValueError with a user-facing message."""
    if text is None:
        raise ValueError(f"empty: no duration given ({DURATION_HINT})")
    if isinstance(text, int | float) and not isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration: add a unit ({DURATION_HINT})")
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration ({DURATION_HINT})")
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration ({DURATION_HINT})")
    number, unit = m.group(1), m.group(2)
    if unit == "ms":  # divide, so that 300ms is exactly 0.3 and format_duration round-trips
        return float(number) / 1000
    return float(number) * _DURATION_UNITS[unit]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for messages and evidence."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds * 1000:.3f}".rstrip("0").rstrip(".") + "ms"  # never 1e+06ms


@dataclass(frozen=True, slots=True)
class Rate:
    """A call rate as configured: ``count`` calls per ``per_s`` seconds."""

    count: float
    per_s: float

    @property
    def per_second(self) -> float:
        return self.count / self.per_s

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.per_s]
        return f"{self.count:g}/{unit}"


def parse_rate(text: object) -> Rate:
    """Parse ``N/s``, ``N/m`` or ``N/h``; raise ValueError with a user-facing message."""
    if isinstance(text, Rate):
        return text
    if text is None:
        raise ValueError(f"empty: no rate given ({RATE_HINT})")
    if isinstance(text, int | float) and not isinstance(text, bool):
        raise ValueError(f"{text!r} is not a rate: say per what ({RATE_HINT})")
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a rate ({RATE_HINT})")
    m = _RATE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate ({RATE_HINT})")
    return Rate(float(m.group(1)), _RATE_UNITS[m.group(2)])
