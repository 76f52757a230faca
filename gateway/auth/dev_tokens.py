"""Mint development tokens for an HMAC issuer of the config (the demo login service)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt

from gateway.config.auth import Issuer


def mint_token(
    issuer: Issuer,
    *,
    customer: str,
    user: str,
    ttl: float,
    session: str | None = None,
    email: str | None = None,
    plan: str | None = None,
    scopes: tuple[str, ...] = (),
    now: float | None = None,
) -> str:
    if issuer.hmac_key is None:
        raise ValueError(f"issuer {issuer.name!r} verifies with public keys; only HMAC issuers can mint here")
    issued_at = int(time.time() if now is None else now)
    names = issuer.claims
    claims: dict[str, Any] = {
        "iss": issuer.issuer,
        "aud": issuer.audiences[0],
        names.user: user,
        names.customer: customer,
        names.session: session or f"s-{secrets.token_hex(6)}",
        "jti": secrets.token_hex(12),
        "iat": issued_at,
        "exp": issued_at + int(ttl),
    }
    if email or "@" in user:
        claims[names.email] = email or user
    if plan and names.plan:
        claims[names.plan] = plan
    if scopes:
        claims[names.scopes] = " ".join(scopes)
    return jwt.encode(claims, issuer.hmac_key, algorithm=issuer.algorithms[0])
