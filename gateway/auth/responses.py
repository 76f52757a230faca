"""AuthError -> the answer a client gets: RFC 6750 challenges and problem+json fields."""

from __future__ import annotations

import math

from dataclasses import dataclass, field

from gateway.auth.errors import (
    AuthError,
    CorporateEmailRequired,
    InsufficientScope,
    InvalidToken,
    KeysUnavailable,
    MissingToken,
    TooManyFailures,
)

REALM = "fairgate"


@dataclass(frozen=True, slots=True)
class AuthProblem:
    """The problem+json answer to an AuthError; the request path adds the request id."""

    status: int
    slug: str
    title: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


def auth_problem(error: AuthError) -> AuthProblem:
    if isinstance(error, MissingToken):
        # RFC 6750 3.1: no error code when the request carried no credentials at all.
        return AuthProblem(401, "login-required", "Unauthorized", "This route requires a bearer token.",
                           {"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    if isinstance(error, InvalidToken):
        challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{_quoted(error.public)}"'
        return AuthProblem(401, "invalid-token", "Unauthorized", error.public, {"WWW-Authenticate": challenge})
    if isinstance(error, InsufficientScope):
        challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{_quoted(" ".join(error.missing))}"'
        return AuthProblem(403, "insufficient-scope", "Forbidden", error.public, {"WWW-Authenticate": challenge},
                           {"required_scopes": list(error.missing)})
    if isinstance(error, CorporateEmailRequired):
        return AuthProblem(403, "corporate-email-required", "Forbidden", error.public)
    if isinstance(error, TooManyFailures):
        return AuthProblem(429, "too-many-failed-logins", "Too Many Requests", error.public,
                           {"Retry-After": str(max(1, math.ceil(error.retry_after)))})
    if isinstance(error, KeysUnavailable):
        return AuthProblem(503, "login-unavailable", "Service Unavailable", error.public, {"Retry-After": "5"})
    raise TypeError(f"no response for {type(error).__name__}")


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
