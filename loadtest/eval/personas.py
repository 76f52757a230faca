"""The personas: what each compliant person or integration and each abusive style does, with
its ground truth. Schedules come from the actor's own seeded random stream (`Run.rng`), so a
seed fixes every think time, page and id; statuses can still differ as the gateway answers."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from loadtest.browsers import BROWSER_UA, HEADLESS_UA
from loadtest.eval import chromium
from loadtest.eval.actors import SCRAPING, SEATS, SHARING, Actor, Run
from loadtest.eval.http_browser import HttpBrowser

TICKETS, PAGE_SIZE = 500, 20
IPHONE_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/17.5 Mobile/15E148 Safari/604.1")
JAVA_UA = "Apache-HttpClient/4.5.14 (Java/17.0.9)"
REQUESTS_UA = "python-requests/2.32.3"
WARM = 3600.0  # a warm cache: static assets fresh for an hour, as a typical max-age keeps them


# -- helpers ------------------------------------------------------------------------------

def reading(run: Run) -> Iterator[str]:
    """A person reading the portal: the home page, the list, a few tickets from the page in view,
    the next page now and then, the odd stale link."""
    rng = run.rng
    yield "/portal/"
    page = rng.randint(1, 5)
    yield f"/portal/tickets?page={page}" if page > 1 else "/portal/tickets"
    while True:
        roll = rng.random()
        if roll < 0.6:
            yield f"/portal/tickets/{rng.randint((page - 1) * PAGE_SIZE + 1, page * PAGE_SIZE)}"
        elif roll < 0.85:
            page = page % 25 + 1
            yield f"/portal/tickets?page={page}"
        elif roll < 0.95:
            yield f"/portal/tickets?page={page}"  # back to the list
        else:
            yield f"/portal/tickets/{rng.randint(TICKETS + 1, TICKETS * 2)}"  # a stale bookmark: 404


def browser(run: Run, agent: str, address: str, token: str | None, **options: Any) -> HttpBrowser:
    settings = run.settings
    cookie = settings.portal_login == "cookie"
    made = HttpBrowser(settings.base_url, agent, run.actor.log, options.pop("name", run.actor.name), address,
                       token, portal_header=not cookie, **options)
    if token and cookie:
        made.jar.update_cookies({settings.session_cookie: token}, response_url=URL(settings.base_url + "/"))
    return made


async def read_for(run: Run, person: HttpBrowser, low: float, high: float, until: float | None = None) -> None:
    for path in reading(run):
        if not run.running or (until is not None and time.time() >= until):
            return
        await person.page(path)
        await run.think(low, high)


def api_client(run: Run, agent: str, address: str, token: str, name: str | None = None) -> HttpBrowser:
    """An HTTP client on the API (programs send the bearer token on every call)."""
    return HttpBrowser(run.settings.base_url, agent, run.actor.log, name or run.actor.name, address, token,
                       fetch_assets=False)


async def api_get(client: HttpBrowser, path: str, extra: dict[str, str] | None = None) -> int:
    status, _, _ = await client.request(path, {"User-Agent": client.agent, "Accept": "application/json",
                                               **client.auth(), **(extra or {})})
    return status


# -- compliant ------------------------------------------------------------------------------

async def chromium_reader(actor: Actor, run: Run, *, warm: bool = False, spa: bool = False,
                          agent: str | None = BROWSER_UA["chrome"]) -> None:
    """A person in real Chromium: cookies, cache and scripts are Chromium's own."""
    settings = run.settings
    host, port = urlsplit(settings.base_url).hostname or "127.0.0.1", urlsplit(settings.base_url).port or 80
    relay = chromium.Relay(host, port, run.address(run.network()))
    await relay.start()
    token = run.token(run.user("reader"), f"{actor.name}-1") if (spa or settings.portal_login == "cookie") else None
    browser_ = await asyncio.to_thread(chromium.Chromium, f"http://127.0.0.1:{relay.port}", actor.log, actor.name,
                                       agent)
    try:
        if token and settings.portal_login == "cookie":
            await asyncio.to_thread(browser_.driver.execute_cdp_cmd, "Network.setCookie",
                                    {"name": settings.session_cookie, "value": token,
                                     "url": f"http://127.0.0.1:{relay.port}/"})
        if warm:  # yesterday, from home: the cache fills; today it comes from the office
            for path in ("/portal/", "/portal/tickets"):
                await asyncio.to_thread(browser_.open, path)
            await run.think(3, 6)
            relay.source = run.address(run.network())
        if spa:
            await asyncio.to_thread(browser_.open, "/portal/")
            while run.running:
                await run.think(2, 5)
                rng = run.rng
                path = (f"/api/v1/tickets?page={rng.randint(1, 25)}" if rng.random() < 0.4
                        else f"/api/v1/tickets/{rng.randint(1, TICKETS)}")
                await asyncio.to_thread(browser_.script, _FETCH, path, token)
            return
        for path in reading(run):
            if not run.running:
                return
            await asyncio.to_thread(browser_.open, path)
            await run.think(4, 10)
    finally:
        await asyncio.to_thread(browser_.quit)
        await relay.close()


