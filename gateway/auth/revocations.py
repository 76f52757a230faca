"""Revoked logins: single token ids, and every token of a user issued before a moment.

Each entry lives only as long as a token it could match, so the set never outgrows the
tokens in circulation. Requests check this process's copy (no round trip); with a shared
state store every revocation is also written there, with that same lifetime, and each gateway
of the fleet merges the shared list in every second (`sync_from`).
"""

from __future__ import annotations

import heapq
from typing import Any

from gateway.auth.identity import Identity
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.fleet.topics import Change, Topic


class Revocations:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._token_ids: dict[tuple[str, str], float] = {}  # (issuer, jti) -> drop after
        self._users: dict[tuple[str, str], tuple[float, float]] = {}  # (issuer, user) -> (before, drop after)
        self._expiry: list[tuple[float, str, tuple[str, str]]] = []

    def revoke_token(self, issuer: str, token_id: str, expires_at: float) -> dict[str, Any]:
        """Revoke one token id until `expires_at`; returns the entry to share with the fleet."""
        key = (issuer, token_id)
        if self._token_ids.get(key, 0.0) < expires_at:
            self._token_ids[key] = expires_at
            heapq.heappush(self._expiry, (expires_at, "token", key))
        return {"kind": "token", "issuer": issuer, "id": token_id, "until": expires_at}

    def revoke_user(self, issuer: str, user: str, max_lifetime: float, before: float | None = None) -> dict[str, Any]:
        """Revoke every token of `user` issued up to `before` (default: now)."""
        before = self._clock.time() if before is None else before
        drop_after = before + max_lifetime
        key = (issuer, user)
        if key not in self._users or self._users[key][0] < before:
            self._users[key] = (before, drop_after)
            heapq.heappush(self._expiry, (drop_after, "user", key))
        return {"kind": "user", "issuer": issuer, "id": user, "before": before, "until": drop_after}

    def sync_from(self, entries: list[dict[str, Any]]) -> None:
        """Merge revocations other gateways shared (idempotent)."""
        for entry in entries:
            if entry.get("kind") == "token":
                self.revoke_token(entry["issuer"], entry["id"], float(entry["until"]))
            elif entry.get("kind") == "user":
                before = float(entry["before"])
                self.revoke_user(entry["issuer"], entry["id"], float(entry["until"]) - before, before)

    def is_revoked(self, identity: Identity) -> bool:
        if not self._token_ids and not self._users:
            return False
        self._forget_expired()
        if identity.token_id is not None and (identity.issuer, identity.token_id) in self._token_ids:
            return True
        entry = self._users.get((identity.issuer, identity.user))
        return entry is not None and identity.issued_at <= entry[0]

    def _forget_expired(self) -> None:
        now = self._clock.time()
        while self._expiry and self._expiry[0][0] <= now:
            _, kind, key = heapq.heappop(self._expiry)
            if kind == "token":
                if key in self._token_ids and self._token_ids[key] <= now:
                    del self._token_ids[key]
            elif key in self._users and self._users[key][1] <= now:
                del self._users[key]

    def active(self) -> int:
        """How many revocations can still match a token (expired ones are dropped first)."""
        self._forget_expired()
        return len(self._token_ids) + len(self._users)


def revocation_change(entry: dict[str, Any]) -> Change:
    """A revocation (an entry `revoke_token` or `revoke_user` returned) for the fleet, with its audit event."""
    if entry["kind"] == "token":
        fields = {"action": "revoke_token", "issuer": entry["issuer"], "jti": entry["id"], "until": entry["until"]}
    else:
        fields = {"action": "revoke_user", "issuer": entry["issuer"], "user": entry["id"],
                  "issued_before": entry["before"], "until": entry["until"]}
    return Change(Topic.REVOCATIONS, entry, entry["until"], "admin_action", fields)
