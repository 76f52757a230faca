"""Proof of a browser: a per-page link token the gateway plants in HTML answers and credits when
the page's own browser fetches it (issue 13, item 1).

    token = base64url(expiry || nonce || HMAC-SHA256(bind_key, subject || expiry || nonce)[:16])

`expiry` is 8 bytes (unix seconds, big-endian); `nonce` is 8 random bytes followed by the first 8
bytes of HMAC-SHA256(nonce_key, expiry || random). The nonce's own tag tells a token this
deployment minted (and its expiry) from a forged one without knowing for whom it was minted, so
a genuine token fetched by someone else counts as `wrong_identity`, not `forged`. Both keys are
derived from `detection.hash_salt`, so every gateway of a deployment verifies every other's.
The fetching request's subject is what the last tag is checked against: the token itself names
nobody. Each token credits once per process (a bounded table of used nonces until they expire).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Callable
from enum import StrEnum

from prometheus_client import Counter

from gateway.clock import Clock
from gateway.state.bounded import BoundedTable

_EXPIRY, _RANDOM, _TAG = 8, 8, 16
_NONCE = 2 * _RANDOM  # the random half and its tag
_RAW = _EXPIRY + _NONCE + _TAG
_TOKEN = re.compile(r"[A-Za-z0-9_-]{54}")  # base64url of the 40 bytes, unpadded
# Nonces credited and not yet expired; beyond this the oldest are forgotten (and could be
# replayed once more): as many distinct page loads proven within one ttl.
_MAX_USED = 200_000


class ProofResult(StrEnum):
    CREDITED = "credited"
    EXPIRED = "expired"
    FORGED = "forged"  # not minted here (or with another salt)
    WRONG_IDENTITY = "wrong_identity"  # minted here for another subject
    REPLAYED = "replayed"  # credited once already


class PageResult(StrEnum):
    """What became of an HTML answer that could carry a link."""

    INJECTED = "injected"
    NO_HEAD = "no_head"  # no `</head>` within detection.proof.head_within
    COMPRESSED = "compressed"  # a Content-Encoding: the body is passed on as it is
    NO_TRANSFORM = "no_transform"  # Cache-Control: no-transform
    DOWNLOAD = "download"  # Content-Disposition: attachment: a file saved, not a page rendered
    STYLES_BLOCKED = "styles_blocked"  # the page's own CSP would not let the browser load the link


class _Hmac:
    """HMAC-SHA256 under one key, from the key's inner and outer SHA-256 states computed once
    (RFC 2104). `hmac.digest` sets up an OpenSSL 3 MAC context on every call: about 6x the cost
    of two state copies, measured (bench/proof_micro.py), and minting is on the request path."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0")  # keys here are 32-byte digests: never longer than a block
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))

    def __call__(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class BrowserProofs:
    """Mints and verifies link tokens; outlives reloads (its used nonces do), takes each config's key and ttl."""

    def __init__(self, clock: Clock, results: Counter, pages: Counter,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self._clock = clock
        self._random = random
        # Children bound once: counting is an add, and every result shows (at 0) from the start.
        self._results = {result: results.labels(result.value) for result in ProofResult}
        self._pages = {result: pages.labels(result.value) for result in PageResult}
        self._used: BoundedTable[bytes, int] = BoundedTable(_MAX_USED)
        self._random_secret = secrets.token_bytes(32)  # while no salt is configured: this process only
        self.ttl = 600.0
        self.configure(None, self.ttl)

    def configure(self, salt: bytes | None, ttl: float) -> None:
        secret = salt if salt is not None else self._random_secret
        self._nonce_mac = _Hmac(hmac.digest(secret, b"fairgate browser proof: nonce", "sha256"))
        self._bind_mac = _Hmac(hmac.digest(secret, b"fairgate browser proof: subject", "sha256"))
        self.ttl = ttl

    def __repr__(self) -> str:  # the keys never reach a log line
        return f"BrowserProofs(ttl={self.ttl!r}, used={len(self._used)})"

    def mint(self, subject: str) -> str:
        """A token that credits `subject` once, until ttl from now."""
        expiry = math.ceil(self._clock.time() + self.ttl).to_bytes(_EXPIRY, "big")
        random = self._random(_RANDOM)
        nonce = random + self._nonce_mac(expiry + random)[:_RANDOM]
        raw = expiry + nonce + self._bind(subject, expiry, nonce)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def verify(self, token: str, subject: str, alternative: str | None = None) -> str | None:
        """The subject `token` credits, once: `subject`, or `alternative` (whom the same client was
        on a page that did not read its login); None for no credit. Never raises, whatever `token` is."""
        result, credited = self.check(token, subject, alternative)
        self._results[result].inc()
        return credited

    def page(self, result: PageResult) -> None:
        self._pages[result].inc()

    def check(self, token: str, subject: str, alternative: str | None = None) -> tuple[ProofResult, str | None]:
        """`verify` without counting: the result, and whom it credited (used up: a second check replays)."""
        raw = _decode(token)
        if raw is None:
            return ProofResult.FORGED, None
        expiry, nonce, tag = raw[:_EXPIRY], raw[_EXPIRY:_EXPIRY + _NONCE], raw[_EXPIRY + _NONCE:]
        random, nonce_tag = nonce[:_RANDOM], nonce[_RANDOM:]
        if not hmac.compare_digest(nonce_tag, self._nonce_mac(expiry + random)[:_RANDOM]):
            return ProofResult.FORGED, None
        now = self._clock.time()
        expires = int.from_bytes(expiry, "big")
        if expires < now:
            return ProofResult.EXPIRED, None
        if hmac.compare_digest(tag, self._bind(subject, expiry, nonce)):
            credited = subject
        elif alternative is not None and hmac.compare_digest(tag, self._bind(alternative, expiry, nonce)):
            credited = alternative
        else:
            return ProofResult.WRONG_IDENTITY, None
        used = self._used
        if nonce in used:
            return ProofResult.REPLAYED, None
        while used:  # credited in about expiry order: the expired ones are at the front
            oldest = next(iter(used))
            if used[oldest] >= now:
                break
            del used[oldest]
        used.put(nonce, expires)
        return ProofResult.CREDITED, credited

    def _bind(self, subject: str, expiry: bytes, nonce: bytes) -> bytes:
        message = subject.encode("utf-8", "surrogateescape") + expiry + nonce
        return self._bind_mac(message)[:_TAG]


def _decode(token: str) -> bytes | None:
    # The pattern first: b64decode would skip characters outside the alphabet instead of refusing them.
    if len(token) != 54 or not _TOKEN.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "==")
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _RAW else None
