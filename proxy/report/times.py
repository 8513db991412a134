"""Timestamps in the report: one canonical text form that sorts like time. Pure.

Records carry RFC 3339 UTC timestamps with microseconds (``2026-11-22T10:00:00.123456Z``); in that
form string order is time order, so the hot path compares strings and parses only odd forms.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from proxy.report.read import ReportError


def parse_ts(text: str) -> datetime:
    """An RFC 3339 timestamp as an aware UTC datetime (raises ValueError, also without a zone)."""
    ts = datetime.fromisoformat(text)
    if ts.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return ts.astimezone(UTC)


def canonical(ts: datetime) -> str:
    """``2026-11-22T10:00:00.123456Z``: the form records are written in."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ts_key(text: str) -> str:
    """``text`` in canonical form (as is when it already is; raises ValueError when not RFC 3339)."""
    if len(text) == 27 and text[-1] == "Z" and text[10] == "T" and text[19] == ".":
        return text
    return canonical(parse_ts(text))


def parse_bound(text: str, *, end: bool) -> str:
    """A ``--since``/``--until`` value in canonical form: RFC 3339, or a date meaning that whole day.

    ``--since 2026-11-22`` starts at its midnight (UTC); ``--until 2026-11-22`` ends at the next one.
    Raises :class:`ReportError` naming the flag.
    """
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return canonical(start + timedelta(days=1) if end else start)
    try:
        return canonical(parse_ts(text))
    except ValueError:
        flag = "--until" if end else "--since"
        raise ReportError(
            f"{flag} {text!r}: not an RFC 3339 timestamp (2026-11-22T10:00:00Z) or a date (2026-11-22)"
        ) from None
