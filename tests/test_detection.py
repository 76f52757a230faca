"""Detectors, signal by signal, on an injected clock; the same suite on memory and on Redis."""

from __future__ import annotations

import secrets
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.trail import AuditTrail
from gateway.auth.identity import Identity
from gateway.config import GatewayConfig
from gateway.detect.context import idle_for
from gateway.detect.engine import Detection
from gateway.detect.findings import FindingLog
from gateway.detect.observation import Observation
from gateway.detect.scraping import in_sequence, template_of
from gateway.fleet.grants import Grants
from gateway.fleet.sharing import Fleet
from gateway.state.memory import MemoryStore
from gateway.state.redis_sightings import RedisSightings
from gateway.state.sightings import MemorySightings, Query, Sighting
from gateway.state.tables import Sweeper, Tables
from tests.support.clock import ManualClock

T0 = 1_800_000_000.0
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
BROWSER = {"User-Agent": FIREFOX, "Accept": "text/html,*/*;q=0.8", "Accept-Language": "en",
           "Sec-Fetch-Mode": "navigate"}


@pytest.fixture(params=["memory", "redis"])
async def sightings(request):
    if request.param == "memory":
        yield MemorySightings(), "mem"
        return
    from redis.asyncio import Redis

    client = Redis.from_url(request.getfixturevalue("redis_url"))
    yield RedisSightings(client, timeout=2.0), request.getfixturevalue("key_prefix")
    await client.aclose()


def make_detection(sightings, detection: dict, clock: ManualClock, plans: dict | None = None) -> Detection:
    store, prefix = sightings
    config = GatewayConfig.model_validate({
        "upstreams": {"app": {"url": "http://127.0.0.1:9"}},
        "routes": [{"name": "all", "path_prefix": "/", "upstream": "app"}],
        "plans": plans or {"basic": {"seats": 2}},
        "limits": {"default_plan": "basic"},
        # Each test its own prefix: the Redis keys of one test never meet another's.
        "state": {"key_prefix": f"{prefix}-{secrets.token_hex(3)}"},
        "detection": {"hash_salt": "test-salt-of-16-bytes", **detection},
    })
    engine = Detection(store, FindingLog(None), clock, Fleet(MemoryStore(), AuditTrail(clock), clock), Grants())
    engine.configure(config)
    return engine


def obs(at: float, path: str = "/portal/tickets", *, route_class: str = "portal", user: str | None = "ann",
        customer: str = "acme", session: str | None = "s1", ip: str = "10.0.0.1", headers: dict | None = None,
        status: int = 200, method: str = "GET", body: bytes | None = None, offered: bool = False) -> Observation:
    return Observation(at, route_class, customer if user else None, user, session if user else None, ip, method,
                       path, MappingProxyType(BROWSER if headers is None else headers), status, body,
                       offered_proof=offered)


def refuse(engine: Detection, customer: str, user: str, session: str, route_class: str, issued_at: float = T0):
    login = Identity(customer, user, session, None, None, "test", None, frozenset(), issued_at, issued_at + 3600)
    return engine.refusal(login, "10.0.0.1", route_class)


async def feed(engine: Detection, observations: list[Observation]) -> None:
    for item in observations:  # one batch per request, as under light load
        engine.observe(item)
        await engine.drain()


def signals_of(engine: Detection, detector: str = "scraping") -> set[str]:
    return {signal for finding in engine.findings.recent(detector=detector) for signal in finding.signals}


SCRAPING = {"scraping": {"actions": {"portal": "block", "api": "flag", "public": "flag"}}}


# -- scraping signals ------------------------------------------------------------------------


async def test_headless_browser_is_blocked_on_the_portal(sightings):
    clock = ManualClock()
    engine = make_detection(sightings, SCRAPING, clock)
    headless = {**BROWSER, "User-Agent": "Mozilla/5.0 HeadlessChrome/126.0"}
    await feed(engine, [obs(T0 + n * 7.3 % 5 + n, f"/portal/tickets/{n * 37 % 500}", headers=headless) for n in range(3)])
    (finding,) = engine.findings.recent()
    assert finding.action == "block" and "automation_agent" in finding.signals
    assert finding.until == finding.at + 900
    assert refuse(engine, "acme", "ann", "s1", "portal").status == 403
    assert refuse(engine, "acme", "ann", "s1", "api") is None  # api: flag only


