"""AuthError -> the answer a client gets: RFC 6750 challenges and problem+json."""

from __future__ import annotations

import math

from aiohttp import web

from gateway.auth.errors import (
    AuthError,
    CorporateEmailRequired,
    InsufficientScope,
    InvalidToken,
    KeysUnavailable,
    MissingToken,
    TooManyFailures,
)
from gateway.proxy.problems import problem_response

REALM = "fairgate"


def auth_problem(error: AuthError, request_id: str) -> web.Response:
    headers = {"X-Request-Id": request_id}
    extra = {"request_id": request_id}
    if isinstance(error, MissingToken):
        # RFC 6750 3.1: no error code when the request carried no credentials at all.
        headers["WWW-Authenticate"] = f'Bearer realm="{REALM}"'
        return problem_response(401, "login-required", "Unauthorized", "This route requires a bearer token.",
                                headers=headers, extra=extra)
    if isinstance(error, InvalidToken):
        headers["WWW-Authenticate"] = (
            f'Bearer realm="{REALM}", error="invalid_token", error_description="{_quoted(error.public)}"'
        )
        return problem_response(401, "invalid-token", "Unauthorized", error.public, headers=headers, extra=extra)
    if isinstance(error, InsufficientScope):
        scopes = " ".join(error.missing)
        headers["WWW-Authenticate"] = (
            f'Bearer realm="{REALM}", error="insufficient_scope", scope="{_quoted(scopes)}"'
        )
        return problem_response(403, "insufficient-scope", "Forbidden", error.public, headers=headers,
                                extra={**extra, "required_scopes": list(error.missing)})
    if isinstance(error, CorporateEmailRequired):
        return problem_response(403, "corporate-email-required", "Forbidden", error.public, headers=headers,
                                extra=extra)
    if isinstance(error, TooManyFailures):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
        return problem_response(429, "too-many-failed-logins", "Too Many Requests", error.public, headers=headers,
                                extra=extra)
    if isinstance(error, KeysUnavailable):
        headers["Retry-After"] = "5"
        return problem_response(503, "login-unavailable", "Service Unavailable", error.public, headers=headers,
                                extra=extra)
    raise TypeError(f"no response for {type(error).__name__}")


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
