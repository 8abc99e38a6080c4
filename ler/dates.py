"""Ledger times (ms since the epoch, UTC) as text, and XML Schema dateTimes read back, for any time a ledger
field can hold: up to 2^64 - 1 ms, some 584 million years ahead, far beyond what Python's datetime (year
9999) or a platform's gmtime can show. Pure integer arithmetic on the proleptic Gregorian calendar
(H. Hinnant's days-from-civil algorithms), so no date the ledger accepts makes a display or a check fail.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

MAX_MS = 2**64 - 1          # the largest time a ledger field (u64 ms) holds
_MS_PER_DAY = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# An XML Schema 1.1 dateTime: year (4 digits or more, no leading zero beyond 4), month, day, time, an
# optional fraction and an optional zone.
XSD_DATETIME = re.compile(r"(-?)(\d{4,})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})?")


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def civil_from_days(z: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number since 1970-01-01."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _parts(ms: int) -> tuple[int, int, int, int, int, int, int]:
    days, rem = divmod(int(ms), _MS_PER_DAY)
    y, mo, d = civil_from_days(days)
    secs, milli = divmod(rem, 1000)
    return y, mo, d, secs // 3600, secs // 60 % 60, secs % 60, milli


def utc_text(ms: int) -> str:
    """"2027-06-30 23:59:59 UTC" for any whole number of ms since the epoch."""
    y, mo, d, h, mi, s, _ = _parts(ms)
    return f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d} UTC"


def iso_ms(ms: int) -> str:
    """An XML Schema dateTimeStamp in UTC ("2027-06-30T23:59:59.999Z"; whole seconds without a fraction),
    for any time from year 1 on, five-digit years and more included."""
    y, mo, d, h, mi, s, milli = _parts(ms)
    if y < 1:
        raise ValueError(f"{ms} ms is before year 1")
    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"
    return f"{text}.{milli:03d}Z" if milli else f"{text}Z"


def xsd_ms(value: str) -> int | None:
    """An XML Schema dateTime as ms since the epoch (a fraction cut to ms, no zone read as UTC); None if it is
    not one. Years 1 to 9999 are read by datetime.fromisoformat; later years (no leading zero) by the same
    rules: real month and day, hours 00-23, minutes and seconds 00-59, a zone within a day."""
    m = XSD_DATETIME.fullmatch(value)
    if m is None:
        return None
    sign, year, frac = m.group(1), m.group(2), m.group(8)
    if sign or (len(year) > 4 and year.startswith("0")):
        return None
    if len(year) == 4:
        text = value
        if frac:  # fromisoformat takes at most 6 fractional digits
            text = value.replace(frac, frac[:7].ljust(7, "0"), 1)
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        td = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)) - _EPOCH
        return td.days * _MS_PER_DAY + td.seconds * 1000 + td.microseconds // 1000
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(2, 8))
    if not (1 <= mo <= 12 and 1 <= d <= _days_in_month(y, mo) and h <= 23 and mi <= 59 and s <= 59):
        return None
    offset = 0
    zone = m.group(9)
    if zone and zone != "Z":
        oh, om = int(zone[1:3]), int(zone[4:6])
        if oh > 23 or om > 59:
            return None
        offset = (oh * 60 + om) * 60_000 * (-1 if zone[0] == "-" else 1)
    milli = int(frac[1:4].ljust(3, "0")) if frac else 0
    return days_from_civil(y, mo, d) * _MS_PER_DAY + ((h * 60 + mi) * 60 + s) * 1000 + milli - offset


__all__ = ["MAX_MS", "XSD_DATETIME", "civil_from_days", "days_from_civil", "iso_ms", "utc_text", "xsd_ms"]
