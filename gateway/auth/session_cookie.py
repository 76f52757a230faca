"""Logins as browsers send them: the session cookie of a route that reads it, with the CSRF
defence unsafe methods need.

A browser attaches the cookie to requests other sites make it send, so a cookie alone proves
nothing about who wanted a POST. An unsafe request (any method but GET, HEAD, OPTIONS, and
every WebSocket upgrade) passes with either
- double submit: the configured CSRF header equals the CSRF cookie (a page on another site can
  neither read the cookie nor set the header), compared in constant time; or
- when the vendor sets its session cookie `SameSite=Strict` or `Lax` (so other sites' requests
  do not carry it): `Sec-Fetch-Site: same-origin` (set by the browser, not by pages), or an
  `Origin` listed in `allowed_origins`. A request with neither header fails: it is no browser
  of today, and a program can send the bearer header instead.
oauth2-proxy and Pomerium trust the same two things: SameSite cookies, and a token the page
echoes in a header.
"""

from __future__ import annotations

import hmac

from multidict import CIMultiDictProxy

from gateway.auth.bearer import bearer_token
from gateway.auth.cookies import cookie_value, without_cookie
from gateway.auth.errors import CsrfFailed
from gateway.config.auth import SessionCookie

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SessionCookieReader:
    """How one route reads the login cookie; built at route compile time, only for routes that opt in."""

    __slots__ = ("name", "forwards", "_csrf_header", "_csrf_cookie", "_same_site", "_origins")

    def __init__(self, settings: SessionCookie) -> None:
        self.name = settings.name
        self.forwards = settings.forward
        self._csrf_header = settings.csrf_header
        self._csrf_cookie = settings.csrf_cookie
        self._same_site = settings.same_site != "none"
        self._origins = frozenset(settings.allowed_origins)

    def login_token(self, headers: CIMultiDictProxy[str], method: str) -> str | None:
        """The cookie's token when this request is to be authenticated by it, else None.

        The Authorization header wins: with a bearer token the cookie is not read (nor CSRF
        checked). Raises CsrfFailed for an unsafe request the cookie alone would authorize.
        """
        if bearer_token(headers.get("Authorization")) is not None:
            return None
        cookies: list[str] = headers.getall("Cookie", [])
        token = cookie_value(cookies, self.name)
        if token is None:
            return None
        if (method not in SAFE_METHODS or "Upgrade" in headers) and not (
            self._double_submitted(headers, cookies) or self._same_origin(headers)
        ):
            raise CsrfFailed(f"{method} with the session cookie and no CSRF proof")
        return token

    def upstream_cookie(self, headers: CIMultiDictProxy[str]) -> bytes | None:
        """The Cookie line for upstream without the session cookie (None: no other cookie)."""
        value = without_cookie(headers.getall("Cookie", ()), self.name)
        if value is None:
            return None
        return b"Cookie: %s\r\n" % value.encode("utf-8", "surrogateescape")

    def _double_submitted(self, headers: CIMultiDictProxy[str], cookies: list[str]) -> bool:
        if self._csrf_header is None or self._csrf_cookie is None:
            return False
        sent = headers.get(self._csrf_header)
        expected = cookie_value(cookies, self._csrf_cookie)
        if not sent or expected is None:
            return False
        return hmac.compare_digest(sent.encode("utf-8", "surrogateescape"),
                                   expected.encode("utf-8", "surrogateescape"))

    def _same_origin(self, headers: CIMultiDictProxy[str]) -> bool:
        if not self._same_site:
            return False
        if headers.get("Sec-Fetch-Site") == "same-origin":
            return True
        origin = headers.get("Origin")
        return origin is not None and origin.lower() in self._origins
