"""Mint development tokens for an HMAC issuer of the config (the demo login service)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt

from gateway.config.auth import Issuer, SessionCookie


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


def cookie_lines(settings: SessionCookie, token: str) -> list[str]:
    """Request header lines that log a client in by the session cookie, as a browser would send
    them (`curl -H @file`): the cookie, and with double submit a fresh CSRF cookie and its header."""
    if settings.csrf_header is None or settings.csrf_cookie is None:
        return [f"Cookie: {settings.name}={token}"]
    csrf = secrets.token_urlsafe(16)
    return [f"Cookie: {settings.name}={token}; {settings.csrf_cookie}={csrf}", f"{settings.csrf_header}: {csrf}"]
