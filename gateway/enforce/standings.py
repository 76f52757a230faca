"""Standings in force, looked up on the request path (nothing to do while the table is empty)
and merged from the fleet: the latest decision about a subject wins."""

from __future__ import annotations

from typing import Any

from gateway.enforce.ladder import BY_LADDER, OK, SEVERITY, Standing
from gateway.state.store import shared_entries

_MAX_REMEMBERED = 100_000


def customer_subject(customer: str) -> str:
    return f"customer:{customer}"


def user_subject(customer: str, user: str) -> str:
    return f"user:{customer}/{user}"


class Standings:
    def __init__(self) -> None:
        self._latest: dict[str, Standing] = {}  # every subject's latest decision, ok included
        self._active: dict[str, Standing] = {}  # the ones that change what a request gets

    def __bool__(self) -> bool:
        return bool(self._active)

    def apply(self, standing: Standing) -> bool:
        """Take a decision unless a later one about the subject is known; whether it was taken."""
        latest = self._latest.get(standing.subject)
        if latest is not None and _order(latest) > _order(standing):
            return False
        if len(self._latest) >= _MAX_REMEMBERED and latest is None:
            self._forget_ended(standing.since)
        self._latest[standing.subject] = standing
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

    def _forget_ended(self, now: float) -> None:
        for subject in [s for s, standing in self._latest.items() if standing.until <= now]:
            del self._latest[subject]
            self._active.pop(subject, None)


def _order(standing: Standing) -> tuple[float, bool, int]:
    """Which of two decisions about a subject stands: the later; at the same instant an admin's,
    then the stricter (so every gateway of a fleet settles on the same one)."""
    return standing.since, standing.by != BY_LADDER, SEVERITY[standing.state]
