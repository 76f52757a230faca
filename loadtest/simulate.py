"""Traffic simulator for the detectors: people, an integration, scrapers and a shared login.

    python loadtest/simulate.py [--seconds 300] [--seed 1] [--config config/gateway.yaml]
    python loadtest/simulate.py --live http://127.0.0.1:8080 --admin http://127.0.0.1:8081 --seconds 120

By default it starts the demo upstream and a gateway (from --config) in this process on a
virtual clock: every request is real HTTP over loopback, but think times cost no wall time,
so five simulated minutes take seconds. With --live it drives a running gateway in real time
(the admin token comes from FAIRGATE_ADMIN_TOKEN).

Each client sends from its own loopback address (127.N.0.1, its own /24), so the gateway
sees distinct client networks. It prints, per client type, how many clients were flagged or
refused and after how many of their requests.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import logging
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from browsers import BROWSER_UA, HEADLESS_UA, PAGE_ASSETS, PAGE_HEADERS, asset_headers, linked_stylesheets  # noqa: E402
from gateway.auth.dev_tokens import mint_token  # noqa: E402
from gateway.config import load_config  # noqa: E402
from tests.support.clock import T0, ManualClock  # noqa: E402

TICKETS = 500
INTEGRATION_UA = "acme-sync/2.1 (+https://acme.example/sync)"


@dataclass(frozen=True)
class Step:
    wait: float  # think time before this request
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    browser: bool = False  # a page load in a browser: it fetches the stylesheets the page links


@dataclass
class Client:
    kind: str
    name: str
    customer: str
    user: str
    address: str
    steps: Iterator[Step]
    starts_at: float = 0.0
    session: str | None = None
    token: str = ""
    sent: list[float] = field(default_factory=list)  # (virtual or wall) time of each request
    refused: int = 0  # 401/403 answers from the gateway's detectors
    first_refused: int | None = None

    @property
    def subject(self) -> str:
        return f"user:{self.customer}/{self.user}"


def person(rng: random.Random, agent: str) -> Iterator[Step]:
    """Someone reading tickets in a browser: jittered think time, page assets, the odd dead link."""
    while True:
        roll = rng.random()
        if roll < 0.1:
            path = f"/portal/tickets/{rng.randint(TICKETS + 1, TICKETS * 3)}"  # a stale link: 404
        elif roll < 0.4:
            path = f"/portal/tickets?page={rng.randint(1, 25)}"
        else:
            path = f"/portal/tickets/{rng.randint(1, TICKETS)}"
        yield Step(rng.uniform(3.0, 25.0), path, {**PAGE_HEADERS, "User-Agent": agent}, browser=True)
        for asset, dest, _ in PAGE_ASSETS:
            yield Step(rng.uniform(0.01, 0.1), asset, asset_headers(agent, dest))


def integration(rng: random.Random) -> Iterator[Step]:
    """The customer's own sync job: a steady, compliant rate, its user agent on the allow list."""
    page = 0
    while True:
        page = page % 25 + 1
        yield Step(2.0, f"/api/v1/tickets?page={page}", {"User-Agent": INTEGRATION_UA, "Accept": "application/json"})


def headless_scraper(rng: random.Random) -> Iterator[Step]:
    """A headless browser pulling ticket pages, assets and all."""
    while True:
        yield Step(rng.uniform(0.5, 2.0), f"/portal/tickets/{rng.randint(1, TICKETS)}",
                   {**PAGE_HEADERS, "User-Agent": HEADLESS_UA}, browser=True)
        yield Step(0.02, "/portal/static/app.css", {"User-Agent": HEADLESS_UA, "Accept": "*/*"})


def requests_scraper(rng: random.Random) -> Iterator[Step]:
    """python-requests walking the API's ticket ids one by one."""
    for ticket in range(1, TICKETS + 1):
        yield Step(rng.uniform(0.05, 0.3), f"/api/v1/tickets/{ticket}",
                   {"User-Agent": "python-requests/2.32.3", "Accept": "*/*"})


def polite_scraper(rng: random.Random) -> Iterator[Step]:
    """Browser headers and a browser's user agent, but a fixed 1.5 s cadence paging through the portal."""
    for page in range(1, 10_000):
        yield Step(1.5, f"/portal/tickets?page={page % 25 + 1}", {**PAGE_HEADERS, "User-Agent": BROWSER_UA["chrome"]})