_FETCH = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {headers: {Authorization: 'Bearer ' + arguments[1], Accept: 'application/json'}})
  .then(r => r.text().then(() => done(r.status))).catch(() => done(0));
"""


async def http_reader(actor: Actor, run: Run, *, agent: str, warm: bool = False) -> None:
    person = browser(run, agent, run.address(run.network()), run.token(run.user("reader"), f"{actor.name}-1"),
                     assume_fresh=WARM if warm else None)
    if warm:
        await person.warm_from(run.settings.upstream_url, ["/portal/", "/portal/tickets"])
    try:
        await read_for(run, person, 4, 12)
    finally:
        await person.close()


async def returning_visitor(actor: Actor, run: Run) -> None:
    """Reads a few pages, leaves for a while, comes back to the same tab (cookies and cache kept)."""
    person = browser(run, BROWSER_UA["edge"], run.address(run.network()), run.token(run.user("visitor"), "v-1"),
                     assume_fresh=WARM)
    try:
        await read_for(run, person, 3, 8, until=time.time() + run.settings.seconds / 3)
        await run.think(run.settings.seconds / 4, run.settings.seconds / 3)
        await read_for(run, person, 3, 8)
    finally:
        await person.close()


async def laptop_and_phone(actor: Actor, run: Run) -> None:
    """One person, a laptop on Wi-Fi and a phone on a cellular network, both in use at once."""
    user = run.user("pat")
    laptop = browser(run, BROWSER_UA["chrome"], run.address(run.network()), run.token(user, "pat-laptop"),
                     name="laptop")
    phone = browser(run, IPHONE_UA, run.address(run.network()), run.token(user, "pat-phone"), name="phone")

    async def phone_later(own: Run) -> None:
        await own.think(5, 15)
        await read_for(own, phone, 6, 15)

    try:
        await asyncio.gather(read_for(run.child("laptop"), laptop, 4, 10), phone_later(run.child("phone")))
    finally:
        await laptop.close()
        await phone.close()


async def roaming_laptop(actor: Actor, run: Run) -> None:
    """One session moving Wi-Fi -> home -> hotspot; the cache and cookie travel with it."""
    person = browser(run, BROWSER_UA["firefox"], run.address(run.network()), run.token(run.user("sam"), "sam-1"),
                     assume_fresh=WARM)
    try:
        start, leg = time.time(), run.settings.seconds / 3
        for n in range(3):
            if n:
                await person.move_to(run.address(run.network()))
            await read_for(run, person, 4, 10, until=start + leg * (n + 1))
    finally:
        await person.close()


async def office(actor: Actor, run: Run) -> None:
    """Eight colleagues, each their own login, behind one NAT address."""
    address = run.address(run.network())
    agents = list(BROWSER_UA.values())
    people = [browser(run, agents[n % len(agents)], address, run.token(run.user(f"staff{n}"), f"office-{n}"),
                      name=f"staff{n}") for n in range(8)]

    async def one(person: HttpBrowser, own: Run) -> None:
        await own.think(0, 8)
        await read_for(own, person, 8, 20)

    try:
        await asyncio.gather(*(one(person, run.child(person.name)) for person in people))
    finally:
        for person in people:
            await person.close()


async def poller(actor: Actor, run: Run) -> None:
    """A status poller: one URL about once a second, conditional on what it has."""
    client = api_client(run, REQUESTS_UA, run.address(run.network()),
                                     run.token(run.user("poller"), "poller-1"))
    tag = None
    try:
        while run.running:
            status, _, body = await client.request("/api/v1/tickets/7", {
                "User-Agent": REQUESTS_UA, "Accept": "application/json", **client.auth(),
                **({"If-None-Match": tag} if tag else {})})
            if status == 200:  # the demo sends no ETag: the client keeps a digest of what it holds
                tag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
            await run.think(1.05, 1.2)
    finally:
        await client.close()


async def paging_sync(actor: Actor, run: Run) -> None:
    """A nightly sync paging ?page=N at about 1 request a second, round and round."""
    client = api_client(run, REQUESTS_UA, run.address(run.network()),
                                     run.token(run.user("sync"), "sync-1"))
    page = 0
    try:
        while run.running:
            page = page % 25 + 1
            await api_get(client, f"/api/v1/tickets?page={page}")
            await run.think(1.05, 1.2)
    finally:
        await client.close()


async def java_client(actor: Actor, run: Run) -> None:
    """An enterprise Java integration on the API: lists and records at a human-ish pace."""
    client = api_client(run, JAVA_UA, run.address(run.network()), run.token(run.user("erp"), "erp-1"))
    try:
        while run.running:
            rng = run.rng
            await api_get(client, f"/api/v1/tickets/{rng.randint(1, TICKETS)}" if rng.random() < 0.7
                          else f"/api/v1/tickets?page={rng.randint(1, 25)}")
            await run.think(1.5, 4)
    finally:
        await client.close()


async def proxied_integration(actor: Actor, run: Run) -> None:
    """An integration behind a corporate proxy chain. config/gateway.yaml trusts no proxies, so the
    gateway sees one address (the proxy's) and ignores the X-Forwarded-For it adds."""
    client = api_client(run, "Go-http-client/1.1", run.address(run.network()),
                                     run.token(run.user("etl"), "etl-1"))
    chain = {"X-Forwarded-For": "10.20.30.40, 172.16.5.9", "Via": "1.1 squid-a, 1.1 bluecoat-b"}
    try:
        while run.running:
            await api_get(client, f"/api/v1/tickets/{run.rng.randint(1, TICKETS)}", chain)
            await run.think(2, 4)
    finally:
        await client.close()


async def readme_walkthrough(actor: Actor, run: Run) -> None:
    """README's 'logging in' walkthrough, as its reader does it: acme's alice with two tokens
    (`fairgate token` gives each its own session), curl from one machine, then a few more calls."""
    address = run.address(run.network())
    alice = "alice@acme.example"
    token = run.token(alice, "readme-1", customer="acme", plan="business")
    reports = run.token(alice, "readme-2", customer="acme", scopes=("reports:read",))
    curl = api_client(run, "curl/8.5.0", address, token)
    curl_reports = api_client(run, "curl/8.5.0", address, reports)
    try:
        await api_get(curl, "/api/v1/tickets/1")
        await run.think(3, 8)
        await api_get(curl, "/api/v1/whoami", {"X-Customer-Id": "globex"})
        await run.think(3, 8)
        await api_get(curl, "/api/v1/reports/usage")  # 403 insufficient_scope, as the README says
        await run.think(3, 8)
        await api_get(curl_reports, "/api/v1/reports/usage")
        while run.running:
            await run.think(5, 12)
            await api_get(run.rng.choice((curl, curl_reports)), f"/api/v1/tickets/{run.rng.randint(1, 20)}")
    finally:
        await curl.close()
        await curl_reports.close()


# -- abusive ----------------------------------------------------------------------------------

async def headless_chromium(actor: Actor, run: Run) -> None:
    """Real headless Chromium with its own HeadlessChrome user agent, walking ticket pages."""
    await _chromium_scraper(actor, run, agent=None)


async def _chromium_scraper(actor: Actor, run: Run, agent: str | None) -> None:
    settings = run.settings
    host, port = urlsplit(settings.base_url).hostname or "127.0.0.1", urlsplit(settings.base_url).port or 80
    relay = chromium.Relay(host, port, run.address(run.network()))
    await relay.start()
    browser_ = await asyncio.to_thread(chromium.Chromium, f"http://127.0.0.1:{relay.port}", actor.log, actor.name,
                                       agent)
    try:
        if settings.portal_login == "cookie":
            token = run.token(run.user("bot"), f"{actor.name}-1")
            await asyncio.to_thread(browser_.driver.execute_cdp_cmd, "Network.setCookie",
                                    {"name": settings.session_cookie, "value": token,
                                     "url": f"http://127.0.0.1:{relay.port}/"})
        while run.running:
            await asyncio.to_thread(browser_.open, f"/portal/tickets/{run.rng.randint(1, TICKETS)}")
            await run.think(1, 2.5)
    finally:
        await asyncio.to_thread(browser_.quit)
        await relay.close()


async def page_scraper(actor: Actor, run: Run, *, agent: str, low: float, high: float, assets: str = "never") -> None:
    """Ticket pages with browser headers; assets never, or once (to look like a browser), or always."""
    person = browser(run, agent, run.address(run.network()), run.token(run.user("bot"), f"{actor.name}-1"),
                     fetch_assets=assets != "never")
    try:
        first = True
        while run.running:
            ticket = run.rng.randint(1, TICKETS)
            await person.page(f"/portal/tickets/{ticket}")
            if first and assets == "once":
                person.fetch_assets = False
            first = False
            await run.think(low, high)
    finally:
        await person.close()


async def rotating_login(actor: Actor, run: Run) -> None:
    """One login, each page from another network (a residential proxy pool)."""
    token = run.token(run.user("bot"), f"{actor.name}-1")
    networks = [run.network() for _ in range(12)]
    person = browser(run, BROWSER_UA["chrome"], run.address(networks[0]), token, fetch_assets=False)
    try:
        n = 0
        while run.running:
            await person.move_to(run.address(networks[n % len(networks)]))
            await person.page(f"/portal/tickets/{run.rng.randint(1, TICKETS)}")
            n += 1
            await run.think(1, 3)
    finally:
        await person.close()


async def rotating_anonymous(actor: Actor, run: Run) -> None:
    """No login; a new address in one /24 every three pages, walking ticket ids in order."""
    network = run.network()
    ticket, host = run.rng.randint(1, 50), 1
    person = browser(run, BROWSER_UA["chrome"], run.address(network, host), None, fetch_assets=False)
    try:
        while run.running:
            for _ in range(3):
                ticket += 1
                await person.page(f"/portal/tickets/{ticket}")
                await run.think(0.8, 2)
                if not run.running:
                    return
            host = host % 250 + 1
            person = await _moved(person, run.address(network, host))
    finally:
        await person.close()


async def _moved(person: HttpBrowser, address: str) -> HttpBrowser:
    """A fresh client (no cookies, no cache) from another address."""
    await person.close()
    return HttpBrowser(person.base_url, person.agent, person.log, person.name, address, None,
                       fetch_assets=person.fetch_assets)


async def enumerator(actor: Actor, run: Run) -> None:
    """python-requests walking the API's ticket ids one by one, under the plan's rate."""
    client = api_client(run, REQUESTS_UA, run.address(run.network()),
                                     run.token(run.user("bot"), f"{actor.name}-1"))
    try:
        ticket = run.rng.randint(1, 50)
        while run.running:
            ticket += 1
            await api_get(client, f"/api/v1/tickets/{ticket}")
            await run.think(1.05, 1.3)
    finally:
        await client.close()


async def tight_loop(actor: Actor, run: Run) -> None:
    """The same request four times a second, ignoring every answer."""
    client = api_client(run, REQUESTS_UA, run.address(run.network()),
                                     run.token(run.user("bot"), f"{actor.name}-1"))
    try:
        while run.running:
            await api_get(client, "/api/v1/tickets/42")
            await run.think(0.2, 0.3)
    finally:
        await client.close()


async def copied_token(actor: Actor, run: Run) -> None:
    """One session token, copied to three machines on three networks, used at the same moment."""
    token = run.token(run.user("ops"), f"{actor.name}-1")
    agents = (BROWSER_UA["chrome"], BROWSER_UA["firefox"], REQUESTS_UA)
    clients = [api_client(run, agent, run.address(run.network()), token, name=f"copy{n}")
               for n, agent in enumerate(agents)]

    async def one(n: int, client: HttpBrowser, own: Run) -> None:
        await own.think(2, 3)
        if n:
            own.second_person()
        while own.running:
            await api_get(client, f"/api/v1/tickets/{own.rng.randint(1, TICKETS)}")
            await own.think(3, 5)

    try:
        await asyncio.gather(*(one(n, client, run.child(client.name)) for n, client in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()


async def passed_around(actor: Actor, run: Run) -> None:
    """One login passed around: four people, each their own device, network and session, at once."""
    user = run.user("team")
    agents = (BROWSER_UA["firefox"], BROWSER_UA["chrome"], BROWSER_UA["safari"], IPHONE_UA)
    people = [browser(run, agent, run.address(run.network()), run.token(user, f"team-{n}"), name=f"person{n}")
              for n, agent in enumerate(agents)]

    async def one(n: int, person: HttpBrowser, own: Run) -> None:
        await asyncio.sleep(min(run.settings.seconds / 3, 1 + 6 * n))
        if n:
            own.second_person()
        await read_for(own, person, 4, 10)

    try:
        await asyncio.gather(*(one(n, person, run.child(person.name)) for n, person in enumerate(people)))
    finally:
        for person in people:
            await person.close()


async def bureau(actor: Actor, run: Run) -> None:
    """A bureau: 30 people under one customer whose plan licenses 25 seats, a few API calls each."""
    clients = [api_client(run, REQUESTS_UA, run.address(run.network()),
                                       run.token(run.user(f"clerk{n}"), f"clerk-{n}"), name=f"clerk{n}")
               for n in range(30)]
    spread = run.settings.seconds * 0.8

    async def one(client: HttpBrowser, own: Run) -> None:
        await own.think(0, spread)
        await api_get(client, f"/api/v1/tickets/{own.rng.randint(1, TICKETS)}")

    try:
        await asyncio.gather(*(one(client, run.child(client.name)) for client in clients))
    finally:
        for client in clients:
            await client.close()


# -- the roster ------------------------------------------------------------------------------

def roster(portal_login: str) -> list[Actor]:
    """Every actor, compliant first; `portal_login` says how browser personas carry their login."""
    chromium_login = "cookie" if portal_login == "cookie" else "anonymous"
    http_login = portal_login

    def act(name: str, abusive: bool, catch: tuple[str, ...], driver: str, what: str,
            behave: Callable[[Actor, Run], Awaitable[None]], **kw: Any) -> Actor:
        return Actor(name, abusive, frozenset(catch), driver, what, behave, **kw)

    return [
        act("chromium-cold", False, (), "chromium", "Chromium, cold cache, reads the portal",
            lambda a, r: chromium_reader(a, r), login=chromium_login),
        act("chromium-returning", False, (), "chromium",
            "Chromium, visits from home, comes back from another network with a warm cache",
            lambda a, r: chromium_reader(a, r, warm=True), login=chromium_login),
        act("chromium-spa", False, (), "chromium", "Chromium SPA: the page's script fetches /api with its token",
            lambda a, r: chromium_reader(a, r, spa=True), login=f"{chromium_login} pages, bearer XHR"),
        act("browser-cold", False, (), "http", "Firefox, cold cache, logged in",
            lambda a, r: http_reader(a, r, agent=BROWSER_UA["firefox"]), login=http_login),
        act("browser-warm", False, (), "http", "Safari, cache warm from an earlier visit (assets fresh 1 h), logged in",
            lambda a, r: http_reader(a, r, agent=BROWSER_UA["safari"], warm=True), login=http_login),
        act("returning-visitor", False, (), "http", "Edge: reads, leaves, comes back (cache fresh 1 h, cookies kept)",
            returning_visitor, login=http_login),
        act("laptop-and-phone", False, (), "http", "one person: laptop on Wi-Fi + phone on cellular, two sessions",
            laptop_and_phone, login=http_login),
        act("roaming-laptop", False, (), "http", "one session: Wi-Fi -> home -> hotspot, warm cache (fresh 1 h)",
            roaming_laptop, login=http_login),
        act("office-nat", False, (), "http", "8 colleagues, own logins, one NAT address", office, login=http_login),
        act("api-poller", False, (), "http", "python-requests, one URL ~1/s, If-None-Match", poller, login="-"),
        act("paging-sync", False, (), "http", "nightly sync, ?page=N at ~1 r/s", paging_sync, login="-"),
        act("java-client", False, (), "http", "Apache-HttpClient integration on the API", java_client, login="-"),
        act("proxied-integration", False, (), "http", "integration behind a proxy chain (X-Forwarded-For untrusted)",
            proxied_integration, login="-"),
        act("readme-alice", False, (), "http", "the README walkthrough: alice, two tokens", readme_walkthrough,
            login="-"),
        act("headless-chromium", True, (SCRAPING,), "chromium", "real headless Chromium (HeadlessChrome UA)",
            headless_chromium, portal_scraper=True, login=chromium_login),
        act("headless-http", True, (SCRAPING,), "http", "HeadlessChrome UA with assets, logged in",
            lambda a, r: page_scraper(a, r, agent=HEADLESS_UA, low=1, high=2.5, assets="always"),
            portal_scraper=True, login=http_login),
        act("copied-headers", True, (SCRAPING,), "http", "library with a browser's headers, no assets",
            lambda a, r: page_scraper(a, r, agent=BROWSER_UA["chrome"], low=1.5, high=3), portal_scraper=True,
            login=http_login),
        act("slow-jitter", True, (SCRAPING,), "http", "slow jittered scraper, random ids, 5-10 s apart",
            lambda a, r: page_scraper(a, r, agent=BROWSER_UA["firefox"], low=5, high=10), portal_scraper=True,
            login=http_login),
        act("asset-imitator", True, (SCRAPING,), "http", "fetches the assets once, then pages only",
            lambda a, r: page_scraper(a, r, agent=BROWSER_UA["chrome"], low=1, high=3, assets="once"),
            portal_scraper=True, login=http_login),
        act("rotating-login", True, (SCRAPING,), "http", "one login, a new network for every page",
            rotating_login, portal_scraper=True, login=http_login),
        act("rotating-anonymous", True, (SCRAPING,), "http", "no login, a new address in one /24 every 3 pages",
            rotating_anonymous, portal_scraper=True, login="anonymous"),
        act("id-enumerator", True, (SCRAPING,), "http", "python-requests walking /api ids in order", enumerator,
            login="-"),
        act("tight-loop", True, (SCRAPING,), "http", "same API request 4 times a second", tight_loop, login="-"),
        act("copied-token", True, (SHARING,), "http", "one session token from three networks at once",
            copied_token, shared=True, login="-"),
        act("passed-around", True, (SHARING,), "http", "one login, four people, devices and networks at once",
            passed_around, shared=True, login=http_login),
        act("bureau", True, (SEATS,), "http", "30 users under one 25-seat customer", bureau, login="-"),
    ]
