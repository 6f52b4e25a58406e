"""RFC 3339 timestamps as exact integer instants.

The contract orders batches by `issued_at` *as an instant*, and producers use
different offsets and precisions, so timestamps become integer nanoseconds
since the Unix epoch (UTC). Python's datetime keeps only microseconds, which
would turn two batches 200 ns apart into a tie, hence this small parser.

Years run from 1678 to 2261: every instant then fits the signed 64 bits the
state, the credits topic and the native model keep it in (docs/semantics.md).
"""

from __future__ import annotations

import re
from datetime import date

from costtrace._native import FIRST_YEAR, LAST_YEAR
from costtrace._native import instant as _native_instant

__all__ = ["FIRST_YEAR", "LAST_YEAR", "YEAR_PATTERN", "TimestampError", "parse_instant", "parse_rfc3339"]

_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
# the years FIRST_YEAR to LAST_YEAR, for the published schema (tests/schemas holds it to them)
YEAR_PATTERN = "^(?:167[89]|16[89][0-9]|1[7-9][0-9]{2}|2[01][0-9]{2}|22[0-5][0-9]|226[01])-"
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_NS = 1_000_000_000
_DAYS_CACHE_LIMIT = 100_000
# "YYYY-MM-DD" -> days since the epoch; logs hold few distinct days, and the
# calendar check is the costly part of parsing
_days: dict[str, int] = {}


class TimestampError(ValueError):
    """The text is not an RFC 3339 date-time with an offset."""


def _days_since_epoch(day: str, text: str) -> int:
    days = _days.get(day)
    if days is None:
        try:
            days = date(int(day[:4]), int(day[5:7]), int(day[8:10])).toordinal() - _EPOCH_ORDINAL
        except ValueError:
            raise TimestampError(f"no such calendar date: {text!r}") from None
        if len(_days) >= _DAYS_CACHE_LIMIT:
            _days.clear()
        _days[day] = days
    return days


def parse_instant(text: str) -> int:
    """Nanoseconds since 1970-01-01T00:00:00Z for an RFC 3339 date-time.

    Requires an offset (`Z` or `±hh:mm`). RFC 3339 allows any number of
    fractional digits; those past the ninth (below a nanosecond) are dropped.
    A leap second (`:60`) is refused, as JSON Schema's `date-time` checker
    does, so that producers validating with the published schema and the
    model always agree; so is a year outside `FIRST_YEAR`..`LAST_YEAR`
    (the published schema's `pattern` says the same).
    """
    ns = _native_instant(text)  # every valid date-time; None for the rest
    return parse_rfc3339(text) if ns is None else ns


def parse_rfc3339(text: str) -> int:
    """`parse_instant` for any RFC 3339 date-time: the reference its fast path is tested against."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise TimestampError(f"not an RFC 3339 date-time with offset: {text!r}")
    day, hh, mi, ss, frac, sign, oh, om = m.groups()
    if not FIRST_YEAR <= int(day[:4]) <= LAST_YEAR:
        raise TimestampError(f"year out of range ({FIRST_YEAR} to {LAST_YEAR}): {text!r}")
    hour, minute, second = int(hh), int(mi), int(ss)
    if hour > 23 or minute > 59 or second > 59:
        raise TimestampError(f"time of day out of range: {text!r}")
    seconds = _days_since_epoch(day, text) * 86400 + hour * 3600 + minute * 60 + second
    if sign is not None:
        off_h, off_m = int(oh), int(om)
        if off_h > 23 or off_m > 59:
            raise TimestampError(f"offset out of range: {text!r}")
        offset = off_h * 3600 + off_m * 60
        seconds = seconds - offset if sign == "+" else seconds + offset
    return seconds * _NS + (int(frac[:9].ljust(9, "0")) if frac else 0)
