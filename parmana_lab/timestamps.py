"""The one timestamp form on the wire: UTC, millisecond precision, ``Z``."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], datetime]
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", re.ASCII)


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


def format_ts(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ``; naive datetimes are taken as UTC."""
    if moment.tzinfo is not None and moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_ts(text: str) -> datetime:
    """Inverse of format_ts; ValueError for any other form."""
    if not isinstance(text, str) or not TIMESTAMP.fullmatch(text):
        raise ValueError(f"{text!r} is not a UTC timestamp like 2026-01-31T12:00:00.000Z")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def time_bound(value: str | datetime) -> str:
    """A person's time filter as a wire timestamp, so that comparing text compares times.

    Takes a datetime, a date (midnight UTC) or an ISO 8601 time with ``Z`` or an
    offset; ValueError for anything else, including a time with no zone.
    """
    moment = value
    if not isinstance(value, datetime):
        try:
            moment = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a date (2026-01-31) or a time (2026-01-31T12:00:00.000Z)") from None
        if len(value) == 10:
            moment = moment.replace(tzinfo=timezone.utc)
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone: add Z for UTC")
    return format_ts(moment)
