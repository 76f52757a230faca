"""The authentication stage of the request path: a bearer token in, an Identity (or an
AuthError) out. A token seen before costs a cache lookup."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter

from gateway.auth.bearer import bearer_token
from gateway.auth.corporate_email import FreeMailDomains
from gateway.auth.errors import (
    AuthError,
    CorporateEmailRequired,
    InsufficientScope,
    InvalidSessionCookie,
    InvalidToken,
    MissingToken,
    TooManyFailures,
)
from gateway.auth.failed_logins import FailedLogins
from gateway.auth.identity import Identity
from gateway.auth.revocations import Revocations
from gateway.auth.token_cache import CacheCounts, TokenCache
from gateway.auth.verifier import TokenVerifier
from gateway.clock import Clock
from gateway.config.auth import AuthSettings

log = logging.getLogger("fairgate.auth")


@dataclass(frozen=True, slots=True)
class AuthMetrics:
    results: Counter  # labels: result
    findings: Counter  # labels: detector, action


class Authenticator:
    def __init__(
        self,
        settings: AuthSettings,
        verifier: TokenVerifier,
        revocations: Revocations,
        failed_logins: FailedLogins,
        metrics: AuthMetrics,
        clock: Clock,
        cache_counts: CacheCounts | None = None,
    ) -> None:
        self.verifier = verifier
        self._revocations = revocations
        self._failed_logins = failed_logins
        self._metrics = metrics
        self._clock = clock
        self.cache = TokenCache(settings.token_cache_size, cache_counts)
        self._email_action = settings.corporate_email.action
        self._free_mail = FreeMailDomains(settings.corporate_email.free_mail_domains)
        # Leeway per issuer, for the cache's own expiry check.
        self._leeway = {issuer.name: issuer.leeway for issuer in settings.issuers}

    async def authenticate(
        self, authorization: str | None, client_ip: str, *, required: bool, scopes: tuple[str, ...],
        session_token: str | None = None,
    ) -> Identity | None:
        """The caller's Identity; None on an optional route without a token; else AuthError.

        `session_token` (from the session cookie) is checked exactly like a bearer token, and
        only when no bearer token was sent: the Authorization header wins.
        """
        token = bearer_token(authorization)
        if token is None and session_token is not None:
            try:
                return await self._login(session_token, client_ip, scopes)
            except InvalidToken as exc:
                raise InvalidSessionCookie(str(exc), exc.public) from exc
        if token is None:
            if required:
                self._count("missing")
                raise MissingToken("no bearer token")
            return None
        return await self._login(token, client_ip, scopes)

    def known(self, authorization: str | None, session_token: str | None = None) -> Identity | None:
        """The identity of a token this gateway verified lately and that is not revoked; None
        otherwise. Nothing is verified and no failure is counted: for side requests (a browser's
        proof stylesheet) whose page already logged in, so a stale cookie locks no address out."""
        token = bearer_token(authorization) or session_token
        if token is None:
            return None
        identity = self.cache.get(token, self._clock.time())
        if identity is None or self._revocations.is_revoked(identity):
            return None
        return identity

    async def _login(self, token: str, client_ip: str, scopes: tuple[str, ...]) -> Identity:
        retry_after = self._failed_logins.blocked_for(client_ip)
        if retry_after:
            self._count("blocked")
            raise TooManyFailures(retry_after)
        now = self._clock.time()
        identity = self.cache.get(token, now)
        if identity is None:
            identity = await self._verify(token, client_ip, now)
        if self._revocations.is_revoked(identity):
            self._fail(client_ip, "revoked")
            raise InvalidToken(f"token of {identity.user} is revoked", "The token has been revoked.")
        if scopes:
            missing = tuple(scope for scope in scopes if scope not in identity.scopes)
            if missing:
                self._count("insufficient_scope")
                raise InsufficientScope(missing)
        if self._email_action == "reject" and self._free_mail.contains(identity.email):
            self._count("free_mail_rejected")
            raise CorporateEmailRequired(
                f"free-mail address for user {identity.user}", "A corporate email address is required."
            )
        return identity

    async def _verify(self, token: str, client_ip: str, now: float) -> Identity:
        try:
            identity = await self.verifier.verify(token)
        except InvalidToken as exc:
            self._fail(client_ip, "invalid")
            log.info("invalid token", extra={"client_ip": client_ip, "reason": str(exc)})
            raise
        except AuthError:
            self._count("unavailable")
            raise
        self._count("verified")
        if self._email_action != "off" and self._free_mail.contains(identity.email):
            # Once per token (later hits come from the cache), not once per request.
            self._metrics.findings.labels("corporate_email", self._email_action).inc()
            log.warning(
                "login with a free-mail address",
                extra={"customer": identity.customer, "user": identity.user, "action": self._email_action},
            )
        self.cache.put(token, identity, identity.expires_at + self._leeway[identity.issuer])
        return identity

    def _fail(self, client_ip: str, result: str) -> None:
        self._count(result)
        if self._failed_logins.record_failure(client_ip):
            self._count("address_blocked")
            log.warning("too many failed logins; blocking the address", extra={"client_ip": client_ip})

    def _count(self, result: str) -> None:
        self._metrics.results.labels(result).inc()
