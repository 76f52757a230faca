"""An HTTP client that behaves like a browser: it keeps cookies, parses each page for the
stylesheets, scripts and images it would fetch, keeps them in a cache it honours
(Cache-Control max-age, or the heuristic 10% of the age since Last-Modified that browsers use),
revalidates stale entries with If-None-Match / If-Modified-Since, and sends from the source
address of whatever network it is on now (`move_to`)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import aiohttp

from loadtest.browsers import PAGE_HEADERS, asset_headers
from loadtest.eval.traffic import Log

_DESTS = {"link": "style", "script": "script", "img": "image"}


class _Subresources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []  # (url, Sec-Fetch-Dest)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "link" and "stylesheet" in (values.get("rel") or "") and values.get("href"):
            self.found.append((values["href"] or "", "style"))
        elif tag in ("script", "img") and values.get("src"):
            self.found.append((values["src"] or "", _DESTS[tag]))


def subresources(page: str) -> list[tuple[str, str]]:
    parser = _Subresources()
    parser.feed(page)
    return parser.found


@dataclass
class Cached:
    fresh_until: float
    etag: str | None
    last_modified: str | None


def freshness(headers: Mapping[str, str], now: float) -> float:
    """Until when a response may be reused without asking (RFC 9111 4.2, with the heuristic)."""
    control = headers.get("Cache-Control", "")
    if "no-store" in control or "no-cache" in control:
        return now
    for part in control.split(","):
        name, _, value = part.strip().partition("=")
        if name == "max-age" and value.isdigit():
            return now + int(value)
    modified = headers.get("Last-Modified")
    if modified:
        try:
            age = now - email.utils.parsedate_to_datetime(modified).timestamp()
        except (TypeError, ValueError):
            return now
        return now + max(0.0, age) * 0.1
    return now


class HttpBrowser:
    """One browser profile (cookies, cache, user agent) of one person; `log` records every request."""

    def __init__(self, base_url: str, agent: str, log: Log, name: str, address: str, token: str | None = None,
                 extra_headers: dict[str, str] | None = None, fetch_assets: bool = True,
                 portal_header: bool = True, assume_fresh: float | None = None) -> None:
        self.base_url, self.agent, self.log, self.name = base_url, agent, log, name
        self.token = token  # the bearer token API calls (and, with portal_header, page loads) carry
        # Today's gateway reads a portal login only from Authorization; a cookie login sends none.
        self.portal_header = portal_header
        # How long a cached answer without max-age stays fresh. None: the RFC 9111 heuristic, which
        # on the demo depends on the checkout's file times (it sends Last-Modified only); a number
        # models the long max-age vendors give static assets, so a warm cache really stays warm.
        self.assume_fresh = assume_fresh
        self.extra = extra_headers or {}
        self.fetch_assets = fetch_assets
        self.cache: dict[str, Cached] = {}
        self.jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP host, as a browser keeps them
        self.address = address
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(self.address, 0), limit=6),
                cookie_jar=self.jar, timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def move_to(self, address: str) -> None:
        """A new network: new connections from a new address; cookies and cache stay."""
        await self.close()
        self.address = address

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def request(self, path: str, headers: dict[str, str], method: str = "GET") -> tuple[int, str, bytes]:
        session = self._open()
        url = urljoin(self.base_url + "/", path.lstrip("/")) if not path.startswith("http") else path
        target = urlsplit(url).path + (f"?{urlsplit(url).query}" if urlsplit(url).query else "")
        try:
            async with session.request(method, url, headers={**self.extra, **headers}, allow_redirects=False) as answer:
                body = await answer.read()
                status, content_type = answer.status, answer.headers.get("Content-Type", "")
                if status == 200 and method == "GET":
                    self._store(target, answer.headers)
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.log.error(self.name, method, target)
            return 0, "", b""
        self.log.add(self.name, method, target, status, content_type, body)
        return status, content_type, body

    def _store(self, target: str, headers: Mapping[str, str]) -> None:
        if "ETag" in headers or "Last-Modified" in headers or "Cache-Control" in headers:
            now = time.time()
            fresh = freshness(headers, now)
            if self.assume_fresh is not None and "max-age" not in headers.get("Cache-Control", ""):
                fresh = now + self.assume_fresh
            self.cache[target] = Cached(fresh, headers.get("ETag"), headers.get("Last-Modified"))

    async def page(self, path: str) -> int:
        """Navigate to a portal page, then fetch what it links to (from the cache when fresh)."""
        status, content_type, body = await self.request(
            path, {**PAGE_HEADERS, "User-Agent": self.agent, **(self.auth() if self.portal_header else {})})
        if self.fetch_assets and status == 200 and "html" in content_type:
            for url, dest in subresources(body.decode(errors="replace")):
                await self.asset(url, dest)
        return status

    async def asset(self, url: str, dest: str) -> None:
        entry = self.cache.get(url)
        if entry is not None and entry.fresh_until > time.time():
            return  # served from the browser's cache: the gateway never sees it
        headers = asset_headers(self.agent, dest, "text/css,*/*;q=0.1" if dest == "style" else "*/*")
        if self.portal_header:
            # The login goes with every same-origin request, as a browser's session cookie does:
            # the header stands in for that cookie on page loads, so it must on subresources too.
            headers.update(self.auth())
        if entry is not None and entry.etag:
            headers["If-None-Match"] = entry.etag
        if entry is not None and entry.last_modified:
            headers["If-Modified-Since"] = entry.last_modified
        await self.request(url, headers)

    async def xhr(self, path: str) -> int:
        """What a single-page app's script sends to the API: JSON, the page's token, same-origin fetch."""
        status, _, _ = await self.request(path, {
            "User-Agent": self.agent, "Accept": "application/json", "Accept-Language": PAGE_HEADERS["Accept-Language"],
            "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Site": "same-origin",
            **self.auth()})
        return status

    async def warm_from(self, origin: str, pages: list[str]) -> None:
        """Fill the cache as yesterday's visit did, straight from the product (the gateway never saw it)."""
        async with aiohttp.ClientSession() as direct:
            for page in pages:
                async with direct.get(origin + page) as answer:
                    html = (await answer.read()).decode(errors="replace")
                for url, _ in subresources(html):
                    async with direct.get(origin + url) as answer:
                        await answer.read()
                        if answer.status == 200:
                            self._store(url, answer.headers)
