"""AuthError -> the answer a client gets: RFC 6750 challenges and problem+json fields."""

from __future__ import annotations

import math

from gateway.auth.errors import (
    AuthError,
    CorporateEmailRequired,
    CsrfFailed,
    InsufficientScope,
    InvalidSessionCookie,
    InvalidToken,
    KeysUnavailable,
    MissingToken,
    TooManyFailures,
)
from gateway.problems import Problem

REALM = "fairgate"


def auth_problem(error: AuthError) -> Problem:
    if isinstance(error, MissingToken):
        # RFC 6750 3.1: no error code when the request carried no credentials at all.
        return Problem(401, "login-required", "Unauthorized", "This route requires a bearer token.",
                           {"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    if isinstance(error, InvalidToken):
        challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{_quoted(error.public)}"'
        return Problem(401, "invalid-token", "Unauthorized", error.public, {"WWW-Authenticate": challenge})
    if isinstance(error, InvalidSessionCookie):
        # No Bearer error code: the client sent no Authorization header; a 401 still names the scheme.
        return Problem(401, "invalid-session-cookie", "Unauthorized",
                       f"The session cookie is not a valid login: {error.public}",
                       {"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    if isinstance(error, CsrfFailed):
        return Problem(403, "csrf-failed", "Forbidden", error.public)
    if isinstance(error, InsufficientScope):
        challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{_quoted(" ".join(error.missing))}"'
        return Problem(403, "insufficient-scope", "Forbidden", error.public, {"WWW-Authenticate": challenge},
                           {"required_scopes": list(error.missing)})
    if isinstance(error, CorporateEmailRequired):
        return Problem(403, "corporate-email-required", "Forbidden", error.public)
    if isinstance(error, TooManyFailures):
        return Problem(429, "too-many-failed-logins", "Too Many Requests", error.public,
                           {"Retry-After": str(max(1, math.ceil(error.retry_after)))})
    if isinstance(error, KeysUnavailable):
        return Problem(503, "login-unavailable", "Service Unavailable", error.public, {"Retry-After": "5"})
    raise TypeError(f"no response for {type(error).__name__}")


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
