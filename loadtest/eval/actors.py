"""An actor of the evaluation: who it is, its ground truth, and what it did (logins, addresses,
requests), so the report can match the gateway's findings to it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.dev_tokens import mint_token
from gateway.config.auth import Issuer
from gateway.detect.addresses import Hasher, network_of
from loadtest.eval.traffic import Log

SHARING, SCRAPING, SEATS = "sharing", "scraping", "seats"
DETECTORS = (SHARING, SCRAPING, SEATS)
TOKEN_TTL = 86400


@dataclass(frozen=True)
class Settings:
    """What every actor of one run shares."""

    base_url: str
    upstream_url: str
    issuer: Issuer
    hasher: Hasher
    seed: int
    seconds: float
    portal_login: str  # header: Authorization on portal pages (all today's gateway reads) | cookie
    session_cookie: str  # the cookie a cookie login sends


class Networks:
    """Hands out /24s from 127.20.0.0 to 127.29.255.0: each persona, device or network its own."""

    def __init__(self) -> None:
        self._next = 0

    def take(self) -> str:
        n = self._next
        self._next += 1
        if n >= 10 * 256:
            raise RuntimeError("out of 127.20-29.x.0/24 networks")
        return f"127.{20 + n // 256}.{n % 256}"


@dataclass
class Actor:
    name: str
    abusive: bool
    catch: frozenset[str]  # detectors that should catch it (empty for compliant actors)
    driver: str  # chromium | http
    what: str
    behave: Callable[[Actor, Run], Awaitable[None]]
    portal_scraper: bool = False  # acceptance: challenged or blocked within 20 portal pages
    shared: bool = False  # acceptance: a sharing finding within 60 s of the second person's first request
    login: str = "header"  # how its portal requests carry the login: header | cookie | anonymous | -
    log: Log = field(default_factory=Log)
    subjects: set[str] = field(default_factory=set)  # as findings name them
    second_person_at: float | None = None
    started_at: float | None = None

    def customer(self, seed: int) -> str:
        return f"{self.name}-{seed}"


class Run:
    """One actor's view of the run: its random schedule, its clock, logins and addresses."""

    def __init__(self, settings: Settings, actor: Actor, networks: Networks, end: float) -> None:
        self.settings, self.actor, self._networks, self.end = settings, actor, networks, end
        self.rng = random.Random(f"{settings.seed}:{actor.name}")
        self.customer = actor.customer(settings.seed)

    def child(self, label: str) -> Run:
        """The same actor's run with a random stream of its own, for one of its several clients,
        so clients running at once do not interleave draws (and schedules stay fixed per seed)."""
        made = Run(self.settings, self.actor, self._networks, self.end)
        made.rng = random.Random(f"{self.settings.seed}:{self.actor.name}:{label}")
        return made

    @property
    def running(self) -> bool:
        return time.time() < self.end

    def network(self) -> str:
        return self._networks.take()

    def address(self, network: str, host: int = 1) -> str:
        # Anonymous clients are named by network and a fingerprint of their headers, hashed
        # together; their findings say the network (hashed alone) too: the actor owns its networks.
        self.actor.subjects.add("network:" + self.settings.hasher.hash(network_of(f"{network}.{host}")))
        return f"{network}.{host}"

    def token(self, user: str, session: str, customer: str | None = None, **claims: Any) -> str:
        customer = customer or self.customer
        self.actor.subjects.update({f"user:{customer}/{user}", f"customer:{customer}"})
        return mint_token(self.settings.issuer, customer=customer, user=user, session=session, ttl=TOKEN_TTL,
                          **claims)

    def user(self, person: str) -> str:
        return f"{person}@{self.customer}.example"

    async def think(self, low: float, high: float) -> None:
        """A pause drawn from this actor's schedule, cut short at the end of the run."""
        await asyncio.sleep(max(0.0, min(self.rng.uniform(low, high), self.end - time.time())))

    def second_person(self) -> None:
        """The moment a second person (or network) starts using a shared login."""
        if self.actor.second_person_at is None:
            self.actor.second_person_at = time.time()
