"""What a person sees when the gateway refuses it: the challenge interstitial a real browser
passes by itself (headless Chromium), the pass cookie's checks (forgery, expiry, another
subject, replay), problem+json for programs, and the HTML block page."""

from __future__ import annotations

import asyncio
import hashlib
import re

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.config.detection import ChallengeSettings
from gateway.detect.observation import PROOF, subject_of
from gateway.detect.sanctions import AUTOMATION, Sanction, SanctionKind
from gateway.proxy.challenge import COOKIE, Challenges, Check, challenge_key, meets, pass_values
from gateway.proxy.pages.navigation import wants_html
from loadtest.eval.traffic import outcome_of
from tests.support.browser import wait_for
from tests.support.clock import ManualClock
from tests.support.configs import gateway_config
from tests.support.tokens import ADMIN, bearer, hs_issuer, hs_token
from tests.support.waiting import wait_until

# A person's browser opening a page, and a program.
NAVIGATION = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
              "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
              "Accept-Language": "en", "Accept-Encoding": "gzip, deflate, br", "Sec-Fetch-Mode": "navigate",
              "Sec-Fetch-Dest": "document"}
CURL = {"User-Agent": "curl/8.5.0", "Accept": "*/*", "Accept-Encoding": "gzip"}
APPEAL = "https://example.com/appeal"
UPSTREAM_PAGE = "<!doctype html><title>Records</title><h1 id='upstream'>Your records</h1>"


class PagesUpstream(str):
    """The upstream's URL, and the request headers it was sent."""

    seen: list[dict[str, str]]


@pytest.fixture
async def pages_upstream():
    """The vendor's portal: an HTML page for every path."""
    seen: list[dict[str, str]] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text=UPSTREAM_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = PagesUpstream(f"http://127.0.0.1:{runner.addresses[0][1]}")
    url.seen = seen
    yield url
    await runner.cleanup()


def challenge_config(upstream_url: str, difficulty: int = 10) -> dict:
    config = gateway_config(
        str(upstream_url),  # a plain str for the YAML file
        routes=[{"name": "portal", "path_prefix": "/portal/", "upstream": "app", "auth": "optional",
                 "class": "portal"},
                {"name": "api", "path_prefix": "/api/", "upstream": "app", "auth": "optional", "class": "api"}],
        auth={"issuers": [hs_issuer()]},
    )
    # A long flush interval: the proof credits stay queued where the test can see them.
    config["detection"] = {"hash_salt": "s" * 16, "flush_interval": "1h",
                           "scraping": {"actions": {"portal": "challenge", "api": "block"},
                                        "challenge": {"difficulty": difficulty, "pass_ttl": "1h"}}}
    config["enforcement"] = {"mode": "enforce", "policy": "https://example.com/fair-use", "appeal_url": APPEAL}
    return config


def anonymous(address: str, headers: dict) -> str:
    """Whom detection takes an anonymous client for: its network and header fingerprint."""
    return subject_of(None, None, address, headers)


def sanction(gateway, subject: str, kind: SanctionKind = SanctionKind.CHALLENGE, lasting: float = 86400) -> None:
    """Put `subject` (`anonymous(...)` or "user:C/U") under a sanction for `lasting` seconds of the
    gateway's clock (an injected one, or the real one: never a fixed date), as a finding would."""
    detection = gateway.server.state.detection
    until = gateway.server.state.clock.time() + lasting
    detection.sanctions.add(Sanction(detection.public(subject), kind, until, "no screen-scraping"))


def challenges_counted(gateway, result: str) -> float:
    return gateway.server.metrics.challenges.labels(result)._value.get()


def proofs(gateway, subject: str) -> int:
    queued = gateway.server.state.detection._queue  # drained only every hour in these tests
    return sum(1 for obs in queued if obs.route_class == PROOF and obs.subject == subject)


def solve(page: str) -> str:
    """The pass a browser would set for this interstitial (the test's own solver)."""
    challenge = re.search(r'data-challenge="([^"]+)"', page).group(1)
    bits = int(re.search(r'data-difficulty="(\d+)"', page).group(1))
    counter = next(n for n in range(1 << 24) if meets(hashlib.sha256(f"{challenge}.{n}".encode()).digest(), bits))
    return f"{challenge}.{counter}"


def unsolved(page: str) -> str:
    challenge = re.search(r'data-challenge="([^"]+)"', page).group(1)
    bits = int(re.search(r'data-difficulty="(\d+)"', page).group(1))
    counter = next(n for n in range(1 << 24) if not meets(hashlib.sha256(f"{challenge}.{n}".encode()).digest(),
                                                          bits))
    return f"{challenge}.{counter}"


