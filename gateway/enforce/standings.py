"""Standings in force, looked up on the request path (nothing to do while the table is empty)
and merged from the fleet: the latest decision about a subject wins."""

from __future__ import annotations

from typing import Any

from gateway.enforce.ladder import BY_LADDER, OK, SEVERITY, Standing
from gateway.state.bounded import BoundedTable
from gateway.state.store import shared_entries

# Latest decisions kept at most; past it the least recently decided go (the sweep forgets ended
# ones first). A standing in force is kept in `_active` whatever this bound: forgetting one
# would lift a suspension, and only subjects the ladder acted on are there.
_MAX_REMEMBERED = 100_000


def customer_subject(customer: str) -> str:
    return f"customer:{customer}"


def user_subject(customer: str, user: str) -> str:
    return f"user:{customer}/{user}"


class Standings:
    def __init__(self) -> None:
        # every subject's latest decision, ok included
        self.latest_table: BoundedTable[str, Standing] = BoundedTable(_MAX_REMEMBERED, _long_ended)
        self._latest = self.latest_table
        # the ones that change what a request gets; swept once ended, never evicted
        self.active_table: BoundedTable[str, Standing] = BoundedTable(2**62, _ended)
        self._active = self.active_table

    def __bool__(self) -> bool:
        return bool(self._active)

    def apply(self, standing: Standing) -> bool:
        """Take a decision unless a later one about the subject is known; whether it was taken."""
        latest = self._latest.get(standing.subject)
        if latest is not None and _order(latest) > _order(standing):
            return False
        self._latest.put(standing.subject, standing)
        if standing.state == OK:
            self._active.pop(standing.subject, None)
        else:
            self._active[standing.subject] = standing
        return True

    def latest(self, subject: str) -> Standing | None:
        return self._latest.get(subject)

    def in_force(self, subject: str, now: float) -> Standing | None:
        standing = self._active.get(subject)
        if standing is not None and now >= standing.until:
            del self._active[subject]
            return None
        return standing

    def strictest(self, customer: str, user: str, now: float) -> Standing | None:
        """The stricter of the customer's and the user's standing in force, if any."""
        by_customer = self.in_force(customer_subject(customer), now)
        by_user = self.in_force(user_subject(customer, user), now)
        if by_customer is None or (by_user is not None and SEVERITY[by_user.state] > SEVERITY[by_customer.state]):
            return by_user
        return by_customer

    def subjects_of(self, customer: str) -> list[Standing]:
        """The latest decisions about a customer and each of its users."""
        own, users = customer_subject(customer), user_subject(customer, "")
        return [s for subject, s in self._latest.items() if subject == own or subject.startswith(users)]

    def all_latest(self) -> list[Standing]:
        return list(self._latest.values())

    def sync_from(self, entries: list[dict[str, Any]]) -> None:
        for standing in shared_entries(Standing, entries):
            self.apply(standing)


def _ended(standing: Standing, now: float) -> bool:
    return standing.until <= now


# A decision is remembered this long after it ended: the fleet keeps sharing an entry until
# its ladder window has passed too, and an older decision synced again must still lose to it.
_KEEP_ENDED = 7 * 86400.0


def _long_ended(standing: Standing, now: float) -> bool:
    return standing.until + _KEEP_ENDED <= now


def _order(standing: Standing) -> tuple[float, bool, int]:
    """Which of two decisions about a subject stands: the later; at the same instant an admin's,
    then the stricter (so every gateway of a fleet settles on the same one)."""
    return standing.since, standing.by != BY_LADDER, SEVERITY[standing.state]
