"""Bulk extraction: distinct records (path templates with ids) one login reads in a day, held
against what the customer's other users read that day. Catches the slow scraper that stays
under every rate.

Kept cheap, since every login that reads a record is a candidate: a login's day and count are
one int in its scraping track (`ScrapingTrack.reads`); only a login past `bulk_min_records /
bulk_over_baseline` reads gets a set of the day's record hashes (capped at twice its threshold),
and only such logins are listed in their customer's day, next to a count of its readers. Users
below that mark can only make the threshold the floor, so the median counts them as zero. Below
the mark reads are counted, not distinct records: a person re-reading a few records reaches the
set sooner; the reads before it are not counted as records (so a login's distinct records are
undercounted by less than the mark, never overcounted)."""

from __future__ import annotations

import statistics

from gateway.config.detection import ScrapingDetector as ScrapingSettings
from gateway.state.bounded import BoundedTable

_MAX_READERS = 20_000  # logins past the mark, in sets
_MAX_CUSTOMERS = 100_000
_READERS_PER_CUSTOMER = 64  # enough for a median; the most recent
_RECHECK = 16  # distinct records between two looks at the customer's baseline
_PACK = 1 << 24  # ScrapingTrack.reads = day * _PACK + reads
DAY = 86400.0


class _Reads:
    __slots__ = ("day", "records", "threshold", "checked")

    def __init__(self, day: int) -> None:
        self.day, self.threshold, self.checked = day, 0, 0
        self.records: set[int] = set()


# One customer's readers today: (day, logins that read a record, those past the mark: made when a
# first reader passes it, most customers' days never need it). A tuple: while it holds no table
# the garbage collector stops tracking it (issue 14).
_Day = tuple[int, int, BoundedTable[str, int] | None]


class BulkReads:
    def __init__(self, settings: ScrapingSettings) -> None:
        self.settings = settings
        # Yesterday's entries are swept: a day starts every count afresh.
        self.readers: BoundedTable[str, _Reads] = BoundedTable(_MAX_READERS, _past)
        self.days: BoundedTable[str, _Day] = BoundedTable(_MAX_CUSTOMERS, _day_past)

    def read(self, reads: int, customer: str, user: str, record: int, at: float) -> tuple[int, tuple[int, int] | None]:
        """Note one record read by a login whose track holds `reads`; the track's new value, and
        (distinct records today, threshold) when over the threshold."""
        settings, day = self.settings, int(at // DAY)
        first = reads // _PACK != day
        count = 1 if first else reads % _PACK + 1
        packed = day * _PACK + min(count, _PACK - 1)
        today = self.days.get(customer)
        if today is None or today[0] != day:
            today = (day, 0, None)
        if first:
            today = (day, today[1] + 1, today[2])
            self.days.put(customer, today)
        mark = settings.bulk_min_records / settings.bulk_over_baseline
        if count < mark:
            return packed, None
        key = f"{customer}/{user}"
        held = self.readers.get(key)
        if held is None or held.day != day:
            held = _Reads(day)
        self.readers.put(key, held)
        records = held.records
        if record not in records and len(records) < max(held.threshold, settings.bulk_min_records) * 2:
            records.add(record)
        distinct = len(records)
        readers = today[2]
        if readers is None:
            readers = BoundedTable(_READERS_PER_CUSTOMER)
            today = (day, today[1], readers)
        readers.put(user, distinct)
        self.days.put(customer, today)
        if distinct < settings.bulk_min_records:
            return packed, None
        if not held.threshold or distinct - held.checked >= _RECHECK:
            held.checked = distinct
            held.threshold = self._threshold(today, user)
        return packed, ((distinct, held.threshold) if distinct > held.threshold else None)

    def _threshold(self, today: _Day, user: str) -> int:
        counts = [count for name, count in (today[2] or {}).items() if name != user]
        others = max(today[1] - 1, len(counts))
        counts += [0] * (others - len(counts))  # below the mark: at most the floor's business
        median = statistics.median(counts) if counts else 0
        return max(self.settings.bulk_min_records, round(median * self.settings.bulk_over_baseline))


def _past(entry: _Reads, now: float) -> bool:
    return entry.day != int(now // DAY)


def _day_past(entry: _Day, now: float) -> bool:
    return entry[0] != int(now // DAY)
