"""Revoked logins: single token ids, and every token of a user issued before a moment.

Each entry lives only as long as a token it could match, so the set never outgrows the
tokens in circulation. (Kept in process memory until the shared state store arrives.)
"""

from __future__ import annotations

import heapq

from gateway.auth.identity import Identity
from gateway.clock import SYSTEM_CLOCK, Clock


class Revocations:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._token_ids: dict[tuple[str, str], float] = {}  # (issuer, jti) -> drop after
        self._users: dict[tuple[str, str], tuple[float, float]] = {}  # (issuer, user) -> (before, drop after)
        self._expiry: list[tuple[float, str, tuple[str, str]]] = []

    def revoke_token(self, issuer: str, token_id: str, expires_at: float) -> None:
        key = (issuer, token_id)
        self._token_ids[key] = expires_at
        heapq.heappush(self._expiry, (expires_at, "token", key))

    def revoke_user(self, issuer: str, user: str, max_lifetime: float) -> float:
        """Revoke every token of `user` issued up to now; returns that moment."""
        now = self._clock.time()
        drop_after = now + max_lifetime
        self._users[(issuer, user)] = (now, drop_after)
        heapq.heappush(self._expiry, (drop_after, "user", (issuer, user)))
        return now

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
            drop_after, kind, key = heapq.heappop(self._expiry)
            table = self._token_ids if kind == "token" else self._users
            current = table.get(key)
            if current is not None and (current if kind == "token" else current[1]) <= now:
                del table[key]

    def active(self) -> int:
        """How many revocations can still match a token (expired ones are dropped first)."""
        self._forget_expired()
        return len(self._token_ids) + len(self._users)
