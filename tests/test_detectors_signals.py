"""The detectors' newer signals and decisions, each at its boundary on an injected clock: browser
proof, challenge or block, a block following the login, refused requests and looping,
anonymous clients by network, the crowd's enumeration, bulk extraction against a baseline."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.detect.addresses import find_network, network_of
from gateway.detect.engine import Detection
from gateway.detect.observation import subject_of
from gateway.state.sightings import Answers, MemorySightings, Query, Sighting
from tests.support.clock import ManualClock
from tests.test_detection import BROWSER, CHROME, FIREFOX, T0, feed, make_detection, obs, refuse, sightings, signals_of

__all__ = ["sightings"]  # the fixture: memory and Redis, as in test_detection

BLOCKING = {"portal": "block", "api": "flag"}
# One signal at a time: the others off, so each test sees only the one it is about.
QUIET = {"enumeration": 0, "regular_cadence": 0, "no_browser_signals": 0, "crowd_enumeration": 0,
         "bulk_extraction": 0}
ANN = "user:acme/ann"


def scraping(**settings: object) -> dict:
    weights = {**QUIET, **settings.pop("weights", {})}
    return {"scraping": {"actions": BLOCKING, **settings, "weights": weights}}


def page(at: float, n: int, **kw):
    return obs(at, f"/portal/tickets/{n * 37 % 500}", offered=True, **kw)


async def pages_with_proofs(engine: Detection, pages: int, proofs: int, start: float = T0) -> None:
    """`pages` pages offered a proof, the first `proofs` of them proven right after."""
    for n in range(pages):
        await feed(engine, [page(start + n * 5.3 + (n % 3), n)])
        if n < proofs:
            engine.observe_proof(ANN)
            await engine.drain()


# -- no_browser_proof -----------------------------------------------------------------------

@pytest.mark.parametrize(("proofs", "fires"), [(1, True), (2, False)])
async def test_no_browser_proof_fires_below_half_the_pages_proven(sightings, proofs, fires):
    # Four pages past a grace of three: fewer than 4 * 0.5 proofs fire, two do not.
    engine = make_detection(sightings, scraping(weights={"no_browser_proof": 12}), ManualClock())
    await pages_with_proofs(engine, 4, proofs)
    assert bool(engine.findings.recent()) is fires
    if fires:
        (finding,) = engine.findings.recent()
        assert finding.evidence["signals"]["no_browser_proof"] == {"value": 0.25, "threshold": 0.5,
                                                                   "definitive": False}


async def test_the_grace_pages_never_fire(sightings):
    engine = make_detection(sightings, scraping(weights={"no_browser_proof": 12}), ManualClock())
    await pages_with_proofs(engine, 3, 0)
    assert not engine.findings.recent()


async def test_pages_not_offered_a_proof_do_not_count(sightings):
    engine = make_detection(sightings, scraping(weights={"no_browser_proof": 12}), ManualClock())
    await feed(engine, [obs(T0 + n * 5.3, f"/portal/tickets/{n}") for n in range(20)])
    assert not engine.findings.recent()


async def test_the_old_weight_name_is_refused_with_its_new_name(sightings):
    with pytest.raises(ValueError, match="no_assets was replaced by no_browser_proof"):
        make_detection(sightings, {"scraping": {"weights": {"no_assets": 2}}}, ManualClock())


# -- challenge or block -----------------------------------------------------------------------

async def test_one_signal_challenges_pages_and_a_passed_challenge_stops_it(sightings):
    clock = ManualClock(T0 + 60)
    engine = make_detection(sightings, scraping(), clock)
    await pages_with_proofs(engine, 12, 0)
    (finding,) = engine.findings.recent()
    assert finding.action == "challenge" and finding.signals == ("no_browser_proof",)
    assert finding.until == finding.at + 900
    assert refuse(engine, "acme", "ann", "s1", "portal").slug == "automation-challenge"
    assert refuse(engine, "acme", "ann", "s1", "api") is None  # the API is never challenged
    # The challenge passed (a proof while challenged): the signal starts over and stays quiet.
    engine.observe_proof(ANN)
    await engine.drain()
    await feed(engine, [page(T0 + 100 + n * 5.3, n) for n in range(3)])
    before = len(engine.findings.recent())
    await feed(engine, [page(T0 + 120 + n * 5.3, n) for n in range(1)])
    assert len(engine.findings.recent()) == before == 1


async def test_one_signal_on_the_api_only_flags_even_when_the_class_blocks(sightings):
    engine = make_detection(sightings, scraping(actions={"api": "block"}, weights={"looping": 6}), ManualClock())
    await feed(engine, [obs(T0 + n * 0.25, "/api/v1/tickets/7", route_class="api") for n in range(140)])
    (finding,) = engine.findings.recent()
    assert finding.action == "flag" and finding.signals == ("looping",)
    assert not engine.sanctions


async def test_two_independent_signals_block_and_the_block_follows_the_login(sightings):
    clock = ManualClock(T0 + 60)
    engine = make_detection(sightings, scraping(actions={"portal": "block", "api": "block", "public": "flag"},
                                                weights={"regular_cadence": 3}), clock)
    await feed(engine, [page(T0 + n * 4.0, n) for n in range(20)])
    finding = engine.findings.recent()[-1]
    assert finding.action == "block" and set(finding.signals) == {"no_browser_proof", "regular_cadence"}
    assert refuse(engine, "acme", "ann", "s1", "portal").slug == "automation-blocked"
    assert refuse(engine, "acme", "ann", "other-session", "api").slug == "automation-blocked"
    assert refuse(engine, "acme", "ann", "s1", "public") is None  # public only flags


async def test_two_signals_challenge_an_anonymous_network_and_only_a_definitive_one_blocks_it(sightings):
    """An anonymous client is a /24 and a browser's fingerprint, shared by everyone behind a
    carrier NAT with that browser: two signals challenge it (their browsers pass), never block."""
    clock = ManualClock(T0 + 60)
    engine = make_detection(sightings, scraping(weights={"regular_cadence": 3}), clock)
    await feed(engine, [page(T0 + n * 4.0, n, user=None, ip="198.51.100.9") for n in range(20)])
    # The same pages that block a login (the test above) only challenge the network.
    assert {finding.action for finding in engine.findings.recent()} == {"challenge"}
    assert engine.refusal(None, "198.51.100.77", "portal", BROWSER).slug == "automation-challenge"

    headless = {**BROWSER, "User-Agent": "HeadlessChrome/126"}
    await feed(engine, [obs(T0 + 90 + n, f"/portal/p{n}", user=None, ip="198.51.100.9", headers=headless)
                        for n in range(3)])
    assert engine.refusal(None, "198.51.100.9", "portal", headless).slug == "automation-blocked"


async def test_a_flag_class_gets_one_finding_naming_the_block(sightings):
    clock = ManualClock(T0 + 30)
    engine = make_detection(sightings, scraping(), clock)
    headless = {**BROWSER, "User-Agent": "HeadlessChrome/126"}
    await feed(engine, [obs(T0 + n, f"/portal/p{n}", headers=headless) for n in range(3)])
    (block,) = engine.findings.recent()
    assert block.action == "block"
    await feed(engine, [obs(T0 + 10 + n, f"/api/v1/x{n}", route_class="api", headers=BROWSER) for n in range(5)])
    named = [f for f in engine.findings.recent() if f.signals == ("blocked_elsewhere",)]
    assert len(named) == 1  # once per block term, not per request
    assert named[0].action == "flag" and named[0].until == block.until
    assert named[0].evidence["block"]["until"] == block.until


# -- refused requests ---------------------------------------------------------------------------

@pytest.mark.parametrize(("gap", "loops"), [(0.25, True), (0.5, False)])
async def test_refused_requests_count_for_looping(sightings, gap, loops):
    # 4/s is looping (over twice the 1/s poll rate); exactly 2/s is not. Most were refused (429).
    engine = make_detection(sightings, scraping(weights={"looping": 12}), ManualClock())
    observations = [obs(T0 + n * gap, "/api/v1/tickets/42", route_class="api") for n in range(int(40 / gap))]
    for n, item in enumerate(observations):
        if n % 5:
            item.refused, item.status = True, 429
    await feed(engine, observations)
    assert ("looping" in signals_of(engine)) is loops


async def test_refused_requests_never_feed_the_ratios_of_upstream_answers(sightings):
    engine = make_detection(sightings, scraping(weights={"invalid_destinations": 12}), ManualClock())
    refused = [obs(T0 + n * 3.1, f"/api/v1/t/{n}", route_class="api", status=429) for n in range(60)]
    for item in refused:
        item.refused = True
    await feed(engine, refused)
    assert not engine.findings.recent()


# -- anonymous clients ----------------------------------------------------------------------------

def test_an_anonymous_subject_is_its_network_and_header_fingerprint():
    one = subject_of(None, None, "198.51.100.7", BROWSER)
    assert one == subject_of(None, None, "198.51.100.201", BROWSER)  # same /24, same browser
    assert one != subject_of(None, None, "198.51.101.7", BROWSER)
    assert one != subject_of(None, None, "198.51.100.7", {**BROWSER, "Accept-Language": "de"})
    assert subject_of(None, None, "2001:db8:1:2::1", BROWSER) == subject_of(None, None, "2001:db8:1:ffff::9", BROWSER)
    assert subject_of("acme", "ann", "198.51.100.7", BROWSER) == ANN


async def test_rotating_addresses_in_one_network_add_up_and_are_named_hashed(sightings):
    engine = make_detection(sightings, scraping(actions={"public": "block"}, weights={"enumeration": 3}),
                            ManualClock(T0 + 30))
    # A new address every three pages, ids in order: one client, walking.
    await feed(engine, [obs(T0 + n * 1.3, f"/docs/{100 + n}", route_class="public", user=None,
                            ip=f"203.0.113.{1 + n // 3}") for n in range(12)])
    (finding,) = engine.findings.recent()
    assert finding.signals == ("enumeration",) and finding.action == "challenge"
    assert "203.0.113" not in str(finding.as_json())
    assert engine.refusal(None, "203.0.113.250", "public", BROWSER).slug == "automation-challenge"


@pytest.mark.parametrize(("readers", "fires"), [(2, False), (3, True)])
async def test_ids_walked_by_a_crowd_of_anonymous_clients_are_one_enumeration(sightings, readers, fires):
    engine = make_detection(sightings, scraping(actions={"public": "block"}, weights={"crowd_enumeration": 12}),
                            ManualClock(T0 + 60))
    # Three pages each from unrelated networks, ids continuing from one client to the next.
    await feed(engine, [obs(T0 + n * 2.1, f"/docs/{500 + n}", route_class="public", user=None,
                            ip=f"192.0.{2 + (n // 3) % readers}.{n}") for n in range(9)])
    assert ("crowd_enumeration" in signals_of(engine)) is fires
    if fires:
        finding = engine.findings.recent()[-1]
        assert finding.action == "challenge"


async def test_a_crowd_member_with_a_browser_proof_does_not_join(sightings):
    engine = make_detection(sightings, scraping(actions={"public": "block"}, weights={"crowd_enumeration": 12}),
                            ManualClock(T0 + 60))
    for n in range(9):
        ip = f"192.0.{2 + n // 3}.9"
        engine.observe_proof(subject_of(None, None, ip, BROWSER))
        await feed(engine, [obs(T0 + n * 2.1, f"/docs/{500 + n}", route_class="public", user=None, ip=ip)])
    assert not engine.findings.recent()


async def test_office_colleagues_behind_one_nat_are_each_their_own_login(sightings):
    engine = make_detection(sightings, scraping(weights={"crowd_enumeration": 12, "enumeration": 2}), ManualClock())
    agents = (FIREFOX, CHROME)
    await feed(engine, [obs(T0 + n * 3.7, f"/portal/tickets/{(n * 53) % 400}", user=f"staff{n % 8}",
                            session=f"s{n % 8}", ip="10.1.1.1", headers={**BROWSER, "User-Agent": agents[n % 2]})
                        for n in range(120)])
    assert not engine.findings.recent()


# -- bulk extraction -------------------------------------------------------------------------------

# bulk_over_baseline = bulk_min_records: every login's records are counted from its first read.
EXACT_BULK = {"bulk_min_records": 10, "bulk_over_baseline": 10, "weights": {"bulk_extraction": 12}}

@pytest.mark.parametrize(("records", "fires"), [(90, False), (91, True)])
async def test_bulk_extraction_is_judged_against_the_customers_other_users(sightings, records, fires):
    engine = make_detection(sightings, scraping(**EXACT_BULK), ManualClock())
    for n, user in enumerate(("bea", "cal", "dan")):  # the customer's baseline: a median of 9 records today
        await feed(engine, [obs(T0 + k * 9.1, f"/api/v1/tickets/{k * 7}", route_class="api", user=user)
                            for k in range(8 + n)])
    await feed(engine, [obs(T0 + 200 + n * 9.1, f"/api/v1/tickets/{n * 7}", route_class="api")
                        for n in range(records)])
    assert ("bulk_extraction" in signals_of(engine)) is fires
    if fires:
        (finding,) = engine.findings.recent()
        assert finding.evidence["signals"]["bulk_extraction"]["threshold"] == 90  # 10 x the median of 9


@pytest.mark.parametrize(("records", "fires"), [(10, False), (11, True)])
async def test_a_customer_of_one_user_is_held_to_the_floor(sightings, records, fires):
    engine = make_detection(sightings, scraping(**EXACT_BULK), ManualClock())
    await feed(engine, [obs(T0 + n * 9.1, f"/api/v1/tickets/{n}", route_class="api") for n in range(records)])
    assert ("bulk_extraction" in signals_of(engine)) is fires


async def test_the_same_records_again_are_not_more_records(sightings):
    engine = make_detection(sightings, scraping(**EXACT_BULK), ManualClock())
    await feed(engine, [obs(T0 + n * 9.1, f"/api/v1/tickets/{n % 10}", route_class="api") for n in range(100)])
    assert not engine.findings.recent()


async def test_a_new_day_starts_the_count_again(sightings):
    engine = make_detection(sightings, scraping(**EXACT_BULK), ManualClock())
    day = T0 - T0 % 86400 + 86400
    await feed(engine, [obs(day - 100 + n, f"/api/v1/tickets/{n}", route_class="api") for n in range(8)])
    await feed(engine, [obs(day + 1 + n, f"/api/v1/tickets/{100 + n}", route_class="api") for n in range(8)])
    assert not engine.findings.recent()


# -- the request path -------------------------------------------------------------------------------

class CountingSightings(MemorySightings):
    """The memory store, counting its exchanges (each would be one Redis pipeline)."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges = 0

    async def exchange(self, seen: list[Sighting], queries: list[Query]) -> Answers:
        self.exchanges += 1
        return await super().exchange(seen, queries)