async def test_http_libraries_are_normal_on_the_api_but_not_on_portal_pages(sightings):
    engine = make_detection(sightings, SCRAPING, ManualClock())
    library = {"User-Agent": "python-requests/2.32", "Accept": "*/*"}
    await feed(engine, [obs(T0 + n * 3.7, f"/api/v1/tickets?page={n * 7 % 25}", route_class="api", headers=library)
                        for n in range(30)])
    assert not engine.findings.recent()
    await feed(engine, [obs(T0 + 200 + n * 3.7, f"/portal/tickets/{n * 37 % 500}", headers=library, user="bob")
                        for n in range(3)])
    assert {"automation_agent", "no_browser_signals"} <= signals_of(engine)


async def test_allow_listed_integration_is_never_scored(sightings):
    engine = make_detection(sightings, {"scraping": {"user_agents": {"allow": ["acme-sync/"]}}}, ManualClock())
    agent = {"User-Agent": "acme-sync/2.1 python-requests/2.32"}
    await feed(engine, [obs(T0 + n * 2.0, f"/api/v1/tickets/{n}", route_class="api", headers=agent)
                        for n in range(1, 120)])
    assert not engine.findings.recent()


async def test_regular_cadence(sightings):
    engine = make_detection(sightings, {"scraping": {"weights": {"enumeration": 0, "no_browser_proof": 0}}}, ManualClock())
    await feed(engine, [obs(T0 + n * 1.5, f"/portal/tickets/{n * 37 % 500}") for n in range(30)])
    assert signals_of(engine) == {"regular_cadence"}


async def test_pages_offered_a_proof_and_never_proven(sightings):
    engine = make_detection(sightings, {"scraping": {"weights": {"enumeration": 0}}}, ManualClock())
    await feed(engine, [obs(T0 + n * 4.1 + (n % 3) * 2.3, f"/portal/tickets/{n * 37 % 500}", offered=True)
                        for n in range(12)])
    assert signals_of(engine) == {"no_browser_proof"}


async def test_a_person_reading_the_portal_is_never_found(sightings):
    import random

    rng = random.Random(5)
    person = make_detection(sightings, {"scraping": {}}, ManualClock())
    at = T0
    for _n in range(60):
        at += rng.uniform(3, 25)
        status = 404 if rng.random() < 0.1 else 200
        person.observe(obs(at, f"/portal/tickets/{rng.randint(1, 500)}", ip="10.9.0.1", status=status))
        person.observe(obs(at + 0.05, "/portal/static/app.css", route_class="asset", user=None, ip="10.9.0.1"))
        await person.drain()
    assert not person.findings.recent()


async def test_enumeration_of_ids_is_found_random_ids_are_not(sightings):
    walker = make_detection(sightings, SCRAPING, ManualClock())
    agent = {"User-Agent": "python-requests/2.32"}
    await feed(walker, [obs(T0 + n * 0.37 + (n % 3) * 0.11, f"/api/v1/tickets/{n}", route_class="api", headers=agent)
                        for n in range(1, 12)])
    (finding,) = walker.findings.recent()
    assert finding.signals == ("enumeration",) and finding.action == "flag"

    random_ids = make_detection(sightings, SCRAPING, ManualClock())
    await feed(random_ids, [obs(T0 + n * 0.37 + (n % 3) * 0.11, f"/api/v1/tickets/{n * 37 % 500}", route_class="api",
                                headers=agent) for n in range(1, 40)])
    assert not random_ids.findings.recent()


