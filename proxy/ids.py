"""ULIDs (26 chars, Crockford base32, time-ordered) for request and record ids.

Hand-written rather than a dependency because it sits on the request path (several per request).
Encoding takes 13 lookups in a table of 1024 two-character strings, 10 bits at a time.
"""

from __future__ import annotations

import random
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)  # index = 10 bits
_rand = random.getrandbits  # reseeded after fork by the random module


def ulid(now_s: float | None = None) -> str:
    """A new ULID: 48 bits of milliseconds since the epoch, 80 random bits."""
    ms = int((time.time() if now_s is None else now_s) * 1000)
    v = (ms << 80) | _rand(80)  # 128 bits, written as 130: the top 2 bits are zero
    p = _PAIRS
    return (
        p[v >> 120] + p[(v >> 110) & 1023] + p[(v >> 100) & 1023] + p[(v >> 90) & 1023] + p[(v >> 80) & 1023]
        + p[(v >> 70) & 1023] + p[(v >> 60) & 1023] + p[(v >> 50) & 1023] + p[(v >> 40) & 1023]
        + p[(v >> 30) & 1023] + p[(v >> 20) & 1023] + p[(v >> 10) & 1023] + p[v & 1023]
    )  # fmt: skip


def ulid_time_s(value: str) -> float:
    """The timestamp (seconds) carried by a ULID."""
    number = 0
    for ch in value.upper():
        number = number * 32 + _CROCKFORD.index(ch)
    return (number >> 80) / 1000.0
