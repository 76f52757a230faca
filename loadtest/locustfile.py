"""The populations a vendor has, against fairgate in front of the demo API (`make loadtest`).

    make run                        # in one terminal
    make loadtest                   # in another: headless, reports per class, exit 0 when compliant
    make loadtest USERS=60 DURATION=3m HOST=http://127.0.0.1:8080

Classes, by weight: people reading the portal in browsers (browser headers, the page's assets),
API integrations within their plan, a bursty integration that exceeds its burst and honours
Retry-After, a scraper walking the portal with python-requests, and one login shared by three
people. Each class says which statuses it is meant to get (`expected`); anything else is a
failure (`catch_response`) and fails the run. After the run a person's browser, from this
machine's own address, must still get the portal: blocking the scraper blocks no one else.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import requests
from locust import HttpUser, between, constant_pacing, events, task
from requests.adapters import HTTPAdapter

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from browsers import BROWSER_UA, PAGE_ASSETS, PAGE_HEADERS, asset_headers, linked_stylesheets
from population import ROOT, Login, Population, demo_issuer, is_loopback, run_tag
from verdicts import Tally

TICKETS = 500  # the demo API's ticket ids: 1..500, 25 pages
PAGES = 25
tally = Tally()
_population: Population | None = None
_portal_afterwards: int | None = None


def population() -> Population:
    assert _population is not None, "test_start has not run"
    return _population


@events.test_start.add_listener
def _start(environment, **_kwargs) -> None:
    global _population
    config = Path(os.environ.get("LOADTEST_CONFIG", ROOT / "config" / "gateway.yaml"))
    own_addresses = is_loopback(environment.host or "")
    _population = Population(demo_issuer(config), run_tag(), own_addresses)
    if not own_addresses:
        print("loadtest: the gateway is not on loopback; users share this machine's address", file=sys.stderr)


@events.test_stop.add_listener
def _stop(environment, **_kwargs) -> None:
    global _portal_afterwards
    _portal_afterwards = _person_gets_portal(environment.host or "")
    print("\nPer class (a refusal in `expected` is what that class is meant to meet):")
    print(tally.table())
    print(f"\nafterwards, a browser on this machine's own address gets /portal/tickets: {_portal_afterwards}")


@events.quitting.add_listener
def _verdict(environment, **_kwargs) -> None:
    compliant = tally.requests > 0 and tally.unexpected == 0 and _portal_afterwards == 200
    environment.process_exit_code = 0 if compliant else 1


def _person_gets_portal(host: str) -> int:
    """An anonymous person's browser, as after any load test: the portal must still answer."""
    try:
        return requests.get(f"{host}/portal/tickets", headers={**PAGE_HEADERS, "User-Agent": BROWSER_UA["firefox"]},
                            timeout=10).status_code
    except requests.RequestException:
        return 0


class SourceAddressAdapter(HTTPAdapter):
    """Connections from one local address, so the gateway sees this user's own network."""

    def __init__(self, address: str) -> None:
        self._source = (address, 0)
        super().__init__()

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs) -> None:
        super().init_poolmanager(connections, maxsize, block, source_address=self._source, **pool_kwargs)


class FairgateUser(HttpUser):
    """A user with a login of its own and the statuses its class is meant to get."""

    abstract = True
    label = "user"
    expected = frozenset({200})
    per_customer = 1  # users of this class that share one customer (and its plan)
    login: Login

    def on_start(self) -> None:
        tally.expect(self.label, self.expected)
        self.login = self.new_login()
        if self.login.address is not None:
            self.client.mount("http://", SourceAddressAdapter(self.login.address))

    def new_login(self) -> Login:
        return population().login(self.label, self.per_customer)

    def call(self, method: str, path: str, name: str, headers: dict[str, str], **kwargs) -> requests.Response:
        with self.client.request(method, path, name=f"{self.label} {name}", headers=headers,
                                 catch_response=True, **kwargs) as response:
            if tally.record(self.label, response.status_code):
                response.success()
            else:
                response.failure(f"{self.label} is not meant to get {response.status_code}")
        return response