async def test_crawl_breadth(sightings):
    engine = make_detection(sightings, {"scraping": {"crawl_paths_per_minute": 20, "weights": {"enumeration": 0}}},
                            ManualClock())
    api = {"User-Agent": "sync/1"}
    await feed(engine, [obs(T0 + n * 0.5 + (n % 4) * 0.2, f"/api/v1/customers/c{n * 7919 % 10007}", route_class="api",
                            headers=api) for n in range(40)])
    assert signals_of(engine) == {"crawl_breadth"}


async def test_invalid_destinations_count_only_upstream_answers(sightings):
    engine = make_detection(sightings, {"scraping": {"weights": {"enumeration": 0}}}, ManualClock())
    api = {"User-Agent": "dialer/1"}
    await feed(engine, [obs(T0 + n * 1.3 + (n % 5) * 0.4, f"/api/v1/numbers/x{n}", route_class="api", headers=api,
                            status=404 if n % 4 else 200) for n in range(60)])
    assert signals_of(engine) == {"invalid_destinations"}


async def test_agent_rotation_within_one_session(sightings):
    engine = make_detection(sightings, {"scraping": {"weights": {"enumeration": 0}}}, ManualClock())
    await feed(engine, [obs(T0 + n * 2.1 + (n % 3), f"/api/v1/tickets?q=x{n}", route_class="api",
                            headers={"User-Agent": f"Agent{n % 6}/1.0"}) for n in range(40)])
    assert "agent_rotation" in signals_of(engine)


async def test_looping_on_the_same_request(sightings):
    # 5 requests a second for 40 s: a loop. (It said a loop at 1.1/s, a poller's own rate.)
    engine = make_detection(sightings, {"scraping": {}}, ManualClock())
    await feed(engine, [obs(T0 + n * 0.2, "/api/v1/tickets", route_class="api", method="POST",
                            headers={"User-Agent": "loop/1"}, body=b"same") for n in range(200)])
    assert signals_of(engine) == {"looping"}
    other = make_detection(sightings, {"scraping": {}}, ManualClock())
    await feed(other, [obs(T0 + n * 0.2, "/api/v1/tickets", route_class="api", method="POST",
                           headers={"User-Agent": "loop/1"}, body=bytes([n % 256])) for n in range(200)])
    assert not other.findings.recent()  # different bodies: a busy client, not a loop


async def test_a_conditional_poller_at_one_a_second_is_not_looping(sightings):
    engine = make_detection(sightings, SCRAPING, ManualClock())
    poller = {"User-Agent": "python-requests/2.32", "If-None-Match": '"abc"'}
    await feed(engine, [obs(T0 + n * 1.0, "/api/v1/tickets/7", route_class="api", headers=poller)
                        for n in range(300)])
    assert not engine.findings.recent()
    # Unconditional, once a second or slower: still polling.
    plain = make_detection(sightings, SCRAPING, ManualClock())
    await feed(plain, [obs(T0 + n * 1.05, "/api/v1/tickets/7", route_class="api",
                           headers={"User-Agent": "python-requests/2.32"}) for n in range(300)])
    assert not plain.findings.recent()


async def test_paging_a_list_is_not_enumeration_walking_ids_in_the_path_is(sightings):
    agent = {"User-Agent": "Apache-HttpClient/4.5.14 (Java/17.0.9)"}
    pager = make_detection(sightings, SCRAPING, ManualClock())
    await feed(pager, [obs(T0 + n * 1.0, f"/api/v1/tickets?page={n % 25 + 1}&limit=50", route_class="api",
                           headers=agent) for n in range(100)])
    assert not pager.findings.recent()
    walker = make_detection(sightings, SCRAPING, ManualClock())
    await feed(walker, [obs(T0 + n * 1.0, f"/api/v1/tickets/{n}", route_class="api", headers=agent)
                        for n in range(1, 30)])
    assert signals_of(walker) == {"enumeration"}


