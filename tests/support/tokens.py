"""What test clients present: tokens of the test issuer (HS256) and the admin API's bearer."""

from __future__ import annotations

import secrets

import jwt

from gateway.clock import Clock

ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

SECRET = "test-secret-that-is-long-enough-for-hs256!"
ISSUER = "https://login.test.invalid"
AUDIENCE = "fairgate-test"


def hs_issuer(**overrides) -> dict:
    """The test issuer's config section."""
    return {"name": "test", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["HS256"],
            "hmac_secret": SECRET, **overrides}


def claims(clock: Clock, **overrides) -> dict:
    """alice of acme, valid for ten minutes from `clock`; an override of None drops that claim."""
    now = int(clock.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "org_id": "acme", "sid": "s1",
            "jti": secrets.token_hex(8), "iat": now, "exp": now + 600, "email": "alice@acme.example"}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def hs_token(clock: Clock, **overrides) -> str:
    return jwt.encode(claims(clock, **overrides), SECRET, algorithm="HS256")


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}
