"""One evaluation run per seed: a fresh gateway, every actor at once in real time (the gateway
has no injectable clock for a subprocess), then its findings against each actor's ground truth."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from gateway.config import load_config
from gateway.detect.addresses import Hasher
from loadtest.eval import chromium
from loadtest.eval.actors import Actor, Networks, Run, Settings
from loadtest.eval.gateway_run import CONFIG, ENV, HarnessError, findings, running_gateway
from loadtest.eval.personas import roster
from loadtest.eval.scoring import Row, score

log = logging.getLogger("fairgate.eval")
SETTLE = 1.5  # detection analyses its queue every flush_interval (0.1 s); leave it a few rounds


def pick(names: list[str] | None, portal_login: str) -> list[Actor]:
    actors = roster(portal_login)
    if not names:
        return actors
    known = {a.name: a for a in actors}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise HarnessError(f"unknown actors: {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in names]


async def evaluate(seed: int, seconds: float, names: list[str] | None = None, portal_login: str = "header",
                   session_cookie: str = "fairgate_session", config: Path = CONFIG,
                   ports: range | None = None) -> list[Row]:
    actors = pick(names, portal_login)
    wants_chromium = any(a.driver == "chromium" for a in actors)
    if wants_chromium and not chromium.available():
        raise HarnessError("chromium and chromedriver are needed: apt-get install -y chromium chromium-driver")
    _use_demo_env()
    issuers = [i for i in load_config(config).auth.issuers if i.hmac_key is not None]
    if not issuers:
        raise HarnessError(f"{config}: no HMAC issuer to mint the actors' tokens with")
    async with running_gateway(config, ports) as gateway:
        settings = Settings(gateway.url, gateway.upstream_url, issuers[0],
                            Hasher(ENV["FAIRGATE_HASH_SALT"].encode()), seed, seconds, portal_login,
                            session_cookie)
        networks, end = Networks(), time.time() + seconds
        runs = [Run(settings, actor, networks, end) for actor in actors]
        outcomes = await asyncio.gather(*(run.actor.behave(run.actor, run) for run in runs), return_exceptions=True)
        for actor, outcome in zip(actors, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise HarnessError(f"actor {actor.name} failed: {outcome!r}") from outcome
        await asyncio.sleep(SETTLE)
        found = await findings(gateway)
    return [score(seed, actor, found) for actor in actors]


def _use_demo_env() -> None:
    """The gateway subprocess gets these values; the config this process loads must match."""
    os.environ.update(ENV)
