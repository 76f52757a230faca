"""Impossible travel, when a GeoIP city database is configured: two requests of one user from
places further apart than anyone could travel in between. Skipped cleanly without one."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from gateway.state.bounded import BoundedTable

log = logging.getLogger("fairgate.detect")
_MAX_USERS = 100_000


class TravelCheck:
    def __init__(self, database: Path | None, max_speed_kmh: float) -> None:
        self._reader = None
        self._max_speed = max_speed_kmh
        self._last: BoundedTable[str, tuple[float, float, float]] = BoundedTable(_MAX_USERS)  # user -> lat, lon, at
        if database is None:
            return
        try:
            import maxminddb  # optional: pip install maxminddb

            self._reader = maxminddb.open_database(str(database))
        except (ImportError, OSError, ValueError) as exc:
            log.warning("impossible-travel check skipped", extra={"database": str(database), "error": str(exc)})

    @property
    def enabled(self) -> bool:
        return self._reader is not None

    def moved_too_fast(self, user: str, address: str, at: float) -> bool:
        if self._reader is None:
            return False
        try:
            record = self._reader.get(address) or {}
        except ValueError:
            return False
        location = record.get("location") if isinstance(record, dict) else None
        if not location or "latitude" not in location:
            return False
        here = (float(location["latitude"]), float(location["longitude"]), at)
        before = self._last.get(user)
        self._last.put(user, here)
        if before is None or at <= before[2]:
            return False
        hours = (at - before[2]) / 3600
        return distance_km(before[0], before[1], here[0], here[1]) / hours > self._max_speed


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))
