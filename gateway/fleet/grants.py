"""Exceptions by agreement and allow-list entries made through the admin API, each until a
date: a customer's limit raised, a customer exempt from a detector or the ladder, a user or an
integration's user agent allow-listed. Shared by a fleet through the state store; the limits,
the detectors and the ladder consult them."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.config.limits import Override
from gateway.state.store import shared_entries

EXEMPTABLE = ("ladder", "sharing", "scraping", "seats", "all")
OVERRIDE, EXEMPT, ALLOW_USER, ALLOW_AGENT = "override", "exempt", "allow_user", "allow_agent"


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    kind: str  # override, exempt, allow_user, allow_agent
    until: float
    by: str
    reason: str
    granted_at: float
    customer: str | None = None  # None: every customer (an allow-listed user agent)
    user: str | None = None  # allow_user
    agent: str | None = None  # allow_agent: a substring of the User-Agent, case-insensitive
    exempt: str | None = None  # exempt: ladder, sharing, scraping, seats or all
    override: dict[str, Any] = field(default_factory=dict)  # limit, rate, burst, max, quota, mode

    def as_entry(self) -> dict[str, Any]:
        return asdict(self)

    def as_override(self) -> Override:
        until = dt.datetime.fromtimestamp(self.until, dt.UTC)
        return Override(**self.override, until=until)


class Grants:
    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}
        # Revoked before their end: never taken again from the fleet, until they would have ended.
        self._revoked: dict[str, Grant] = {}
        self._ids = itertools.count(1)
        # Bumped on every change: the plan book recomputes customers' limits when it moves.
        self.version = 0
        self.agents: tuple[tuple[str, float], ...] = ()  # allow-listed user agents (lower case) and until

    def __len__(self) -> int:
        return len(self._grants)

    def new_id(self, origin: str) -> str:
        return f"{origin}-{next(self._ids)}"

    def add(self, grant: Grant) -> bool:
        """Take a grant (an unseen id); whether it was new."""
        if grant.id in self._grants or grant.id in self._revoked:
            return False
        self._grants[grant.id] = grant
        self._changed()
        return True

    def revoke(self, grant_id: str) -> Grant | None:
        """End a grant now; the grant (also when it was revoked already), or None if unknown."""
        grant = self._grants.pop(grant_id, None)
        if grant is None:
            return self._revoked.get(grant_id)
        self._revoked[grant_id] = grant
        self._changed()
        return grant

    def sync_revoked(self, entries: list[dict[str, Any]]) -> None:
        """Apply the fleet's revocations ({"id": ...} entries shared by `Granting.revoke`)."""
        for entry in entries:
            if isinstance(entry.get("id"), str):
                self.revoke(entry["id"])

    def entries(self) -> list[Grant]:
        return list(self._grants.values())

    def load(self, grants: list[Grant]) -> None:
        """Hold exactly these grants (a detection worker, told the gateway's)."""
        self._grants = {grant.id: grant for grant in grants}
        self._changed()

    def in_force(self, now: float, customer: str | None = None) -> list[Grant]:
        self._expire(now)
        return [g for g in self._grants.values() if customer is None or g.customer in (customer, None)]

    def overrides(self, customer: str, now: float) -> list[Override]:
        return [g.as_override() for g in self._grants.values()
                if g.kind == OVERRIDE and g.customer == customer and g.until > now]

    def exempt(self, customer: str | None, user: str | None, what: str, now: float) -> bool:
        """Whether `what` (a detector, or "ladder") leaves this customer or user alone now."""
        if not self._grants or customer is None:
            return False
        for grant in self._grants.values():
            if grant.customer != customer or grant.until <= now:
                continue
            if grant.kind == EXEMPT and grant.exempt in (what, "all"):
                return True
            if grant.kind == ALLOW_USER and user is not None and grant.user == user:
                return True
        return False

    def agent_allowed(self, agent: str, now: float) -> bool:
        lowered = agent.lower()
        return any(item in lowered and now < until for item, until in self.agents)

    def unseen(self, entries: list[dict[str, Any]]) -> list[Grant]:
        """The fleet's grants this gateway does not have yet (to be taken with their effects)."""
        return [grant for grant in shared_entries(Grant, entries)
                if grant.id not in self._grants and grant.id not in self._revoked]

    def _expire(self, now: float) -> None:
        ended = [key for key, grant in self._grants.items() if grant.until <= now]
        for key in ended:
            del self._grants[key]
        for key in [key for key, grant in self._revoked.items() if grant.until <= now]:
            del self._revoked[key]
        if ended:
            self._changed()

    def _changed(self) -> None:
        self.version += 1
        self.agents = tuple((g.agent.lower(), g.until) for g in self._grants.values()
                            if g.kind == ALLOW_AGENT and g.agent)