async def test_ids_probed_at_random_with_many_misses_are_enumeration(sightings):
    engine = make_detection(sightings, SCRAPING, ManualClock())
    await feed(engine, [obs(T0 + n * 1.3, f"/api/v1/tickets/{n * 7919 % 100_000}", route_class="api",
                            headers={"User-Agent": "prober/1"}, status=404 if n % 3 else 200) for n in range(60)])
    (finding, *_) = engine.findings.recent()
    assert "enumeration" in finding.signals
    assert "missing" in finding.evidence["signals"]["enumeration"]["value"]


async def test_libraries_and_crawlers_count_on_portal_routes_not_api_routes(sightings):
    for agent in ("python-requests/2.32", "Apache-HttpClient/4.5.14 (Java/17.0.9)", "curl/8.5", "Go-http-client/2.0",
                  "okhttp/4.12", "Scrapy/2.11"):
        api = make_detection(sightings, SCRAPING, ManualClock())
        await feed(api, [obs(T0 + n * 2.0, f"/api/v1/tickets/{n * 37 % 500}", route_class="api",
                             headers={"User-Agent": agent}) for n in range(40)])
        assert not api.findings.recent(), agent
        portal = make_detection(sightings, SCRAPING, ManualClock())
        await feed(portal, [obs(T0 + n * 2.0, f"/portal/tickets/{n * 37 % 500}", headers={"User-Agent": agent})
                            for n in range(2)])
        (finding,) = portal.findings.recent()
        assert finding.action == "block" and finding.evidence["signals"]["automation_agent"]["definitive"], agent


async def test_a_headless_browser_still_counts_on_the_api(sightings):
    engine = make_detection(sightings, SCRAPING, ManualClock())
    await feed(engine, [obs(T0 + n * 2.0, f"/api/v1/tickets/{n * 37 % 500}", route_class="api",
                            headers={"User-Agent": "Mozilla/5.0 HeadlessChrome/126.0"}) for n in range(3)])
    (finding,) = engine.findings.recent()
    assert finding.signals == ("automation_agent",) and finding.action == "flag"


async def test_a_single_signal_only_challenges_two_independent_ones_block(sightings):
    # no_browser_proof alone, on a portal set to block: a challenge, however long it goes on.
    clock = ManualClock(T0 + 100)
    alone = make_detection(sightings, {"scraping": {**SCRAPING["scraping"], "weights": {"enumeration": 0}}}, clock)
    await feed(alone, [obs(T0 + n * 5.0 + (n * 7 % 11) * 0.4, f"/portal/tickets/{n * 37 % 500}", offered=True)
                       for n in range(40)])
    assert signals_of(alone) == {"no_browser_proof"}
    assert {finding.action for finding in alone.findings.recent()} == {"challenge"}
    assert refuse(alone, "acme", "ann", "s1", "portal").slug == "automation-challenge"
    assert refuse(alone, "acme", "ann", "s1", "api") is None  # programs are never challenged
    # no_browser_proof and a machine-regular cadence: two independent signals, a block.
    both = make_detection(sightings, {"scraping": {**SCRAPING["scraping"], "weights": {"enumeration": 0}}}, clock)
    await feed(both, [obs(T0 + n * 4.0, f"/portal/tickets/{n * 37 % 500}", offered=True) for n in range(20)])
    last = both.findings.recent()[-1]
    assert last.action == "block" and set(last.signals) == {"no_browser_proof", "regular_cadence"}
    assert refuse(both, "acme", "ann", "s1", "portal").status == 403


async def test_a_finding_lists_each_signal_with_its_value_and_threshold(sightings):
    engine = make_detection(sightings, {"scraping": {**SCRAPING["scraping"], "weights": {"enumeration": 0}}},
                            ManualClock())
    await feed(engine, [obs(T0 + n * 4.0, f"/portal/tickets/{n * 37 % 500}", offered=True) for n in range(20)])
    evidence = engine.findings.recent()[-1].evidence["signals"]
    assert evidence["no_browser_proof"] == {"value": 0.0, "threshold": 0.5, "definitive": False}
    assert evidence["regular_cadence"]["threshold"] == 0.1 and evidence["regular_cadence"]["value"] == 0.0
    assert all({"value", "threshold"} <= set(item) for item in evidence.values())


