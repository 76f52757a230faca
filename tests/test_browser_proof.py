"""Proof of a browser, per identity (issue 13, item 1): the link token the gateway plants in
portal HTML and credits when the page's own browser fetches it.

Tokens on an injected clock (expiry, forgery, wrong identity, replay; any string a clean "no
credit"); the `</head>` search over any chunking; a real gateway in front of a real upstream
(the link goes in, lengths stay right, every other byte is the upstream's, API, compressed, HEAD
and 304 answers untouched, the stylesheet answered by the gateway alone); and a real headless
Chromium whose stylesheet fetch with the session cookie credits its login, again on a reload."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hmac
import re
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.detect.proof import BrowserProofs, ProofResult
from gateway.metrics import Metrics
from gateway.proxy.browser_proof import styles_from_self
from gateway.proxy.html_head import head_end, read_head, with_link
from tests.support.clock import T0, ManualClock
from tests.support.configs import gateway_config
from tests.support.tokens import bearer, hs_issuer, hs_token
from tests.support.waiting import wait_until

ALICE, BOB, ANONYMOUS = "user:acme/alice", "user:acme/bob", "address:127.0.0.1"
LINK = re.compile(rb'<link rel="stylesheet" href="(/\.well-known/fairgate/proof/([A-Za-z0-9_-]+)\.css)">')
COOKIE = "fg_session"


def new_proofs(clock: ManualClock, salt: bytes | None = b"salt", ttl: float = 600.0,
               metrics: Metrics | None = None) -> tuple[BrowserProofs, Metrics]:
    metrics = metrics or Metrics()
    proofs = BrowserProofs(clock, metrics.browser_proofs, metrics.proof_pages)
    proofs.configure(salt, ttl)
    return proofs, metrics


def counted(metrics: Metrics, result: str, name: str = "fairgate_browser_proofs_total") -> float:
    return metrics.registry.get_sample_value(name, {"result": result}) or 0.0


# -- tokens -----------------------------------------------------------------------------------

def test_a_token_credits_the_subject_it_was_minted_for_once():
    clock = ManualClock(T0)
    proofs, metrics = new_proofs(clock)
    token = proofs.mint(ALICE)
    assert re.fullmatch(r"[A-Za-z0-9_-]{54}", token)
    assert proofs.verify(token, ALICE) == ALICE
    assert proofs.check(token, ALICE) == (ProofResult.REPLAYED, None)
    assert proofs.verify(token, ALICE) is None
    assert (counted(metrics, "credited"), counted(metrics, "replayed")) == (1, 1)
    assert proofs.mint(ALICE) != proofs.mint(ALICE)  # per page: a warm cache still fetches the new URL


def test_a_token_credits_until_its_ttl_and_not_a_second_after():
    clock = ManualClock(T0)
    proofs, metrics = new_proofs(clock, ttl=600)
    last_second, too_late = proofs.mint(ALICE), proofs.mint(ALICE)
    clock.advance(600)
    assert proofs.verify(last_second, ALICE) == ALICE
    clock.advance(1)
    assert proofs.check(too_late, ALICE) == (ProofResult.EXPIRED, None)
    assert proofs.verify(too_late, ALICE) is None
    assert counted(metrics, "expired") == 1


def test_another_identity_gets_no_credit_and_does_not_use_the_token_up():
    clock = ManualClock(T0)
    proofs, metrics = new_proofs(clock)
    bobs = proofs.mint(BOB)
    assert proofs.check(bobs, ALICE) == (ProofResult.WRONG_IDENTITY, None)
    assert proofs.verify(bobs, ANONYMOUS) is None
    assert counted(metrics, "wrong_identity") == 1
    assert proofs.verify(bobs, BOB) == BOB


def test_a_page_that_did_not_read_the_login_credits_the_client_it_was_minted_for():
    proofs, _ = new_proofs(ManualClock(T0))
    token = proofs.mint(ANONYMOUS)  # an `auth: none` page, fetched by a logged-in browser
    assert proofs.verify(token, ALICE, ANONYMOUS) == ANONYMOUS


def test_every_gateway_of_a_deployment_verifies_the_others_and_no_one_else():
    clock = ManualClock(T0)
    minting, _ = new_proofs(clock, salt=b"deployment salt")
    same, _ = new_proofs(clock, salt=b"deployment salt")
    other, _ = new_proofs(clock, salt=b"another deployment")
    assert same.verify(minting.mint(ALICE), ALICE) == ALICE
    assert other.check(minting.mint(ALICE), ALICE) == (ProofResult.FORGED, None)
    unsalted, _ = new_proofs(clock, salt=None)  # a random secret of this process: kept over a reload
    token = unsalted.mint(ALICE)
    unsalted.configure(None, 300)
    assert unsalted.verify(token, ALICE) == ALICE
    assert "salt" not in repr(minting) and "key" not in repr(minting)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300))
def test_the_precomputed_mac_is_hmac_sha256(key, message):
    from gateway.detect.proof import _Hmac

    mac = _Hmac(key)
    assert mac(message) == hmac.digest(key, message, "sha256") == mac(message)  # the states are not used up


@pytest.mark.parametrize("at", range(24))  # expiry and nonce bytes: any change is a forgery
def test_a_changed_expiry_or_nonce_is_forged(at):
    proofs, _ = new_proofs(ManualClock(T0))
    raw = bytearray(base64.urlsafe_b64decode(proofs.mint(ALICE) + "=="))
    raw[at] ^= 0x01
    changed = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert proofs.check(changed, ALICE) == (ProofResult.FORGED, None)


@given(st.one_of(st.text(max_size=120), st.from_regex(r"[A-Za-z0-9_-]{54}", fullmatch=True),
                 st.binary(min_size=40, max_size=40).map(lambda raw: base64.urlsafe_b64encode(raw).decode())))
def test_any_string_is_a_clean_no_credit(token):
    proofs, _ = new_proofs(ManualClock(T0))
    result, credited = proofs.check(token, ALICE, ANONYMOUS)
    assert credited is None and result is ProofResult.FORGED


# -- where the link goes ---------------------------------------------------------------------

_HEADS = st.sampled_from([b"</head>", b"</HEAD>", b"</Head >", b"</head\n>", b"</hea", b"<head>", b"</header>"])
_HTML = st.lists(st.one_of(_HEADS, st.binary(max_size=40), st.sampled_from([b"<", b"/", b"h", b">"])),
                 max_size=40).map(b"".join)


@given(_HTML, st.lists(st.integers(1, 50), min_size=1, max_size=30), st.integers(16, 600))
async def test_the_head_is_found_where_a_whole_body_search_finds_it_however_the_body_is_chunked(body, sizes, limit):
    chunks, rest = [], body
    while rest:
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(rest[:size])
        rest = rest[size:]
    source = iter(chunks)

    async def read_chunk() -> bytes:
        return next(source, b"")

    read, at = await read_head(read_chunk, limit)
    assert at == head_end(body, limit)
    assert bytes(read) + b"".join(source) == body  # nothing lost, nothing reordered
    if at >= 0:
        assert read.lower()[at:at + 6] == b"</head" and at + 7 <= limit
        assert len(read) < limit + 50  # no more than the limit and the chunk that crossed it
        planted = with_link(read, at, b"<link>")
        assert planted[:at] + planted[at + 6:] == bytes(read)


# -- a real gateway in front of a real upstream --------------------------------------------

@dataclass
class Page:
    body: bytes
    chunks: list[int] | None = None  # None: sent with Content-Length
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/html; charset=utf-8"})


@dataclass
class Site:
    pages: dict[str, Page] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)  # request paths the upstream got
    url: str = ""


def html(size: int = 0) -> bytes:
    filler = b"".join(b"<p>row %d</p>\n" % n for n in range(size // 14 + 1))[:size]
    return (b"<!doctype html><html><Head><title>Tickets</title><link rel=stylesheet href=/assets/app.css>"
            b"</HEAD><body>" + filler + b"</body></html>")


async def serve_site(site: Site) -> tuple[web.AppRunner, str]:
    async def page(request: web.Request) -> web.StreamResponse:
        site.seen.append(request.path)
        found = site.pages[request.match_info["name"]]
        etag = found.headers.get("ETag")
        if etag is not None and request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        if found.chunks is None:
            return web.Response(body=found.body, headers=found.headers)
        response = web.StreamResponse(headers=found.headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        body, sizes = found.body, found.chunks
        while body:
            size = sizes[0] if sizes else len(body)
            sizes = sizes[1:] or sizes
            await response.write(body[:size])
            body = body[size:]
        await response.write_eof()
        return response

    async def anything(request: web.Request) -> web.Response:
        site.seen.append(request.path)
        return web.Response(body=b"/* app */", content_type="text/css")

    app = web.Application()
    app.router.add_get("/portal/{name}", page)
    app.router.add_get("/api/{name}", page)
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    site_ = web.TCPSite(runner, "127.0.0.1", 0)
    await site_.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def proof_config(upstream_url: str, **proof: object) -> dict:
    config = gateway_config(upstream_url, routes=[
        {"name": "portal", "path_prefix": "/portal/", "upstream": "app", "auth": "optional", "class": "portal"},
        {"name": "assets", "path_prefix": "/assets/", "upstream": "app", "auth": "none", "class": "asset"},
        {"name": "api", "path_prefix": "/api/", "upstream": "app", "auth": "optional"},
        {"name": "rest", "path_prefix": "/", "upstream": "app", "auth": "none"},
    ], auth={"issuers": [hs_issuer()], "session_cookie": {"name": COOKIE}})
    config["detection"] = {"hash_salt": "s" * 16, "flush_interval": "10ms",
                           "scraping": {"actions": {"portal": "flag", "api": "flag"}}, "proof": proof}
    return config


@pytest.fixture
async def site():
    site = Site()
    runner, site.url = await serve_site(site)
    yield site
    await runner.cleanup()


@pytest.fixture
def clock():
    return ManualClock(T0)


@pytest.fixture
async def gw(start_gateway, site, clock):
    return await start_gateway(proof_config(site.url), clock=clock)


def page_metric(gateway, result: str) -> float:
    return counted(gateway.server.metrics, result, "fairgate_proof_pages_total")


def proof_metric(gateway, result: str) -> float:
    return counted(gateway.server.metrics, result)


def without_link(body: bytes) -> bytes:
    links = LINK.findall(body)
    assert len(links) == 1, body[:300]
    return LINK.sub(b"", body)


@pytest.mark.parametrize("name, page", [
    ("small", Page(html(100))),  # Content-Length, read whole
    ("large", Page(html(200_000))),  # Content-Length, streamed
    ("chunked", Page(html(100_000), chunks=[7, 3, 1, 5000])),  # chunked, </HEAD> split across chunks
])
async def test_portal_html_gets_the_link_before_its_head_with_a_right_length(gw, site, client, name, page):
    page.headers["ETag"] = '"v1"'
    page.headers["Last-Modified"] = "Fri, 15 Jan 2027 08:00:00 GMT"
    site.pages[name] = page
    async with client.get(f"{gw.url}/portal/{name}") as response:
        assert response.status == 200
        body = await response.read()
        if page.chunks is None:
            assert int(response.headers["Content-Length"]) == len(body)
        else:
            assert "Content-Length" not in response.headers and response.headers["Transfer-Encoding"] == "chunked"
        # Another representation than the upstream's: its validators would bring back a used-up link.
        assert "ETag" not in response.headers and "Last-Modified" not in response.headers
    assert without_link(body) == page.body
    assert re.search(rb'\.css"></HEAD><body>', body)
    assert page_metric(gw, "injected") == 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_HTML, chunks=st.none() | st.lists(st.integers(1, 40), min_size=1, max_size=5),
       padding=st.integers(0, 70_000))
async def test_a_page_through_the_gateway_is_the_upstreams_byte_for_byte_but_the_link(gw, site, client, body, chunks,
                                                                                    padding):
    body = b"<html><head>" + body + b"</head>" + b"x" * padding if padding % 2 else body + b"x" * padding
    site.pages["any"] = Page(body, chunks)
    async with client.get(f"{gw.url}/portal/any") as response:
        received = await response.read()
        if chunks is None:
            assert int(response.headers["Content-Length"]) == len(received)
    at = head_end(body, 32768)
    if at < 0:
        assert received == body
    else:
        assert without_link(received) == body and LINK.search(received).start() == at  # type: ignore[union-attr]


async def test_api_json_compressed_headless_head_and_304_answers_are_the_upstreams(gw, site, client):
    site.pages["json"] = Page(b'{"html": "</head>"}', headers={"Content-Type": "application/json"})
    site.pages["zipped"] = Page(gzip.compress(html(50)), headers={"Content-Type": "text/html",
                                                                  "Content-Encoding": "gzip"})
    site.pages["fragment"] = Page(b"<p>no head here</p>")
    site.pages["late"] = Page(b"<html><head>" + b" " * 40_000 + b"</head>")
    site.pages["kept"] = Page(html(10), headers={"Content-Type": "text/html", "Cache-Control": "no-transform"})
    site.pages["cached"] = Page(html(10), headers={"Content-Type": "text/html", "ETag": '"v1"'})
    for path, page in [("/api/cached", site.pages["cached"]), ("/portal/json", site.pages["json"]),
                       ("/portal/zipped", site.pages["zipped"]), ("/portal/fragment", site.pages["fragment"]),
                       ("/portal/late", site.pages["late"]), ("/portal/kept", site.pages["kept"])]:
        async with client.get(gw.url + path) as response:
            assert response.status == 200
            assert await response.read() == page.body, path
            assert int(response.headers["Content-Length"]) == len(page.body)
    async with client.head(f"{gw.url}/portal/cached") as response:
        assert response.status == 200 and response.headers["ETag"] == '"v1"'
        assert int(response.headers["Content-Length"]) == len(site.pages["cached"].body)
    async with client.get(f"{gw.url}/portal/cached", headers={"If-None-Match": '"v1"'}) as response:
        assert response.status == 304 and await response.read() == b""
    assert [page_metric(gw, result) for result in ("injected", "compressed", "no_head", "no_transform")] == [0, 1, 2, 1]


async def test_the_link_is_planted_only_where_scraping_watches_the_class(start_gateway, site, client):
    site.pages["page"] = Page(html(10))
    config = proof_config(site.url)
    config["detection"]["scraping"]["actions"] = {"api": "flag"}  # portal pages not watched: nobody reads proofs
    gateway = await start_gateway(config)
    async with client.get(f"{gateway.url}/portal/page") as response:
        assert await response.read() == site.pages["page"].body


async def test_the_stylesheet_credits_the_pages_login_once_and_answers_the_same_whatever_the_token(
        gw, site, client, clock):
    site.pages["page"] = Page(html(10))
    alice, bob = hs_token(clock), hs_token(clock, sub="bob")

    async def page_link(headers: dict) -> str:
        async with client.get(f"{gw.url}/portal/page", headers=headers) as response:
            return LINK.search(await response.read()).group(1).decode()  # type: ignore[union-attr]

    async def fetch(path: str, headers: dict) -> tuple[int, bytes, dict]:
        async with client.get(gw.url + path, headers=headers) as response:
            return response.status, await response.read(), dict(response.headers)

    cookie = {"Cookie": f"theme=dark; {COOKIE}={alice}"}
    link = await page_link(cookie)
    status, body, headers = await fetch(link, cookie)
    assert (status, headers["Content-Type"], headers["Cache-Control"]) == (200, "text/css", "private, max-age=600")
    assert proof_metric(gw, "credited") == 1
    answers = {body}
    answers.add((await fetch(link, cookie))[1])  # a replay
    answers.add((await fetch(await page_link(cookie), {"Cookie": f"{COOKIE}={bob}"}))[1])  # bob with alice's
    answers.add((await fetch(await page_link(bearer(alice)), {}))[1])  # the login gone
    answers.add((await fetch("/.well-known/fairgate/proof/" + "A" * 54 + ".css", cookie))[1])
    answers.add((await fetch("/.well-known/fairgate/proof/..%2f..%2fadmin", cookie))[1])
    late = await page_link(bearer(alice))
    clock.advance(601)
    answers.add((await fetch(late, bearer(hs_token(clock))))[1])
    assert len(answers) == 1 and len(body) < 64
    assert [proof_metric(gw, result) for result in ("credited", "replayed", "wrong_identity", "forged", "expired")] == [
        1, 1, 2, 2, 1]
    assert not [path for path in site.seen if "well-known" in path]  # never forwarded
    async with client.post(gw.url + link, data=b"x") as response:
        assert response.status == 405


async def test_the_stylesheet_uses_no_rate_limit_and_no_usage(start_gateway, site, client, clock):
    site.pages["page"] = Page(html(10))
    config = proof_config(site.url)
    config["limits"] = {"default_plan": "standard"}
    config["plans"] = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/s", "burst": 2}]}}
    gateway = await start_gateway(config, clock=clock)
    cookie = {"Cookie": f"{COOKIE}={hs_token(clock)}"}
    async with client.get(f"{gateway.url}/portal/page", headers=cookie) as response:
        link = LINK.search(await response.read()).group(1).decode()  # type: ignore[union-attr]
    for _ in range(5):
        async with client.get(gateway.url + link, headers=cookie) as response:
            assert response.status == 200 and "RateLimit" not in response.headers
    statuses = []
    for _ in range(2):
        async with client.get(f"{gateway.url}/portal/page", headers=cookie) as response:
            statuses.append(response.status)
    assert statuses == [200, 429]  # the burst of 2: one page before, one now; the stylesheets took none


@pytest.mark.parametrize("proof, key", [
    ({"classes": ["api"]}, "detection.proof.classes"),
    ({"ttl": "0s"}, "detection.proof.ttl"),
    ({"ttl": "2d"}, "detection.proof.ttl"),
    ({"head_within": "2MiB"}, "detection.proof.head_within"),
    ({"head_within": "lots"}, "detection.proof.head_within"),
    ({"salt": "x"}, "detection.proof.salt"),
])
def test_config_errors_name_the_key(tmp_path, proof, key):
    import yaml

    from gateway.config import ConfigError, load_config

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(proof_config("http://127.0.0.1:9", **proof)))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert key in str(error.value)


# -- a real browser ----------------------------------------------------------------------------

async def test_a_real_browser_with_the_session_cookie_is_credited_on_each_load(browser, start_gateway, site):
    site.pages["tickets"] = Page(html(2000), headers={"Content-Type": "text/html", "ETag": '"t1"',
                                                      "Cache-Control": "no-cache"})
    gateway = await start_gateway(proof_config(site.url))  # the browser's own clock: the system's
    token = hs_token(ManualClock(time.time()))

    def open_portal() -> None:
        browser.get(f"{gateway.url}/.well-known/fairgate/proof/none.css")  # the origin, to set its cookie on
        browser.add_cookie({"name": COOKIE, "value": token, "path": "/"})
        browser.get(f"{gateway.url}/portal/tickets")

    await asyncio.to_thread(open_portal)
    await wait_until(lambda: proof_metric(gateway, "credited") == 1, 10, "the browser's stylesheet fetch credited nobody")
    await asyncio.to_thread(browser.refresh)  # a warm cache: the page's own stylesheet is cached, the link is new
    await wait_until(lambda: proof_metric(gateway, "credited") == 2, 10, "a reload did not credit again")
    assert proof_metric(gateway, "wrong_identity") == 0  # the cookie came along: the login was credited
    assert page_metric(gateway, "injected") == 2

    def alices_proofs() -> tuple[int, int] | None:
        # The scraping detector's own count for the login (no API shows it): pages offered, proofs credited.
        track = gateway.server.state.detection._ctx.tracks.get("user:acme/alice")
        return None if track is None else (track.offered, track.proofs)

    await wait_until(lambda: alices_proofs() == (2, 2), 5, lambda: f"alice's track: {alices_proofs()}")

    # Signed out: the page and its stylesheet name the same anonymous client (network and headers).
    await asyncio.to_thread(lambda: (browser.delete_all_cookies(), browser.get(f"{gateway.url}/portal/tickets")))
    await wait_until(lambda: proof_metric(gateway, "credited") == 3, 10, "an anonymous browser was not credited")
    assert proof_metric(gateway, "wrong_identity") == 0


async def raw_get(url: str, path: str, extra: bytes) -> bytes:
    """One request with header bytes no HTTP client library would send (not UTF-8)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


