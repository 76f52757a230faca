"""The challenge action's proof-of-work, stateless and signed.

A challenge is `EXPIRY.NONCE.MAC`, the MAC an HMAC over (subject, expiry, nonce) under a key
derived from the deployment's `detection.hash_salt`: any gateway of the fleet checks it and
none stores it. The browser finds a counter whose SHA-256 over `CHALLENGE.COUNTER` starts with
`difficulty` zero bits and returns both in the pass cookie; the pass spares its subject further
challenges until EXPIRY. Checking one costs an HMAC and one SHA-256, and only happens when a
challenge was about to be answered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

from gateway.clock import Clock
from gateway.config.detection import ChallengeSettings
from gateway.state.bounded import BoundedTable

COOKIE = "fairgate_pass"
# Over https the browser keeps it host-only, Secure and Path=/ (the __Host- prefix's rules).
SECURE_COOKIE = "__Host-fairgate_pass"
_COOKIES = (COOKIE, SECURE_COOKIE)
# Without a configured salt: one random key per process (passes then hold on this gateway only).
_PROCESS_KEY = secrets.token_bytes(32)
_LABEL = b"fairgate challenge v1"
_MAX_PASS = 160  # a well-formed pass is about 90 characters
_MAX_COUNTER = 12  # digits: far more than 2^24 tries
_PASSES_REMEMBERED = 10_000


class Check(StrEnum):
    """What a request's pass cookie is worth."""

    ABSENT = "absent"  # no pass cookie: challenge it
    MALFORMED = "malformed"
    FORGED = "forged"  # not ours, or another subject's
    EXPIRED = "expired"
    UNSOLVED = "unsolved"  # the counter does not meet the difficulty
    PASSED = "passed"  # valid, presented for the first time (in this process)
    VALID = "valid"  # valid, seen before


@dataclass(frozen=True, slots=True)
class Issued:
    challenge: str
    difficulty: int
    max_age: int  # seconds the pass will be valid (the cookie's Max-Age)


def challenge_key(salt: bytes | None) -> bytes:
    """The HMAC key, derived from the deployment secret so that the salt itself never signs anything."""
    return hmac.new(salt if salt is not None else _PROCESS_KEY, _LABEL, hashlib.sha256).digest()


class Challenges:
    def __init__(self, key: bytes, settings: ChallengeSettings, clock: Clock) -> None:
        self._key = key
        self.difficulty = settings.difficulty
        self.pass_ttl = settings.pass_ttl
        self._clock = clock
        # Passes already presented: each counts as "passed" once (the metric), not per request.
        self._seen: BoundedTable[str, int] = BoundedTable(_PASSES_REMEMBERED)

    def __repr__(self) -> str:  # the key stays out of every repr and log line
        return f"Challenges(difficulty={self.difficulty}, pass_ttl={self.pass_ttl})"

    def issue(self, subject: str) -> Issued:
        now = self._clock.time()
        expires = int(now + self.pass_ttl)
        nonce = _b64(secrets.token_bytes(12))
        return Issued(f"{expires}.{nonce}.{self._mac(subject, expires, nonce)}", self.difficulty,
                      max(1, int(expires - now)))

    def check(self, cookie_header: str | None, subject: str) -> Check:
        """The best verdict among the request's pass cookies (a browser may hold both names)."""
        best = Check.ABSENT
        for value in pass_values(cookie_header):
            verdict = self.check_pass(value, subject)
            if verdict in (Check.PASSED, Check.VALID):
                return verdict
            best = verdict
        return best

    def check_pass(self, value: str, subject: str) -> Check:
        if len(value) > _MAX_PASS or not value.isascii():
            return Check.MALFORMED
        parts = value.split(".")
        if len(parts) != 4:
            return Check.MALFORMED
        expiry, nonce, mac, counter = parts
        if not (expiry.isdigit() and len(expiry) <= 12 and counter.isdigit() and len(counter) <= _MAX_COUNTER
                and nonce and mac):
            return Check.MALFORMED
        expires = int(expiry)
        if str(expires) != expiry:
            return Check.MALFORMED  # one spelling per challenge
        if not hmac.compare_digest(self._mac(subject, expires, nonce), mac):
            return Check.FORGED
        if expires <= self._clock.time():
            return Check.EXPIRED
        if not meets(hashlib.sha256(f"{expiry}.{nonce}.{mac}.{counter}".encode()).digest(), self.difficulty):
            return Check.UNSOLVED
        if mac in self._seen:
            return Check.VALID
        self._seen.put(mac, expires)
        return Check.PASSED

    def _mac(self, subject: str, expires: int, nonce: str) -> str:
        message = f"{subject}\n{expires}\n{nonce}".encode("utf-8", "surrogatepass")
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())


def pass_values(cookie_header: str | None) -> list[str]:
    """The values of our pass cookies in a Cookie header (at most two); never raises."""
    if not cookie_header or COOKIE not in cookie_header:
        return []
    found = []
    for part in cookie_header.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip() in _COOKIES:
            found.append(value.strip().strip('"'))
            if len(found) == 2:
                break
    return found


def meets(digest: bytes, bits: int) -> bool:
    """Whether `digest` starts with `bits` zero bits."""
    whole, rest = divmod(bits, 8)
    if any(digest[:whole]):
        return False
    return rest == 0 or digest[whole] >> (8 - rest) == 0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