async def test_scores_decay_and_repeat_offenders_are_blocked_longer(sightings):
    clock = ManualClock()
    engine = make_detection(sightings, SCRAPING, clock)
    headless = {**BROWSER, "User-Agent": "HeadlessChrome/126"}
    await feed(engine, [obs(T0 + n, f"/portal/p{n}", headers=headless) for n in range(3)])
    first = engine.findings.recent()[-1]
    assert first.until - first.at == 900
    # An hour later the score has decayed; it takes a new burst to offend again.
    await feed(engine, [obs(T0 + 3600, "/portal/x", headers=headless)])
    assert len(engine.findings.recent()) == 1
    await feed(engine, [obs(T0 + 3601 + n, f"/portal/y{n}", headers=headless) for n in range(2)])
    second = engine.findings.recent()[-1]
    assert second.until - second.at == 1800


async def test_shadow_mode_records_but_never_refuses(sightings):
    engine = make_detection(sightings, {"scraping": {"mode": "shadow", "actions": {"portal": "block"}}}, ManualClock())
    await feed(engine, [obs(T0 + n, f"/portal/p{n}", headers={"User-Agent": "HeadlessChrome"}) for n in range(3)])
    (finding,) = engine.findings.recent()
    assert finding.shadow and finding.until is None
    assert not engine.sanctions


async def test_anonymous_clients_are_scored_per_address_and_only_hashed(sightings):
    engine = make_detection(sightings, {"scraping": {"actions": {"public": "challenge"}}}, ManualClock())
    await feed(engine, [obs(T0 + n, f"/docs/p{n}", route_class="public", user=None, ip="192.0.2.7",
                            headers={"User-Agent": "Scrapy/2.11"}) for n in range(3)])
    (finding,) = engine.findings.recent()
    assert finding.subject.startswith("address:") and "192.0.2.7" not in str(finding.as_json())
    scrapy = {"User-Agent": "Scrapy/2.11"}
    problem = engine.refusal(None, "192.0.2.7", "public", scrapy)
    assert problem.status == 403 and problem.slug == "automation-challenge"
    assert engine.refusal(None, "192.0.2.99", "public", scrapy).slug == "automation-challenge"  # same /24
    assert engine.refusal(None, "192.0.3.7", "public", scrapy) is None  # another network
    assert engine.refusal(None, "192.0.2.7", "public", BROWSER) is None  # another client on it


# -- shared credentials -------------------------------------------------------------------


SHARING = {"sharing": {"action": "flag"}}


IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Version/17.5 Mobile Safari/604.1"
SAFARI_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1.15"
ANDROID = "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36"


def on(agent: str) -> dict:
    return {**BROWSER, "User-Agent": agent}


async def test_a_laptop_and_a_phone_at_once_on_two_networks_are_one_person(sightings):
    engine = make_detection(sightings, SHARING, ManualClock())
    # Laptop on Wi-Fi, phone on cellular, both in use for ten minutes, a session each.
    await feed(engine, [item for n in range(60) for item in (
        obs(T0 + n * 10, session="laptop", ip="192.0.2.10", headers=on(CHROME)),
        obs(T0 + n * 10 + 3, session="phone", ip="198.51.100.7", headers=on(IPHONE)))])
    assert not engine.findings.recent()