@pytest.mark.parametrize("path, extra", [
    ("/.well-known/fairgate/proof/" + "A" * 54 + ".css", b"User-Agent: caf\xe9\r\n"),
    ("/portal/latin1", b"Accept-Language: \xff\r\nAccept: text/html\r\n"),
], ids=["stylesheet", "page"])
async def test_an_anonymous_client_with_header_bytes_that_are_not_utf8_is_served(gw, site, path, extra):
    site.pages["latin1"] = Page(html(10))
    answer = await raw_get(gw.url, path, extra)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


async def test_a_stale_login_cookie_on_pages_that_do_not_read_it_locks_no_address_out(start_gateway, site, clock,
                                                                                       client):
    """Help pages without a login (auth: none) and a browser still holding an expired session
    cookie: its stylesheet fetches are no failed logins for the office address behind it."""
    site.pages["help"] = Page(html(10))
    config = proof_config(site.url)
    config["routes"].insert(0, {"name": "help", "path_prefix": "/portal/help", "upstream": "app", "auth": "none",
                                "class": "portal"})
    gateway = await start_gateway(config, clock=clock)
    stale = hs_token(clock, exp=clock.time() - 3600, iat=clock.time() - 7200)
    for _ in range(25):
        async with client.get(f"{gateway.url}/portal/help", headers={"Accept": "text/html"}) as response:
            assert response.status == 200
            href = LINK.search(await response.read()).group(1).decode()
        async with client.get(gateway.url + href, headers={"Cookie": f"{COOKIE}={stale}"}) as response:
            assert response.status == 200
    async with client.get(f"{gateway.url}/api/x", headers=bearer(hs_token(clock))) as response:
        # A colleague on the same address logs in: forwarded (the test site knows no /api page).
        assert response.status not in (401, 429) and response.headers["Via"] == "1.1 fairgate", response.status


