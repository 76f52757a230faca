"""The enforcement ladder: where a subject stands (ok, warned, throttled, suspended) and the rule
that moves it up. Pure: counts and the clock come in, a new standing (or none) comes out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from gateway.config.enforcement import Ladder


class State(StrEnum):
    """Where a subject stands; the values appear in headers, problem bodies and audit events."""

    OK = "ok"
    WARNED = "warned"
    THROTTLED = "throttled"
    SUSPENDED = "suspended"


OK, WARNED, THROTTLED, SUSPENDED = State.OK, State.WARNED, State.THROTTLED, State.SUSPENDED
# Standing.by of what the ladder decided; any other value names the admin who did.
BY_LADDER = "ladder"
SEVERITY = {OK: 0, WARNED: 1, THROTTLED: 2, SUSPENDED: 3}
NEXT = {OK: WARNED, WARNED: THROTTLED, THROTTLED: SUSPENDED, SUSPENDED: SUSPENDED}


@dataclass(frozen=True, slots=True)
class Standing:
    subject: str  # "customer:C" or "user:C/U"
    state: State  # a plain string when read back from the fleet's store (equal all the same)
    since: float  # when it was decided; the latest decision about a subject wins across a fleet
    until: float  # when it ends by itself (ok: when the entry may be forgotten)
    reason: str
    # Violations before this do not count any more (a throttle, a suspension or a reinstatement
    # starts the count afresh).
    counts_from: float = 0.0
    by: str = BY_LADDER  # or the admin who decided it
    # What the warning says: per limit or detector, JSON-ready (gateway.enforce.notices), latest first.
    notices: tuple[dict[str, Any], ...] = field(default=(), hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.notices, tuple):  # a list when read back from the fleet's store
            object.__setattr__(self, "notices", tuple(self.notices))

    def in_force(self, now: float) -> bool:
        return self.state != OK and now < self.until

    def as_entry(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Counts:
    violations: int  # since the standing's counts_from, within the window
    throttles: int  # within ladder.throttles_within
    suspensions: int  # earlier suspensions, for the doubling


def judge(ladder: Ladder, current: Standing | None, subject: str, counts: Counts, egregious: bool,
          reason: str, now: float) -> Standing | None:
    """The subject's new standing after a violation, or None when it stays where it is."""
    state = current.state if current is not None and current.in_force(now) else OK
    if state == SUSPENDED:
        return None  # a suspension ends by itself (or by an admin), not by more violations
    counts_from = current.counts_from if current is not None else 0.0
    throttle = counts.violations >= ladder.throttle_at and state != THROTTLED
    if egregious or (throttle and counts.throttles + 1 >= ladder.suspend_after_throttles):
        term = min(ladder.suspend_for * 2 ** counts.suspensions, ladder.max_suspension)
        why = f"egregious violation: {reason}" if egregious else (
            f"{counts.throttles + 1} throttles within {_span(ladder.throttles_within)}; last: {reason}")
        return Standing(subject, SUSPENDED, now, now + term, why, counts_from=now)
    if throttle:
        return Standing(subject, THROTTLED, now, now + ladder.throttle_for,
                        f"{counts.violations} violations within {_span(ladder.window)}; last: {reason}",
                        counts_from=now)
    if counts.violations >= ladder.warn_at and state in (OK, WARNED):
        # A warning already in force is extended, so it lasts warn_for after the latest violation.
        return Standing(subject, WARNED, now, now + ladder.warn_for,
                        f"{counts.violations} violations within {_span(ladder.window)}; last: {reason}",
                        counts_from=counts_from)
    return None


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