class Person(FairgateUser):
    """Someone reading tickets on the portal in a browser: pages, their assets (cached after
    the first page, mostly), irregular think time."""

    weight = 6
    label = "person"
    expected = frozenset({200})
    wait_time = between(3, 10)

    def on_start(self) -> None:
        super().on_start()
        self.agent = random.choice(list(BROWSER_UA.values()))
        self.cached = False

    @task
    def read(self) -> None:
        roll = random.random()
        if roll < 0.6:
            path, name = f"/portal/tickets/{random.randint(1, TICKETS)}", "/portal/tickets/[id]"
        elif roll < 0.9:
            path, name = f"/portal/tickets?page={random.randint(1, PAGES)}", "/portal/tickets?page"
        else:
            path = name = "/portal/"
        page = self.call("GET", path, name, {**PAGE_HEADERS, "User-Agent": self.agent, **self.login.authorization})
        for sheet in linked_stylesheets(page.text if "html" in page.headers.get("Content-Type", "") else ""):
            self.call("GET", sheet, "/.well-known/fairgate/proof/*",
                      {**asset_headers(self.agent, "style"), **self.login.authorization})
        if self.cached and random.random() < 0.7:
            return  # assets from the browser's cache
        self.cached = True
        referer = f"{self.host}{path}"
        for asset, dest, accept in PAGE_ASSETS:
            self.call("GET", asset, "/portal/static/*", {**asset_headers(self.agent, dest, accept), "Referer": referer})


class SharedLogin(Person):
    """Three people in three places using one login, each with a browser and session of its
    own: the sharing detector flags it (the config's action is flag), nobody is refused."""

    fixed_count = 3
    weight = 1
    label = "shared-login"

    def new_login(self) -> Login:
        return population().shared(self.label)


def api_headers(login: Login) -> dict[str, str]:
    return {"User-Agent": "lt-sync/1.0 python-requests", "Accept": "application/json", **login.authorization}


class ApiIntegration(FairgateUser):
    """A customer's integration within its plan (standard: 1 request/s): reads, lists, the odd create."""

    weight = 3
    label = "api-integration"
    expected = frozenset({200, 201})
    wait_time = constant_pacing(1.5)

    @task(5)
    def get_ticket(self) -> None:
        self.call("GET", f"/api/v1/tickets/{random.randint(1, TICKETS)}", "/api/v1/tickets/[id]",
                  api_headers(self.login))

    @task(2)
    def list_tickets(self) -> None:
        self.call("GET", f"/api/v1/tickets?page={random.randint(1, PAGES)}", "/api/v1/tickets?page",
                  api_headers(self.login))

    @task(1)
    def create_ticket(self) -> None:
        self.call("POST", "/api/v1/tickets", "/api/v1/tickets", api_headers(self.login),
                  json={"title": "printer on fire", "priority": "high"})


class BurstyIntegration(FairgateUser):
    """A nightly-style sync squeezed into bursts of 15: past the plan's burst of 10 it gets 429
    and waits the Retry-After it is told before going on."""

    weight = 1
    label = "bursty-integration"
    expected = frozenset({200, 429})
    wait_time = constant_pacing(20)
    burst = 15

    @task
    def sync(self) -> None:
        for _ in range(self.burst):
            response = self.call("GET", f"/api/v1/tickets/{random.randint(1, TICKETS)}", "/api/v1/tickets/[id]",
                                 api_headers(self.login))
            if response.status_code == 429:
                time.sleep(float(response.headers.get("Retry-After", "1")))


class Scraper(FairgateUser):
    """python-requests walking the portal's tickets in order, no browser headers, no assets,
    a page a second (within its plan): blocked (403) within a few pages, and it keeps trying."""

    fixed_count = 1
    weight = 1
    label = "scraper"
    expected = frozenset({200, 403})
    wait_time = constant_pacing(1)

    def on_start(self) -> None:
        super().on_start()
        self.next_id = 1

    @task
    def scrape(self) -> None:
        ticket, self.next_id = self.next_id, self.next_id % TICKETS + 1
        self.call("GET", f"/portal/tickets/{ticket}", "/portal/tickets/[id]",
                  {"User-Agent": "python-requests/2.32.3", "Accept": "*/*", **self.login.authorization})
