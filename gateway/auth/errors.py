"""Why a login was not accepted.

    AuthError
    ├── MissingToken            no bearer token on a route that requires one   -> 401, bare challenge
    ├── InvalidToken            bad signature, claims, expiry, format, revoked   -> 401 invalid_token
    ├── InvalidSessionCookie    the same, of a token read from the session cookie -> 401
    ├── CsrfFailed              an unsafe request the session cookie alone would authorize -> 403
    ├── InsufficientScope       valid login without the route's scopes          -> 403 insufficient_scope
    ├── CorporateEmailRequired  a free-mail address where the rule rejects      -> 403
    ├── TooManyFailures         this address failed too often recently          -> 429
    └── KeysUnavailable         the issuer's keys have not loaded (yet)         -> 503
"""

from __future__ import annotations


class AuthError(Exception):
    """`public` is safe to show a client; the exception text is for the log."""

    def __init__(self, log_reason: str, public: str = "") -> None:
        super().__init__(log_reason)
        self.public = public or log_reason


class MissingToken(AuthError):
    pass


class InvalidToken(AuthError):
    pass


class InvalidSessionCookie(AuthError):
    pass


class CsrfFailed(AuthError):
    def __init__(self, log_reason: str) -> None:
        super().__init__(log_reason, "A request that changes something needs CSRF proof with the session cookie: "
                                     "the CSRF header matching the CSRF cookie, or a same-origin request.")


class InsufficientScope(AuthError):
    def __init__(self, missing: tuple[str, ...]) -> None:
        super().__init__(f"missing scopes {', '.join(missing)}", "The login lacks a scope this route requires.")
        self.missing = missing


class CorporateEmailRequired(AuthError):
    pass


class TooManyFailures(AuthError):
    def __init__(self, retry_after: float) -> None:
        super().__init__("too many failed logins from this address", "Too many failed logins from this address.")
        self.retry_after = retry_after


class KeysUnavailable(AuthError):
    pass