async def fetch(url: str, headers: dict, source: str = "127.0.0.1") -> tuple[int, dict, str]:
    """One request from loopback address `source` (no cookie jar: each test says what it sends)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session,
                session.get(url, headers=headers) as response):
        return response.status, {k.lower(): v for k, v in response.headers.items()}, await response.text()


def run(step):
    return asyncio.to_thread(step)


async def chromium_subject(browser, gateway, upstream: PagesUpstream) -> str:
    """Who Chromium is to the detectors: one page before any sanction shows its headers."""
    browser.delete_all_cookies()
    await run(lambda: browser.get(f"{gateway.url}/portal/first"))
    await wait_until(lambda: upstream.seen, message="the first page did not reach the upstream")
    return anonymous("127.0.0.1", upstream.seen[-1])


async def test_a_real_browser_passes_the_challenge_by_itself_and_is_credited(browser, start_gateway, pages_upstream):
    from selenium.webdriver.common.by import By

    gateway = await start_gateway(challenge_config(pages_upstream, difficulty=12))
    subject = await chromium_subject(browser, gateway, pages_upstream)
    sanction(gateway, subject)

    await run(lambda: browser.get(f"{gateway.url}/portal/records/7"))
    heading = await run(lambda: wait_for(browser, lambda d: d.find_elements(By.ID, "upstream"), timeout=20))
    assert await run(lambda: heading[0].text) == "Your records"
    cookie = await run(lambda: browser.get_cookie(COOKIE))
    assert cookie is not None and cookie["sameSite"] == "Lax" and not cookie["secure"]
    assert challenges_counted(gateway, "issued") == 1 and challenges_counted(gateway, "passed") == 1
    await wait_until(lambda: proofs(gateway, subject) >= 1, message="the browser was not credited")

    # The pass holds for the next pages: no second interstitial.
    await run(lambda: browser.get(f"{gateway.url}/portal/records/8"))
    await run(lambda: wait_for(browser, lambda d: d.find_elements(By.ID, "upstream")))
    assert challenges_counted(gateway, "issued") == 1 and challenges_counted(gateway, "failed") == 0


async def test_the_browser_without_web_crypto_passes_with_the_scripts_own_digest(browser, start_gateway,
                                                                                pages_upstream):
    """Plain http on a public host name is no secure context: crypto.subtle is missing there."""
    from selenium.webdriver.common.by import By

    gateway = await start_gateway(challenge_config(pages_upstream, difficulty=8))
    sanction(gateway, await chromium_subject(browser, gateway, pages_upstream))
    hidden = await run(lambda: browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {
        "source": "Object.defineProperty(window.crypto, 'subtle', {get: () => undefined});"}))
    try:
        await run(lambda: browser.get(f"{gateway.url}/portal/records/1"))
        await run(lambda: wait_for(browser, lambda d: d.find_elements(By.ID, "upstream"), timeout=20))
    finally:
        await run(lambda: browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                                  {"identifier": hidden["identifier"]}))
    assert challenges_counted(gateway, "passed") == 1


async def test_forged_unsolved_expired_and_replayed_passes_are_challenged_again(start_gateway, pages_upstream):
    clock = ManualClock()
    gateway = await start_gateway(challenge_config(pages_upstream), clock=clock)
    url = f"{gateway.url}/portal/records/1"
    other_browser = {**NAVIGATION, "User-Agent": NAVIGATION["User-Agent"].replace("128.0", "129.0")}
    for address, headers in (("127.0.0.1", NAVIGATION), ("127.0.1.1", NAVIGATION), ("127.0.0.1", other_browser)):
        sanction(gateway, anonymous(address, headers))

    status, headers, page = await fetch(url, NAVIGATION)
    assert status == 403 and headers["content-type"].startswith("text/html")
    assert 'data-fairgate-outcome="challenge"' in page and headers["cache-control"] == "no-store"
    assert outcome_of(status, headers["content-type"], page.encode()) == "challenged"  # the evaluation's reading
    assert outcome_of(status, headers["content-type"], b"", headers["fairgate-outcome"]) == "challenged"
    script_source = re.search(r"script-src ('sha256-[^']+')", headers["content-security-policy"]).group(1)
    assert headers["content-security-policy"].startswith("default-src 'none'") and script_source
    good = solve(page)

    def failed_with(value: str):
        return fetch(url, {**NAVIGATION, "Cookie": f"{COOKIE}={value}"})

    expiry, nonce, mac, counter = good.split(".")
    forged = [f"{int(expiry) + 3600}.{nonce}.{mac}.{counter}",  # a longer pass than was signed
              f"{expiry}.{nonce}.{mac[:-2]}AA.{counter}", "garbage", unsolved(page)]
    for value in forged:
        status, _, page_again = await failed_with(value)
        assert status == 403 and 'data-fairgate-outcome="challenge"' in page_again, value
    assert challenges_counted(gateway, "failed") == len(forged)

    # Replayed by another identity: another network, another browser on the same address, a logged-in user.
    status, _, _ = await fetch(url, {**NAVIGATION, "Cookie": f"{COOKIE}={good}"}, source="127.0.1.1")
    assert status == 403
    status, _, _ = await fetch(url, {**other_browser, "Cookie": f"{COOKIE}={good}"})
    assert status == 403
    sanction(gateway, "user:acme/alice")
    status, _, _ = await fetch(url, {**NAVIGATION, **bearer(hs_token(clock)), "Cookie": f"{COOKIE}={good}"})
    assert status == 403

    status, _, body = await failed_with(good)
    assert (status, body) == (200, UPSTREAM_PAGE)
    assert challenges_counted(gateway, "passed") == 1 and proofs(gateway, anonymous("127.0.0.1", NAVIGATION)) == 1

    clock.advance(3601)  # the pass expired (the sanction did not)
    status, _, _ = await failed_with(good)
    assert status == 403


async def test_a_pass_in_a_second_cookie_header_is_read(start_gateway, pages_upstream):
    """A front proxy may hand HTTP/2's cookie crumbs on as several Cookie headers."""
    gateway = await start_gateway(challenge_config(pages_upstream))
    sanction(gateway, anonymous("127.0.0.1", NAVIGATION))
    _, _, page = await fetch(f"{gateway.url}/portal/a", NAVIGATION)
    headers = CIMultiDict(NAVIGATION)
    headers.add("Cookie", "theme=dark")
    headers.add("Cookie", f"{COOKIE}={solve(page)}")
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))
    async with (aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session,
                session.get(f"{gateway.url}/portal/a", headers=headers) as response):
        assert response.status == 200 and await response.text() == UPSTREAM_PAGE