@pytest.mark.parametrize("headers", [
    {"HX-Request": "true", "HX-Boosted": "true", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors"},  # hx-boost
    {"Sec-Purpose": "prefetch", "Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate"},  # speculation rules
    {"X-Sec-Purpose": "prefetch"},  # Turbo's hover prefetch
    {"Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors"},  # a page's own fetch()
], ids=["htmx", "speculation", "turbo", "fetch"])
async def test_a_page_a_script_fetches_or_prefetches_gets_no_link_and_counts_for_nothing(gw, site, client, headers):
    site.pages["swap"] = Page(html(100))
    async with client.get(f"{gw.url}/portal/swap", headers={"Accept": "text/html", **headers}) as response:
        assert await response.read() == html(100)  # the upstream's page: no link nobody would fetch
    navigation = {"Accept": "text/html", "Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate"}
    async with client.get(f"{gw.url}/portal/swap", headers=navigation) as response:
        assert LINK.search(await response.read())  # the same page opened in the browser gets one
    assert page_metric(gw, "injected") == 1


@pytest.mark.parametrize(("name", "headers", "result"), [
    ("export", {"Content-Disposition": 'attachment; filename="tickets.html"'}, "download"),
    ("cdn-styles", {"Content-Security-Policy": "default-src 'self'; style-src https://cdn.example"}, "styles_blocked"),
    ("nonce-styles", {"Content-Security-Policy": "style-src 'nonce-abc'"}, "styles_blocked"),
], ids=["attachment", "csp-cdn", "csp-nonce"])
async def test_a_page_the_browser_would_not_load_the_link_of_is_left_alone(gw, site, client, name, headers, result):
    site.pages[name] = Page(html(10), headers={"Content-Type": "text/html", **headers})
    async with client.get(f"{gw.url}/portal/{name}") as response:
        assert await response.read() == html(10)
    assert page_metric(gw, result) == 1 and page_metric(gw, "injected") == 0


async def test_a_planted_page_drops_what_described_the_upstreams_bytes(gw, site, client):
    site.pages["ranged"] = Page(html(10), headers={"Content-Type": "text/html", "Accept-Ranges": "bytes",
                                                   "Content-Security-Policy": "default-src 'self'",
                                                   "Repr-Digest": "sha-256=:AAAA:"})
    async with client.get(f"{gw.url}/portal/ranged") as response:
        assert without_link(await response.read()) == html(10)
        assert "Accept-Ranges" not in response.headers and "Repr-Digest" not in response.headers
        assert response.headers["Content-Security-Policy"] == "default-src 'self'"


@given(st.lists(st.text(max_size=60), max_size=3))
def test_any_content_security_policy_is_read_without_an_error(policies):
    assert styles_from_self(policies) in (True, False)