def clients(seed: int, issuer) -> list[Client]:
    rng = random.Random(seed)
    made: list[Client] = []

    def add(kind: str, steps: Iterator[Step], customer: str, user: str, starts_at: float = 0.0) -> Client:
        n = len(made) + 1
        client = Client(kind, f"{kind}-{n}", customer, user, f"127.{100 + n}.0.1", steps, starts_at,
                        session=f"sim-{seed}-{n}")
        made.append(client)
        return client

    for n, agent in enumerate(BROWSER_UA.values()):
        add("person", person(random.Random(rng.random()), agent), f"sim-people-{n}", f"reader-{n}@example.com",
            rng.uniform(0, 5))
    add("integration", integration(random.Random(rng.random())), "sim-integration", "sync-bot@example.com")
    add("headless scraper", headless_scraper(random.Random(rng.random())), "sim-scraper-1", "s1@example.com")
    add("requests scraper", requests_scraper(random.Random(rng.random())), "sim-scraper-2", "s2@example.com")
    add("polite scraper", polite_scraper(random.Random(rng.random())), "sim-scraper-3", "s3@example.com")
    for n, agent in enumerate(BROWSER_UA.values()):  # four people, one login, arriving 30 s apart
        add("shared login", person(random.Random(rng.random()), agent), "sim-shared", "team@example.com",
            10.0 + 30.0 * n)
    for client in made:
        client.token = mint_token(issuer, customer=client.customer, user=client.user, session=client.session,
                                  ttl=86400, now=T0)
    return made


async def drive(base_url: str, admin_url: str, admin_token: str, roster: list[Client], seconds: float,
                clock: ManualClock | None, settle) -> dict:
    """Run every client for `seconds`; virtual time when `clock` is given, else wall time."""
    sessions = {client.name: aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(client.address, 0), limit=1),
        timeout=aiohttp.ClientTimeout(total=30)) for client in roster}
    try:
        if clock is not None:
            await _virtual(base_url, sessions, roster, seconds, clock, settle)
        else:
            await asyncio.gather(*(_live(base_url, sessions[c.name], c, seconds) for c in roster))
        auth = {"Authorization": f"Bearer {admin_token}"}
        async with aiohttp.ClientSession() as admin, admin.get(f"{admin_url}/admin/findings", headers=auth) as response:
            response.raise_for_status()
            findings = (await response.json())["findings"]
    finally:
        for session in sessions.values():
            await session.close()
    return report(roster, findings)


async def _send(base_url: str, session: aiohttp.ClientSession, client: Client, step: Step, now: float) -> float:
    """One request; returns the Retry-After to honour (0 when none)."""
    client.sent.append(now)
    headers = {**step.headers, "Authorization": f"Bearer {client.token}"}
    async with session.get(base_url + step.path, headers=headers) as response:
        body = await response.read()
        if step.browser and response.content_type == "text/html":
            sheet_headers = {**asset_headers(step.headers.get("User-Agent", ""), "style"),
                             "Authorization": headers["Authorization"]}
            for href in linked_stylesheets(body.decode("utf-8", "replace")):
                async with session.get(base_url + href, headers=sheet_headers) as sheet:
                    await sheet.read()
        if response.status in (401, 403) and client.first_refused is None:
            client.first_refused = len(client.sent)
        client.refused += response.status in (401, 403)
        if response.status == 429:
            return float(response.headers.get("Retry-After", "1"))
    return 0.0


async def _virtual(base_url, sessions, roster, seconds, clock: ManualClock, settle) -> None:
    # (when, order, client, step): one request at a time, in time order.
    queue: list = []
    for order, client in enumerate(roster):
        step = next(client.steps)
        heapq.heappush(queue, (T0 + client.starts_at + step.wait, order, step))
    end = T0 + seconds
    while queue:
        when, order, step = heapq.heappop(queue)
        if when > end:
            break
        clock.advance(when - clock.time())
        client = roster[order]
        retry = await _send(base_url, sessions[client.name], client, step, when)
        await settle()  # the detectors see this request before the clock moves on
        if retry:
            heapq.heappush(queue, (when + retry, order, step))  # try the same again, as scrapers do
            continue
        following = next(client.steps, None)
        if following is not None:
            heapq.heappush(queue, (when + following.wait, order, following))


