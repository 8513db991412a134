"""ULIDs (26 chars, Crockford base32, time-ordered) for request and record ids.

Hand-written rather than a dependency because it sits on the request path: base64's C encoder
plus one translate keeps it to a few microseconds.
"""

from __future__ import annotations

import base64
import random
import time

_RFC4648 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CROCKFORD = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = bytes.maketrans(_RFC4648, _CROCKFORD)
_rand = random.getrandbits  # reseeded after fork by the random module


def ulid(now_s: float | None = None) -> str:
    """A new ULID: 48 bits of milliseconds since the epoch, 80 random bits."""
    ms = int((time.time() if now_s is None else now_s) * 1000)
    value = (ms << 80) | _rand(80)
    # 130 bits = 26 base32 characters; encode 160 bits and keep the last 26.
    return base64.b32encode(value.to_bytes(20, "big"))[-26:].translate(_TO_CROCKFORD).decode()


def ulid_time_s(value: str) -> float:
    """The timestamp (seconds) carried by a ULID."""
    number = 0
    for ch in value.upper().encode():
        number = number * 32 + _CROCKFORD.index(ch)
    return (number >> 80) / 1000.0