async def test_detection_adds_no_round_trip_to_a_request_and_one_per_batch():
    store = CountingSightings()
    engine = make_detection((store, "mem"), {**scraping(), "sharing": {}, "seats": {}}, ManualClock())
    # What the request path calls is synchronous: it cannot wait for a store.
    for name in ("observe_request", "observe_refused", "observe_proof", "refusal", "observe"):
        assert not inspect.iscoroutinefunction(getattr(engine, name))
    for n in range(2000):
        engine.observe(obs(T0 + n * 0.01, f"/portal/tickets/{n}", user=f"u{n % 300}", session=f"s{n % 300}",
                           offered=True))
    assert store.exchanges == 0
    yielded = 0

    async def count_yields() -> None:
        nonlocal yielded
        while True:
            await asyncio.sleep(0)
            yielded += 1

    counter = asyncio.get_running_loop().create_task(count_yields())
    await engine.drain()
    counter.cancel()
    assert store.exchanges == 1  # the whole batch of 2000 in one exchange
    assert yielded >= 2000 // 256 - 1  # the loop ran between its chunks (the first starts the counter)


async def test_reads_below_the_mark_are_not_records_and_people_stay_under_it(sightings):
    # Defaults: the floor 500, the mark 100 reads; a person reading 300 records in a day is fine.
    engine = make_detection(sightings, scraping(weights={"bulk_extraction": 12}), ManualClock())
    await feed(engine, [obs(T0 + n * 20.3, f"/api/v1/tickets/{n}", route_class="api") for n in range(300)])
    assert not engine.findings.recent()


@given(st.one_of(
    st.tuples(*[st.integers(0, 300)] * 4).map(lambda p: ".".join(map(str, p))),
    st.lists(st.text("0123456789", min_size=1, max_size=4), min_size=3, max_size=5).map(".".join),
    st.text(max_size=20)))
def test_the_ipv4_fast_path_names_the_network_ipaddress_does(address):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        expected = ""
    else:
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        expected = str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False))
    assert find_network(address) == expected == network_of(address)