async def _live(base_url: str, session: aiohttp.ClientSession, client: Client, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    await asyncio.sleep(client.starts_at)
    for step in client.steps:
        await asyncio.sleep(step.wait)
        while loop.time() < end:
            retry = await _send(base_url, session, client, step, _wall())
            if not retry:
                break
            await asyncio.sleep(retry)
        if loop.time() >= end:
            return


def _wall() -> float:
    import time

    return time.time()


def report(roster: list[Client], findings: list[dict]) -> dict:
    """Per client: first finding about its login, and how many requests it had sent by then."""
    first: dict[str, dict] = {}
    for finding in findings:
        if finding["subject"] not in first or finding["at"] < first[finding["subject"]]["at"]:
            first[finding["subject"]] = finding
    rows = {}
    for client in roster:
        finding = first.get(client.subject)
        after = None if finding is None else sum(1 for t in client.sent if t <= finding["at"])
        rows[client.name] = {
            "kind": client.kind, "requests": len(client.sent), "flagged_after": after,
            "finding": None if finding is None else {k: finding[k] for k in ("detector", "action", "signals", "at")},
            "refused": client.refused, "first_refused": client.first_refused,
            "arrived": (client.sent[0] if client.sent else None),
        }
    return rows


def table(rows: dict) -> str:
    kinds: dict[str, list[dict]] = {}
    for row in rows.values():
        kinds.setdefault(row["kind"], []).append(row)
    lines = ["| client type | clients | requests | flagged | after requests (max) | refused (401/403) | detectors |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for kind, group in kinds.items():
        flagged = [r for r in group if r["flagged_after"] is not None]
        after = max((r["flagged_after"] for r in flagged), default=None)
        detectors = sorted({s for r in flagged for s in [r["finding"]["detector"]] + r["finding"]["signals"]})
        lines.append(f"| {kind} | {len(group)} | {sum(r['requests'] for r in group)} | {len(flagged)} | "
                     f"{'-' if after is None else after} | {sum(r['refused'] for r in group)} | "
                     f"{', '.join(detectors) or '-'} |")
    shared = [r for r in rows.values() if r["kind"] == "shared login" and r["arrived"] is not None]
    if len(shared) >= 2 and shared[0]["finding"]:
        second = sorted(r["arrived"] for r in shared)[1]
        lines.append(f"\nshared login flagged {shared[0]['finding']['at'] - second:.1f} s after the second person "
                     "arrived")
    return "\n".join(lines)


async def run_virtual(config_path: Path, seconds: float, seed: int) -> dict:
    """Demo upstream + gateway in this process, on a virtual clock."""
    import yaml
    from aiohttp import web

    from gateway.demo.upstream import build_app
    from gateway.server.lifecycle import GatewayServer, ServeOptions

    os.environ.setdefault("FAIRGATE_DEMO_SECRET", "fairgate-demo-secret-for-make-run-only")
    os.environ.setdefault("FAIRGATE_HASH_SALT", "fairgate-simulator-salt")
    upstream = web.AppRunner(build_app(), access_log=None)
    await upstream.setup()
    site = web.TCPSite(upstream, "127.0.0.1", 0)
    await site.start()
    upstream_port = upstream.addresses[0][1]
    raw = yaml.safe_load(config_path.read_text())
    for section, key in (("server", "listen"), ("admin", "listen")):
        raw.setdefault(section, {})[key] = "127.0.0.1:0"
    raw["server"]["access_log"] = False
    raw.setdefault("logging", {})["level"] = "error"
    for upstream_settings in raw["upstreams"].values():
        upstream_settings["url"] = f"http://127.0.0.1:{upstream_port}"
    raw.setdefault("state", {})["url"] = "memory://"
    clock = ManualClock(T0)
    with tempfile.TemporaryDirectory() as tmp:
        if raw.get("enforcement", {}).get("audit", {}).get("path"):
            raw["enforcement"]["audit"]["path"] = str(Path(tmp) / "audit.jsonl")  # a run leaves nothing behind
        path = Path(tmp) / "gateway.yaml"
        path.write_text(yaml.safe_dump(raw))
        config = load_config(path)
        gateway = GatewayServer(config, ServeOptions(str(path), admin_token="simulator", clock=clock))
        fairgate_log = logging.getLogger("fairgate")
        level_before = fairgate_log.level
        fairgate_log.setLevel(logging.ERROR)  # findings are reported below, not logged
        try:
            await gateway.start()
            try:
                host, port = gateway.proxy_address
                admin_host, admin_port = gateway.admin_address
                roster = clients(seed, config.auth.issuers[0])
                return await drive(f"http://{host}:{port}", f"http://{admin_host}:{admin_port}", "simulator",
                                   roster, seconds, clock, gateway.state.detection.drain)
            finally:
                await gateway.drain()
                await upstream.cleanup()
        finally:
            fairgate_log.setLevel(level_before)  # a caller in this process (a test) gets its logging back


async def run_live(base_url: str, admin_url: str, config_path: Path, seconds: float, seed: int) -> dict:
    config = load_config(config_path)
    token = os.environ.get("FAIRGATE_ADMIN_TOKEN", "")
    roster = clients(seed, config.auth.issuers[0])
    for client in roster:  # live tokens must be current
        client.token = mint_token(config.auth.issuers[0], customer=client.customer, user=client.user,
                                  session=client.session, ttl=86400)
    return await drive(base_url, admin_url, token, roster, seconds, None, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "gateway.yaml")
    parser.add_argument("--seconds", type=float, default=300.0, help="simulated (or, with --live, real) seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--live", metavar="GATEWAY_URL", help="drive a running gateway in real time")
    parser.add_argument("--admin", metavar="ADMIN_URL", default="http://127.0.0.1:8081")
    args = parser.parse_args()
    if args.live:
        rows = asyncio.run(run_live(args.live.rstrip("/"), args.admin.rstrip("/"), args.config, args.seconds,
                                    args.seed))
    else:
        rows = asyncio.run(run_virtual(args.config, args.seconds, args.seed))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
