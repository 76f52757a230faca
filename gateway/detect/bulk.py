"""Bulk extraction: distinct records (path templates with ids) one login reads in a day, held
against what the customer's other users read that day. Catches the slow scraper that stays
under every rate. Only logins that read records are kept, each a bounded set of the day's
record hashes (capped at twice its threshold); a customer keeps its users' counts, bounded."""

from __future__ import annotations

import statistics

from gateway.config.detection import ScrapingDetector as ScrapingSettings
from gateway.state.bounded import BoundedTable

_MAX_READERS = 50_000
_MAX_CUSTOMERS = 20_000
_USERS_PER_CUSTOMER = 64  # enough for a median; the most recent readers
_RECHECK = 16  # distinct records between two looks at the customer's baseline
DAY = 86400.0


class _Reads:
    __slots__ = ("day", "records", "threshold", "checked")

    def __init__(self, day: int) -> None:
        self.day = day
        self.records: set[int] = set()
        self.threshold = 0
        self.checked = 0


class BulkReads:
    def __init__(self, settings: ScrapingSettings) -> None:
        self.settings = settings
        self._readers: BoundedTable[str, _Reads] = BoundedTable(_MAX_READERS)
        self._customers: BoundedTable[str, BoundedTable[str, tuple[int, int]]] = BoundedTable(_MAX_CUSTOMERS)

    def read(self, customer: str, user: str, record: int, at: float) -> tuple[int, int] | None:
        """Note one record read; (distinct records today, threshold) when over the threshold."""
        day = int(at // DAY)
        key = f"{customer}/{user}"
        reads = self._readers.get(key)
        if reads is None or reads.day != day:
            reads = _Reads(day)
        self._readers.put(key, reads)
        records = reads.records
        floor = self.settings.bulk_min_records
        cap = max(reads.threshold, floor) * 2
        if record not in records and len(records) < cap:
            records.add(record)
        count = len(records)
        users = self._customers.get(customer)
        if users is None:
            users = BoundedTable(_USERS_PER_CUSTOMER)
        self._customers.put(customer, users)
        users.put(user, (day, count))
        if count < floor:
            return None
        if not reads.threshold or count - reads.checked >= _RECHECK:
            reads.checked = count
            reads.threshold = self._threshold(users, user, day)
        return (count, reads.threshold) if count > reads.threshold else None

    def _threshold(self, users: BoundedTable[str, tuple[int, int]], user: str, day: int) -> int:
        others = [count for name, (seen, count) in users.items() if name != user and seen == day]
        median = statistics.median(others) if others else 0
        return max(self.settings.bulk_min_records, round(median * self.settings.bulk_over_baseline))
