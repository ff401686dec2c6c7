"""Time: stored times are UTC ``YYYY-MM-DDTHH:MM:SSZ`` strings; computations use aware datetimes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_UTC_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def now_utc() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


def now_iso() -> str:
    """Now, as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.now(UTC).strftime(_UTC_FORMAT)


def to_utc_iso(value: datetime | str) -> str:
    """An aware datetime or an ISO-8601 string with an offset, as UTC ``...Z``.

    Naive values are refused: a local time without a zone is ambiguous.
    """
    if isinstance(value, str):
        if _UTC_RE.match(value):
            return value
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 timestamp") from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise ValueError(f"{value!r} is not a timestamp")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"timestamp {value!r} has no time zone; give UTC (...Z) or an offset")
    return parsed.astimezone(UTC).strftime(_UTC_FORMAT)


def parse_utc(value: str) -> datetime:
    """A stored ``...Z`` timestamp as an aware datetime."""
    return datetime.strptime(value, _UTC_FORMAT).replace(tzinfo=UTC)
