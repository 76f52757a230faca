"""Who the load test's users are: logins minted for many customers and users, and a client
address of their own for each.

Tokens come from the demo issuer of the gateway's config (`fairgate token` does the same), so
the secret is the one `make run` uses (FAIRGATE_DEMO_SECRET, exported by the Makefile).
Customer names carry a run tag: a second run against the same gateway starts with clean
standings instead of the first run's warnings and blocks.

Against a loopback gateway every user sends from its own address, 127.N.M.1 (its own /24), so
the gateway sees distinct client networks, as it would on the internet: blocking the scraper's
address then blocks no one else, and the people sharing one login really come from several
networks. Elsewhere the users share this machine's address and are told apart by login only.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway.auth.dev_tokens import mint_token
from gateway.config import load_config
from gateway.config.auth import Issuer

ROOT = Path(__file__).resolve().parent.parent
TOKEN_TTL = 86400.0
_FIRST_NETWORK = 64  # 127.64.0.1 onwards: clear of 127.0.0.1, which a person's browser uses afterwards


@dataclass(frozen=True)
class Login:
    customer: str
    user: str
    session: str
    token: str
    address: str | None  # the source address to send from, or None for this machine's own

    @property
    def authorization(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def run_tag() -> str:
    """LOADTEST_RUN, or the second of the start in base 36 (six characters)."""
    tag = os.environ.get("LOADTEST_RUN")
    if tag:
        return tag
    second, digits, alphabet = int(time.time()), "", "0123456789abcdefghijklmnopqrstuvwxyz"
    while second:
        second, digit = divmod(second, 36)
        digits = alphabet[digit] + digits
    return digits


def demo_issuer(config_path: Path) -> Issuer:
    issuers = [issuer for issuer in load_config(config_path).auth.issuers if issuer.hmac_key is not None]
    if not issuers:
        raise SystemExit(f"{config_path}: no HMAC issuer to mint load-test tokens with")
    return issuers[0]


def is_loopback(host_url: str) -> bool:
    host = urlsplit(host_url).hostname or ""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


class Population:
    """Hands out logins: `login(kind, per_customer)` gives each caller its own user, filling a
    customer with `per_customer` users before the next; `shared(kind)` one user for all callers,
    each with a session of its own. Thread-safe, as locust may spawn from greenlets."""

    def __init__(self, issuer: Issuer, tag: str, own_addresses: bool) -> None:
        self._issuer = issuer
        self._tag = tag
        self._own_addresses = own_addresses
        self._lock = threading.Lock()
        self._counts: dict[str, itertools.count] = {}
        self._addresses = itertools.count()

    def login(self, kind: str, per_customer: int = 1) -> Login:
        with self._lock:
            n = next(self._counts.setdefault(kind, itertools.count()))
        customer = f"lt-{self._tag}-{kind}-{n // per_customer:03d}"
        return self._login(customer, f"{kind}-{n % per_customer}@{customer}.example", f"{customer}-s{n}")

    def shared(self, kind: str) -> Login:
        with self._lock:
            n = next(self._counts.setdefault(kind, itertools.count()))
        customer = f"lt-{self._tag}-{kind}"
        return self._login(customer, f"team@{customer}.example", f"{customer}-s{n}")

    def _login(self, customer: str, user: str, session: str) -> Login:
        token = mint_token(self._issuer, customer=customer, user=user, session=session, ttl=TOKEN_TTL)
        return Login(customer, user, session, token, self._next_address())

    def _next_address(self) -> str | None:
        if not self._own_addresses:
            return None
        with self._lock:
            n = next(self._addresses)
        return f"127.{_FIRST_NETWORK + n // 250}.{n % 250}.1"
