"""Per user class: which answers it is meant to get, what it got, and the run's verdict.

A refusal a class is meant to meet (the scraper's 403, the bursty integration's 429) is a
success for locust; any other status is a failure, and any failure fails the run.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ClassTally:
    expected: frozenset[int]
    statuses: Counter = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def unexpected(self) -> int:
        return sum(count for status, count in self.statuses.items() if status not in self.expected)


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.classes: dict[str, ClassTally] = {}

    def expect(self, label: str, statuses: frozenset[int]) -> None:
        with self._lock:
            self.classes.setdefault(label, ClassTally(statuses))

    def record(self, label: str, status: int) -> bool:
        """Count one answer; True when the class is meant to get it."""
        with self._lock:
            tally = self.classes[label]
            tally.statuses[status] += 1
            return status in tally.expected

    def table(self) -> str:
        lines = [f"{'class':<20} {'requests':>8} {'unexpected':>10}  statuses (expected: {{...}})"]
        for label, tally in sorted(self.classes.items()):
            got = ", ".join(f"{status or 'no answer'}: {count}" for status, count in sorted(tally.statuses.items()))
            lines.append(f"{label:<20} {tally.requests:>8} {tally.unexpected:>10}  {got}  "
                         f"(expected: {{{', '.join(map(str, sorted(tally.expected)))}}})")
        return "\n".join(lines)

    @property
    def requests(self) -> int:
        return sum(tally.requests for tally in self.classes.values())

    @property
    def unexpected(self) -> int:
        return sum(tally.unexpected for tally in self.classes.values())
