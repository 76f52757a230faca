"""Verification keys of an issuer: a static secret or key file, or a JWKS URL kept fresh."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import aiohttp
import jwt

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.auth import Issuer
from gateway.config.key_documents import jwks_keys

log = logging.getLogger("fairgate.auth.keys")

_MAX_JWKS_BYTES = 1024 * 1024


class KeySource(Protocol):
    def key_for(self, kid: str | None) -> Any | None: ...

    def not_ready_reason(self) -> str | None: ...

    async def refresh_for_unknown_kid(self) -> None: ...


class StaticKeys:
    """An HMAC secret, a PEM public key, or a JWKS document from disk: loaded once per config."""

    def __init__(self, by_kid: dict[str | None, Any]) -> None:
        self._by_kid = by_kid

    @classmethod
    def for_issuer(cls, issuer: Issuer) -> StaticKeys:
        return cls(issuer.static_keys)

    def key_for(self, kid: str | None) -> Any | None:
        key = self._by_kid.get(kid)
        if key is None and len(self._by_kid) == 1:
            # A single key answers for any kid (HMAC and PEM keys have none).
            key = next(iter(self._by_kid.values()))
        return key

    def not_ready_reason(self) -> str | None:
        return None

    async def refresh_for_unknown_kid(self) -> None:
        return None


class JwksFetcher:
    """Keys from a JWKS URL: fetched in the background, refetched every `ttl`, on an unknown
    `kid` at most once per `cooldown`, and served stale for `stale_for` when fetches fail."""

    def __init__(
        self, url: str, *, ttl: float, cooldown: float, stale_for: float, timeout: float, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.url = url
        self._ttl = ttl
        self._cooldown = cooldown
        self._stale_for = stale_for
        self._timeout = timeout
        self._clock = clock
        self._keys: dict[str | None, Any] = {}
        self._fetched_at: float | None = None
        self._last_attempt = float("-inf")
        self._inflight: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    @classmethod
    def for_issuer(cls, issuer: Issuer, clock: Clock = SYSTEM_CLOCK) -> JwksFetcher:
        return cls(
            issuer.jwks_url or "", ttl=issuer.jwks_cache_ttl, cooldown=issuer.jwks_refresh_cooldown,
            stale_for=issuer.jwks_stale_for, timeout=issuer.jwks_timeout, clock=clock,
        )

    def settings_key(self) -> tuple[str, float, float, float, float]:
        return (self.url, self._ttl, self._cooldown, self._stale_for, self._timeout)

    def start(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        for task in (self._refresher, self._inflight):
            if task is not None:
                task.cancel()
        self._refresher = self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _fresh_enough(self) -> bool:
        if self._fetched_at is None:
            return False
        return self._clock.monotonic() - self._fetched_at <= self._ttl + self._stale_for

    def key_for(self, kid: str | None) -> Any | None:
        if not self._fresh_enough():
            return None
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        return key

    def not_ready_reason(self) -> str | None:
        if self._fetched_at is None:
            return f"keys from {self.url} not loaded yet"
        if not self._fresh_enough():
            return f"keys from {self.url} are stale"
        return None

    async def refresh_for_unknown_kid(self) -> None:
        """Refetch now unless one was attempted within the cooldown; concurrent callers share it."""
        if self._inflight is None and self._clock.monotonic() - self._last_attempt < self._cooldown:
            return
        await self.refresh()

    async def refresh(self) -> None:
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        task = self._inflight
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._inflight is task:
                self._inflight = None

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            # Retry sooner while there are no keys; otherwise follow the TTL.
            await asyncio.sleep(self._ttl if self._fetched_at is not None else min(self._cooldown, 5.0))

    async def _fetch(self) -> None:
        self._last_attempt = self._clock.monotonic()
        self.fetches += 1
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        try:
            async with self._session.get(self.url, headers={"Accept": "application/json"}) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                body = await response.content.read(_MAX_JWKS_BYTES + 1)
                if len(body) > _MAX_JWKS_BYTES:
                    raise ValueError(f"document larger than {_MAX_JWKS_BYTES} bytes")
            keys = jwks_keys(body.decode())
        except (TimeoutError, aiohttp.ClientError, ValueError, UnicodeDecodeError, jwt.PyJWKError) as exc:
            log.warning("JWKS fetch failed; keeping the last key set", extra={"url": self.url, "error": str(exc)})
            return
        self._keys = keys
        self._fetched_at = self._clock.monotonic()
        log.info("JWKS loaded", extra={"url": self.url, "kids": [k for k in keys if k]})
