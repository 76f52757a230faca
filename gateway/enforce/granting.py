"""Grants with their effects, made here or learnt from the fleet: an allow-list entry also lifts
the sanctions and the standing already decided about whom it allows."""

from __future__ import annotations

from typing import Any

from gateway.detect.findings import FindingLog
from gateway.detect.sanctions import Sanctions, keyed_under
from gateway.enforce.enforcer import Enforcement
from gateway.fleet.grants import ALLOW_USER, Grant, Grants
from gateway.fleet.sharing import Fleet
from gateway.fleet.topics import Change, Topic
from gateway.problems import Problem


class Granting:
    def __init__(self, grants: Grants, fleet: Fleet, sanctions: Sanctions, enforcement: Enforcement,
                 findings: FindingLog) -> None:
        self.grants = grants
        self._fleet = fleet
        self._sanctions = sanctions
        self._enforcement = enforcement
        self._findings = findings
        fleet.receive(Topic.REVOKED_GRANTS, grants.sync_revoked)
        fleet.receive(Topic.GRANTS, self._receive)

    async def grant(self, grant: Grant) -> Problem | None:
        """Apply an exception or allow-list entry made here and publish it; the problem to answer
        if the fleet cannot be reached (this gateway applies it anyway)."""
        lifted = self._take(grant)
        withdraws = ((Topic.SANCTIONS, keyed_under(lifted)),) if lifted else ()
        return await self._fleet.publish(Change(
            Topic.GRANTS, grant.as_entry(), grant.until, "admin_action",
            {"action": grant.kind, "customer": grant.customer, "by": grant.by, "reason": grant.reason,
             "grant": grant.as_entry()}, withdraws))

    async def revoke(self, grant_id: str, by: str, note: str | None) -> tuple[Grant | None, Problem | None]:
        """End a grant now, here and across the fleet (None if unknown; a revoked one again, so a
        retry reaches the fleet); what it already lifted stays lifted."""
        grant = self.grants.revoke(grant_id)
        if grant is None:
            return None, None
        return grant, await self._fleet.publish(Change(
            Topic.REVOKED_GRANTS, {"id": grant_id}, grant.until, "admin_action",
            {"action": "revoke_grant", "customer": grant.customer, "by": by, "note": note, "grant": grant.as_entry()},
            ((Topic.GRANTS, lambda entry: entry.get("id") == grant_id),)))

    def _receive(self, entries: list[dict[str, Any]]) -> None:
        for grant in self.grants.unseen(entries):
            self._take(grant)

    def _take(self, grant: Grant) -> tuple[str, ...]:
        """Apply a grant; the sanction key prefixes it lifted."""
        if not self.grants.add(grant):
            return ()
        lifted = self._sanctions.lift(grant, self._findings.recent())
        if grant.kind == ALLOW_USER and grant.customer is not None and grant.user is not None:
            self._enforcement.clear_user(grant.customer, grant.user, by=grant.by)
        return lifted
