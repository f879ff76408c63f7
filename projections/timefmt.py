"""RFC 3339 UTC text for times, the one format every view and response uses."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    tz = value.tzinfo
    if tz is not UTC and tz is not None:  # UTC (every event's time) and naive times are UTC already
        value = value.astimezone(UTC)
    # isoformat() writes microseconds only when there are some, as RFC 3339 allows.
    return value.replace(tzinfo=None).isoformat() + "Z"


def from_rfc3339(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def rfc3339_from_epoch(value: float | None) -> str | None:
    return None if value is None else rfc3339(datetime.fromtimestamp(value, UTC))
