"""Calendar periods in a configured time zone: which day or month a moment falls in, and when
that period ends. Quotas and usage metering both count by them."""

from __future__ import annotations

import datetime as dt
import zoneinfo


def period_of(zone: zoneinfo.ZoneInfo, period: str, at: float) -> tuple[float, str, float]:
    """The day or month containing `at`: its start, its id ("2026-11-21" or "2026-11"), its end."""
    local = dt.datetime.fromtimestamp(at, zone)
    if period == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        bucket = start.strftime("%Y-%m-%d")
        end_local = (start + dt.timedelta(days=1)).replace(tzinfo=None)
    else:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        bucket = start.strftime("%Y-%m")
        end_local = (start.replace(year=start.year + 1, month=1) if start.month == 12
                     else start.replace(month=start.month + 1)).replace(tzinfo=None)
    end = end_local.replace(tzinfo=zone).timestamp()  # the zone's offset at the end, not the start
    return start.timestamp(), bucket, end


def month_bounds(zone: zoneinfo.ZoneInfo, month: str) -> tuple[float, float]:
    """Start and end (wall time) of a month given as "2026-11"; ValueError if malformed."""
    moment = dt.datetime.strptime(month, "%Y-%m").replace(day=15, tzinfo=zone)
    start, _, end = period_of(zone, "month", moment.timestamp())
    return start, end


class Calendar:
    """The current day and month, cached until they end (the request path asks every time)."""

    def __init__(self, zone: zoneinfo.ZoneInfo) -> None:
        self.zone = zone
        self._current: dict[str, tuple[float, str, float]] = {}

    def period(self, period: str, now: float) -> tuple[str, float]:
        """The bucket id and end of the day or month containing `now`."""
        cached = self._current.get(period)
        if cached is None or not cached[0] <= now < cached[2]:
            cached = self._current[period] = period_of(self.zone, period, now)
        return cached[1], cached[2]
