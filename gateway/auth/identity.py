"""Who is calling, as established by a verified login. Everything after authentication reads this."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    customer: str
    user: str
    session: str | None
    email: str | None
    plan: str | None
    issuer: str
    token_id: str | None
    scopes: frozenset[str]
    issued_at: float
    expires_at: float
    # Licensed quantities the token claims, (unit, quantity) sorted by unit: ports, seats, ...
    licenses: tuple[tuple[str, int], ...] = ()