async def test_a_pass_spares_a_challenge_never_a_block(start_gateway, pages_upstream):
    gateway = await start_gateway(challenge_config(pages_upstream))
    sanction(gateway, anonymous("127.0.0.1", NAVIGATION))
    _, _, page = await fetch(f"{gateway.url}/portal/a", NAVIGATION)
    passing = {**NAVIGATION, "Cookie": f"{COOKIE}={solve(page)}"}
    assert (await fetch(f"{gateway.url}/portal/a", passing))[0] == 200

    sanction(gateway, anonymous("127.0.0.1", NAVIGATION), AUTOMATION, lasting=2 * 86400)  # grew into a block
    status, headers, body = await fetch(f"{gateway.url}/api/a", passing)
    assert status == 403 and 'data-fairgate-outcome="block"' in body and "retry-after" in headers


async def test_programs_under_a_challenge_get_problem_json_never_html(start_gateway, pages_upstream):
    gateway = await start_gateway(challenge_config(pages_upstream))
    for headers in (NAVIGATION, CURL):
        sanction(gateway, anonymous("127.0.0.1", headers))
    for headers in (CURL, {**CURL, "Accept": "application/json"},
                    {**NAVIGATION, "Sec-Fetch-Dest": "empty"}):  # a page's own fetch()
        status, answer_headers, body = await fetch(f"{gateway.url}/portal/a", headers)
        assert status == 403 and answer_headers["content-type"].startswith("application/problem+json"), body
        assert "automation-challenge" in body
    # API routes are never challenged (with HTML or otherwise): a challenge is for pages.
    status, answer_headers, _ = await fetch(f"{gateway.url}/api/a", NAVIGATION)
    assert status == 200
    assert challenges_counted(gateway, "issued") == 0


async def test_a_blocked_browser_gets_a_page_that_says_until_when_and_how_to_appeal(start_gateway, pages_upstream):
    gateway = await start_gateway(challenge_config(pages_upstream), clock=ManualClock())
    for headers in (NAVIGATION, CURL):
        sanction(gateway, anonymous("127.0.0.1", headers), AUTOMATION)

    status, headers, page = await fetch(f"{gateway.url}/api/a", NAVIGATION)
    assert status == 403 and headers["content-type"] == "text/html; charset=utf-8"
    assert 'data-fairgate-outcome="block"' in page and "<script" not in page
    assert outcome_of(status, headers["content-type"], page.encode()) == "blocked"
    assert headers["fairgate-outcome"] == "block"
    assert "script-src 'none'" in headers["content-security-policy"]
    assert f'href="{APPEAL}"' in page and headers["x-request-id"] in page
    assert "2027-01-16T08:00:00+00:00" in page and 800 < int(headers["retry-after"]) <= 86400

    status, headers, body = await fetch(f"{gateway.url}/api/a", CURL)
    assert status == 403 and headers["content-type"].startswith("application/problem+json")
    assert "urn:fairgate:problem:automation-blocked" in body


