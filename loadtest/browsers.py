"""What real browsers send: user agents, and the headers of a page load and of its assets.

Shared by the locust suite and the detection simulator, so both look like the same people.
"""

from __future__ import annotations

import re

BROWSER_UA = {
    "firefox": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "chrome": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0.0.0 Safari/537.36",
    "safari": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Version/17.5 Safari/605.1.15",
    "edge": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
}
HEADLESS_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0.0.0 "
               "Safari/537.36")
PAGE_HEADERS = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                "Accept-Language": "en-GB,en;q=0.9", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
# The portal page's stylesheet and script, as the browser fetches them right after the page.
PAGE_ASSETS = (("/portal/static/app.css", "style", "text/css,*/*;q=0.1"), ("/portal/static/app.js", "script", "*/*"))


def asset_headers(agent: str, dest: str, accept: str = "*/*") -> dict[str, str]:
    return {"User-Agent": agent, "Accept": accept, "Accept-Language": PAGE_HEADERS["Accept-Language"],
            "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": dest}


_STYLESHEET = re.compile(r'<link rel="stylesheet" href="(/[^"]+)"')


def linked_stylesheets(html: str) -> list[str]:
    """Stylesheets a page links besides its fixed assets (the gateway's per-page browser-proof
    link among them): a browser fetches them with the page, whatever its cache holds."""
    fixed = {asset for asset, _, _ in PAGE_ASSETS}
    return [href for href in _STYLESHEET.findall(html) if href not in fixed]
