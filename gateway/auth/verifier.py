"""Token verification: issuer by `iss`, signature with pinned algorithms, claims checked
against an injectable clock, mapped to an Identity."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from typing import Any

import jwt
from jwt.types import Options

from gateway.auth.errors import InvalidToken, KeysUnavailable
from gateway.auth.identity import Identity
from gateway.auth.keys import KeySource
from gateway.clock import Clock
from gateway.config.auth import Issuer

# JWS compact serialization: three base64url parts. Anything else never reaches PyJWT.
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_MAX_TOKEN_LENGTH = 16 * 1024
# Times past the end of year 9999 are no real instant; larger ones would also overflow a float.
_LATEST_TIME = 253402300799


class IssuerVerifier:
    def __init__(self, settings: Issuer, keys: KeySource, clock: Clock) -> None:
        self.settings = settings
        self.keys = keys
        self._clock = clock
        self._algorithms = list(settings.algorithms)
        self._audiences = list(settings.audiences)
        self._required = sorted({*settings.required_claims, settings.claims.customer})
        # PyJWT checks signature, iss, aud and presence; times are checked here, on our clock.
        self._options: Options = {
            "require": self._required, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
        }

    async def verify(self, token: str, kid: str | None) -> Identity:
        key = self.keys.key_for(kid)
        if key is None:
            await self.keys.refresh_for_unknown_kid()
            key = self.keys.key_for(kid)
        if key is None:
            reason = self.keys.not_ready_reason()
            if reason is not None:
                raise KeysUnavailable(f"issuer {self.settings.name}: {reason}", "The login service is unavailable.")
            raise InvalidToken(f"unknown key id {kid!r} for issuer {self.settings.name}", "The token's key is unknown.")
        try:
            claims = jwt.decode(
                token, key, algorithms=self._algorithms, audience=self._audiences, issuer=self.settings.issuer,
                options=self._options,
            )
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(str(exc), f"The token lacks the '{exc.claim}' claim.") from None
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken(str(exc), "The token is not meant for this service.") from None
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken(str(exc), "The token's issuer is not accepted.") from None
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken(str(exc), "The token's signature does not verify.") from None
        except jwt.InvalidAlgorithmError as exc:
            raise InvalidToken(str(exc), "The token's algorithm is not accepted.") from None
        except (jwt.InvalidTokenError, jwt.PyJWKError, ValueError, TypeError) as exc:
            raise InvalidToken(f"{type(exc).__name__}: {exc}", "The token is malformed or invalid.") from None
        return self._identity(claims)

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        settings = self.settings
        _reject_non_finite(claims)
        now = self._clock.time()
        leeway = settings.leeway
        expires_at = _number(claims, "exp")
        issued_at = _number(claims, "iat")
        not_before = _number(claims, "nbf")
        if expires_at is not None and now > expires_at + leeway:
            raise InvalidToken("token expired", "The token has expired.")
        if not_before is not None and now + leeway < not_before:
            raise InvalidToken("token not yet valid (nbf)", "The token is not valid yet.")
        if issued_at is not None and now + leeway < issued_at:
            raise InvalidToken("token issued in the future (iat)", "The token is not valid yet.")
        if expires_at is None:
            raise InvalidToken("token has no expiry", "The token lacks the 'exp' claim.")
        if expires_at - (issued_at if issued_at is not None else now) > settings.max_lifetime:
            raise InvalidToken("token lifetime exceeds the issuer's maximum", "The token lives longer than allowed.")

        names = settings.claims
        customer = _identifier(claims, names.customer)
        user = _identifier(claims, names.user)
        token_id = _optional_identifier(claims, "jti")
        session = _optional_identifier(claims, names.session) or token_id
        email = claims.get(names.email)
        plan = claims.get(names.plan) if names.plan else None
        return Identity(
            # Interned: the customer id keys a table in limits, usage, detection and enforcement,
            # and one string object serves them all.
            customer=sys.intern(customer),
            user=user,
            session=session,
            email=email if isinstance(email, str) else None,
            plan=plan if isinstance(plan, str) else None,
            issuer=settings.name,
            token_id=token_id,
            scopes=_scopes(claims.get(names.scopes)),
            issued_at=issued_at if issued_at is not None else now,
            expires_at=expires_at,
            licenses=_licenses(claims, names.licenses),
        )


class TokenVerifier:
    """Picks the issuer of a token and verifies it there."""

    def __init__(self, issuers: list[IssuerVerifier]) -> None:
        self._by_iss = {verifier.settings.issuer: verifier for verifier in issuers}

    def issuer_named(self, name: str) -> IssuerVerifier | None:
        return next((v for v in self._by_iss.values() if v.settings.name == name), None)

    async def verify(self, token: str) -> Identity:
        if len(token) > _MAX_TOKEN_LENGTH or not _COMPACT_JWS.match(token):
            raise InvalidToken("not a compact JWS", "The token is malformed.")
        try:
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
        except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
            raise InvalidToken(f"undecodable token: {exc}", "The token is malformed.") from None
        payload, header = unverified["payload"], unverified["header"]
        iss = payload.get("iss") if isinstance(payload, dict) else None
        issuer = self._by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise InvalidToken(f"unknown issuer {iss!r}", "The token's issuer is not accepted.")
        kid = header.get("kid")
        return await issuer.verify(token, kid if isinstance(kid, str) else None)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A time claim: seconds since the epoch, finite, between 1970 and the year 9999."""
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int in Python, and JSON's NaN and Infinity parse as floats: none is a time.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= _LATEST_TIME:
        raise InvalidToken(f"claim {name} is not a time", f"The token's '{name}' claim is not a valid time.")
    return float(value)


def _reject_non_finite(value: Any, depth: int = 0) -> None:
    """NaN or Infinity anywhere in the claims: no comparison with them means anything."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidToken("a claim is NaN or infinite", "The token carries a number that is not finite.")
    elif depth < 32 and isinstance(value, dict):
        for item in value.values():
            _reject_non_finite(item, depth + 1)
    elif depth < 32 and isinstance(value, list):
        for item in value:
            _reject_non_finite(item, depth + 1)


def _identifier(claims: Mapping[str, Any], name: str) -> str:
    """A claim fit to name someone in a header: a short printable string (or an integer)."""
    value = claims.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value and len(value) <= 256 and value.isprintable():
        return value
    raise InvalidToken(f"claim {name} is missing or not an identifier", f"The token's '{name}' claim is invalid.")


def _optional_identifier(claims: Mapping[str, Any], name: str) -> str | None:
    return None if claims.get(name) is None else _identifier(claims, name)


def _scopes(value: object) -> frozenset[str]:
    if isinstance(value, str):
        scopes = frozenset(value.split())
    elif isinstance(value, list):
        scopes = frozenset(item for item in value if isinstance(item, str))
    else:
        return _NO_SCOPES
    return scopes or _NO_SCOPES


# Most tokens carry no scopes; one empty set serves every cached identity (CPython makes a
# new empty frozenset per call, 216 bytes each).
_NO_SCOPES: frozenset[str] = frozenset()


def _licenses(claims: Mapping[str, Any], names: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """Licensed quantities from their claims: a whole number from 1 up (or its digits as a string);
    anything else counts as not sent, like an unusable plan claim."""
    found = []
    for unit, name in sorted(names.items()):
        value = claims.get(name)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10**9:
            found.append((unit, value))
    return tuple(found)