async def test_a_suspended_customer_in_a_browser_reads_the_suspension(start_gateway, pages_upstream, client):
    clock = ManualClock()
    gateway = await start_gateway(challenge_config(pages_upstream), clock=clock)
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                           json={"for": "1h", "reason": "scraping the portal"}) as response:
        assert response.status == 201
    token = bearer(hs_token(clock))
    status, _, page = await fetch(f"{gateway.url}/portal/a", {**NAVIGATION, **token})
    assert status == 403 and "Access is suspended" in page and "scraping the portal" in page
    status, headers, _ = await fetch(f"{gateway.url}/portal/a", {**CURL, **token})
    assert status == 403 and headers["content-type"].startswith("application/problem+json")


def test_a_pass_is_bound_to_its_subject_and_its_expiry():
    clock = ManualClock()
    challenges = Challenges(challenge_key(b"salt"), ChallengeSettings(difficulty=8, pass_ttl="10min"), clock)
    issued = challenges.issue("user:acme/alice")
    counter = next(n for n in range(1 << 16)
                   if meets(hashlib.sha256(f"{issued.challenge}.{n}".encode()).digest(), 8))
    value = f"{issued.challenge}.{counter}"
    assert issued.max_age == 600
    assert challenges.check_pass(value, "user:acme/bob") is Check.FORGED
    assert challenges.check_pass(value, "user:acme/alice") is Check.PASSED
    assert challenges.check_pass(value, "user:acme/alice") is Check.VALID  # counted as passed once
    other_key = Challenges(challenge_key(b"another deployment"), ChallengeSettings(difficulty=8), clock)
    assert other_key.check_pass(value, "user:acme/alice") is Check.FORGED
    clock.advance(600)
    assert challenges.check_pass(value, "user:acme/alice") is Check.EXPIRED
    assert "salt" not in repr(challenges) and "key" not in repr(challenges)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.text(max_size=40))
def test_any_cookie_header_is_a_clean_verdict(header, subject):
    challenges = Challenges(challenge_key(None), ChallengeSettings(difficulty=4), ManualClock())
    assert challenges.check(header, subject) in set(Check) - {Check.PASSED, Check.VALID}
    assert challenges.check(f"a=b; {COOKIE}={header}", subject) in set(Check) - {Check.PASSED, Check.VALID}
    assert len(pass_values(header)) <= 2


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["Accept", "Sec-Fetch-Dest", "Sec-Fetch-Mode"]), st.text(max_size=200)))
def test_any_accept_and_fetch_metadata_is_an_answer(headers):
    assert wants_html(headers) in (True, False)


@pytest.mark.parametrize(("headers", "html"), [
    (NAVIGATION, True),
    ({"Accept": "text/html"}, True),
    ({"Accept": "*/*"}, False),
    ({}, False),
    ({"Sec-Fetch-Mode": "navigate"}, True),
    ({"Accept": "application/json, text/html;q=0.5"}, False),
    ({"Accept": "text/html;q=0"}, False),
    ({"Accept": "text/html, application/json"}, False),
    ({"Accept": "text/html, application/json", "Sec-Fetch-Dest": "document"}, True),
    ({"Accept": "text/html", "Sec-Fetch-Dest": "empty"}, False),
])
def test_what_counts_as_a_browser_opening_a_page(headers, html):
    assert wants_html(headers) is html


async def test_behind_a_tls_proxy_the_pass_is_a_secure_host_only_cookie(start_gateway, pages_upstream):
    config = challenge_config(pages_upstream)
    config["server"]["trusted_proxies"] = ["127.0.0.1/32"]
    gateway = await start_gateway(config)
    sanction(gateway, anonymous("127.0.0.1", NAVIGATION))
    _, _, plain = await fetch(f"{gateway.url}/portal/a", NAVIGATION)
    assert f'data-cookie="{COOKIE}"' in plain and 'data-secure="0"' in plain
    status, _, page = await fetch(f"{gateway.url}/portal/a", {**NAVIGATION, "X-Forwarded-Proto": "https"})
    assert status == 403 and 'data-cookie="__Host-fairgate_pass"' in page and 'data-secure="1"' in page
    passing = {**NAVIGATION, "X-Forwarded-Proto": "https", "Cookie": f"__Host-fairgate_pass={solve(page)}"}
    assert (await fetch(f"{gateway.url}/portal/a", passing))[0] == 200