async def test_a_laptop_roaming_wifi_home_hotspot_is_one_person(sightings):
    engine = make_detection(sightings, SHARING, ManualClock())
    # One session: a request every 5 s, 40 s on each network in turn (Wi-Fi -> home -> hotspot).
    await feed(engine, [obs(T0 + n * 5, session="s1", ip=("192.0.2.10", "198.51.100.7", "203.0.113.9")[n // 8])
                        for n in range(24)])
    # A new login at home right after leaving the office is still one computer at a time.
    await feed(engine, [obs(T0 + 400 + n * 5, session="s2", ip="198.51.100.7") for n in range(10)])
    assert not engine.findings.recent()


async def test_an_office_of_many_logins_behind_one_nat_address_is_not_sharing(sightings):
    engine = make_detection(sightings, SHARING, ManualClock())
    agents = (FIREFOX, CHROME, SAFARI_MAC, IPHONE)
    await feed(engine, [obs(T0 + n, user=f"staff{n % 12}", session=f"s{n % 12}", ip="192.0.2.200",
                            headers=on(agents[n % 4])) for n in range(240)])
    assert not engine.findings.recent()


async def test_two_computers_at_once_from_two_networks_are_a_finding_with_evidence(sightings):
    engine = make_detection(sightings, SHARING, ManualClock())
    await feed(engine, [obs(T0, session="s1", ip="10.0.0.1"), obs(T0 + 30, session="s1", ip="10.0.0.1")])
    assert not engine.findings.recent()
    await feed(engine, [obs(T0 + 45, session="s2", ip="10.0.7.1", headers=on(CHROME))])
    (finding,) = engine.findings.recent(detector="sharing")
    assert finding.signals == ("computers",) and finding.evidence["newest_session"] == "s2"
    computers = finding.evidence["computers"]
    assert computers["allowed_networks"] == 1 and computers["within"] == 120.0
    assert [seen["computer"] for seen in computers["seen"]] == ["Chrome/Windows (s2)", "Firefox/Linux (s1)"]
    assert len({seen["network"] for seen in computers["seen"]}) == 2
    assert "10.0.7.0/24" not in str(finding.evidence)  # networks only hashed
    # Idle past windows.concurrent, the first computer is no longer in use: a second later is fine.
    later = make_detection(sightings, SHARING, ManualClock())
    await feed(later, [obs(T0, session="s1"), obs(T0 + 121, session="s2", ip="10.0.7.1")])
    assert not later.findings.recent()


async def test_one_session_from_three_networks_within_a_minute_is_a_copied_token(sightings):
    engine = make_detection(sightings, SHARING, ManualClock())
    networks = ("192.0.2.10", "198.51.100.7", "203.0.113.9")
    # The same token on three machines, each calling every 3 s: programs, so only the session says it.
    await feed(engine, [obs(T0 + n, session="copied", ip=networks[n % 3], headers={"User-Agent": "curl/8.5.0"},
                            route_class="api") for n in range(5)])
    (finding,) = engine.findings.recent(detector="sharing")
    assert finding.signals == ("session_networks",) and finding.at <= T0 + 60
    copied = finding.evidence["session_networks"]
    assert copied["session"] == "copied" and copied["switches"] == 4 and copied["allowed_switches"] == 3
    assert len(copied["networks"]) == 3 and finding.evidence["newest_session"] == "copied"


async def test_more_devices_within_minutes_than_a_person_carries_is_a_finding(sightings):
    engine = make_detection(sightings, SHARING, ManualClock())
    agents = (FIREFOX, CHROME, IPHONE, ANDROID)
    # All day a person's three devices, one at a time, browser updates included: never a fourth.
    await feed(engine, [obs(T0 + n * 700, headers=on(agents[n % 3].replace("126", str(120 + n))))
                        for n in range(20)])
    assert not engine.findings.recent()
    # Four devices within minutes, one network (no computers in two places): too many for one person.
    await feed(engine, [obs(T0 + 20_000 + n * 60, session=f"d{n}", headers=on(agents[n])) for n in range(4)])
    (finding,) = engine.findings.recent(detector="sharing")
    assert finding.signals == ("devices",)
    assert finding.evidence["devices"] == {"within": 600.0, "allowed": 3, "seen": [
        "Chrome/Android", "Chrome/Windows", "Firefox/Linux", "Safari/iOS"]}


async def test_device_id_header_wins_over_user_agent(sightings):
    engine = make_detection(sightings, {"sharing": {"device_header": "X-Device-Id"}}, ManualClock())
    await feed(engine, [obs(T0 + n, headers={**BROWSER, "X-Device-Id": f"dev-{n}"}) for n in range(4)])
    assert signals_of(engine, "sharing") == {"devices"}


async def test_refused_requests_still_count_as_sharing_evidence(sightings):
    clock = ManualClock(T0)
    engine = make_detection(sightings, SHARING, clock)
    first = Identity("acme", "ann", "s1", None, None, "test", None, frozenset(), T0, T0 + 3600)
    second = Identity("acme", "ann", "s2", None, None, "test", None, frozenset(), T0, T0 + 3600)
    engine.observe_refused("portal", first, "10.0.0.1", "GET", "/portal/x", BROWSER, 429)
    await engine.drain()
    clock.advance(20)
    # The second person is rate limited too: only their refused requests show them.
    engine.observe_refused("portal", second, "10.0.7.1", "GET", "/portal/x", on(CHROME), 429)
    await engine.drain()
    (finding,) = engine.findings.recent(detector="sharing")
    assert finding.signals == ("computers",) and finding.evidence["sessions"] == ["s1", "s2"]
    assert not engine.findings.recent(detector="scraping")


async def test_block_newest_refuses_only_the_newest_session(sightings):
    clock = ManualClock()
    engine = make_detection(sightings, {"sharing": {"action": "block_newest", "block_for": "1h"}}, clock)
    await feed(engine, [obs(T0, session="old"), obs(T0 + 5, session="new", ip="10.0.9.1")])
    assert refuse(engine, "acme", "ann", "old", "api") is None
    problem = refuse(engine, "acme", "ann", "new", "api")
    assert problem.status == 403 and problem.headers["Retry-After"]


async def test_reauth_lets_the_newest_session_back_after_a_fresh_login(sightings):
    clock = ManualClock(T0 + 6)
    engine = make_detection(sightings, {"sharing": {"action": "reauth"}}, clock)
    await feed(engine, [obs(T0, session="old"), obs(T0 + 5, session="new", ip="10.0.9.1")])
    stale = refuse(engine, "acme", "ann", "new", "api", issued_at=T0 + 1)
    assert stale.status == 401 and 'error="invalid_token"' in stale.headers["WWW-Authenticate"]
    assert refuse(engine, "acme", "ann", "new", "api", issued_at=T0 + 6) is None


async def test_sharing_findings_have_a_cooldown(sightings):
    engine = make_detection(sightings, SHARING, ManualClock())
    await feed(engine, [obs(T0 + n, session=f"s{n % 2}", ip=f"10.0.{n % 2}.1") for n in range(20)])
    assert len(engine.findings.recent(detector="sharing")) == 1


async def test_plan_allowance_overrides_the_default(sightings):
    plans = {"basic": {"sharing": {"computer_networks": 3}}}
    engine = make_detection(sightings, SHARING, ManualClock(), plans=plans)
    await feed(engine, [obs(T0 + n, session=f"s{n}", ip=f"10.0.{n}.1") for n in range(3)])
    assert not engine.findings.recent()


# -- seats --------------------------------------------------------------------------------


async def test_seats_over_the_plan_are_a_finding_listing_the_users(sightings):
    engine = make_detection(sightings, {"seats": {}}, ManualClock())
    await feed(engine, [obs(T0 + n, user=f"u{n}", session=f"s{n}") for n in range(2)])
    assert not engine.findings.recent()
    await feed(engine, [obs(T0 + 10, user="u2", session="s9")])
    (finding,) = engine.findings.recent(detector="seats")
    assert finding.subject == "customer:acme" and finding.action == "flag"
    assert finding.evidence["users"] == ["u0", "u1", "u2"] and finding.evidence["seats"] == 2


# -- parsing and bounds ------------------------------------------------------------------


def test_templates_and_sequences():
    assert template_of("/api/v1/tickets/17") == ("/api/v1/tickets/#", (17,))
    # Paging parameters are not ids (this said ?page=# was a template with a number).
    assert template_of("/portal/tickets?page=3&sort=asc") == ("/portal/tickets?sort=asc", ())
    assert template_of("/api/v1/tickets?cursor=9&id=4") == ("/api/v1/tickets?id=#", (4,))
    assert template_of("/api/v1/x2y") == ("/api/v1/x2y", ())
    assert in_sequence((16,), (17,)) and in_sequence((3, 9), (3, 8))
    assert not in_sequence((16,), (18,)) and not in_sequence((1, 1), (2, 2))


_PAGING = st.sampled_from(["page", "cursor", "offset", "limit", "since", "Page", "LIMIT"])


@given(st.lists(st.tuples(_PAGING, st.integers(0, 10**9)), max_size=4),
       st.lists(st.tuples(st.sampled_from(["q", "sort", "id"]), st.text("ab12", max_size=4)), max_size=3),
       st.integers(0, 10**6))
def test_paging_parameters_never_reach_the_template(paging, other, record):
    pairs = [f"{name}={value}" for name, value in paging + other]
    target = f"/api/v1/records/{record}" + ("?" + "&".join(pairs) if pairs else "")
    template, numbers = template_of(target)
    assert template.startswith("/api/v1/records/#") and numbers[0] == record
    assert not any(f"{name}=" in template for name, _ in paging)
    # The same list at another page is the same template with the same numbers.
    again = [f"{name}={value + 1}" for name, value in paging] + [f"{name}={value}" for name, value in other]
    assert template_of(f"/api/v1/records/{record}" + ("?" + "&".join(again) if again else "")) == (template, numbers)


async def test_memory_sightings_are_bounded():
    store = MemorySightings(max_keys=1000)
    for n in range(5000):
        await store.exchange([Sighting(f"k{n}", "m", T0 + n, 60.0, 8)], [])
    assert len(store) == 1000
    await store.exchange([Sighting("one", f"m{n}", T0 + n, 3600.0, 8) for n in range(100)], [])
    asked = Query("one", 0.0)
    members = (await store.exchange([], [asked]))[asked]
    assert sorted(members) == sorted(f"m{n}" for n in range(92, 100))  # the 8 most recent


async def test_tracked_identities_are_bounded():
    engine = make_detection((MemorySightings(), "mem"), {"scraping": {}, "max_tracked": 100}, ManualClock())
    await feed(engine, [obs(T0 + n, user=f"u{n}") for n in range(1000)])
    assert engine.tracked == 100


# -- memory: tracks are bounded and swept ------------------------------------------------------


async def test_identities_idle_past_every_window_are_swept_and_an_offender_is_kept_a_day(sightings):
    clock = ManualClock(T0)
    engine = make_detection(sightings, SCRAPING, clock)
    tables = Tables()
    engine.watch(tables)
    sweeper = Sweeper(tables, budget=100, interval=0.1, full_pass=1.0)
    await feed(engine, [obs(T0 + n, f"/portal/tickets/{n}", user=f"u{n}", session=f"s{n}") for n in range(20)])
    library = {"User-Agent": "python-requests/2.32", "Accept": "*/*"}
    await feed(engine, [obs(T0 + 20 + n, f"/portal/tickets/{n}", headers=library, user="bot") for n in range(3)])
    [blocked] = [f for f in engine.findings.recent() if f.action == "block"]
    assert blocked.evidence["offences"] == 1

    def entries() -> dict[str, int]:
        return {name: len(table) for name, table in tables.counts()}

    def sweep() -> None:
        for _ in range(100):  # past a full pass
            sweeper.tick()

    assert entries()["detection_tracks"] == 21  # what each wrote to the sightings lately is in its track
    clock.advance(19 + idle_for(engine.settings) - 0.5)  # only the last browser is still within every window
    sweep()
    assert entries()["detection_tracks"] == 2
    clock.advance(10)
    sweep()
    assert entries()["detection_tracks"] == 1  # the blocked login's offences outlive the windows
    clock.advance(86400)
    sweep()
    assert entries()["detection_tracks"] == 0
    # Forgotten, then back: a fresh track, its signals counted anew.
    await feed(engine, [obs(clock.time(), "/portal/tickets/1", user="u1", session="s1")])
    assert entries()["detection_tracks"] == 1
