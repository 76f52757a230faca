"""Client traffic the tests send through a gateway and read back as statuses."""

from __future__ import annotations

from tests.support.tokens import bearer

HEADLESS = {"User-Agent": "Mozilla/5.0 HeadlessChrome/126.0", "Accept": "text/html", "Accept-Language": "en",
            "Sec-Fetch-Mode": "navigate"}
# A person's browser opening a page: nothing a detector holds against it on one request.
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
           "Accept": "text/html", "Accept-Language": "en", "Sec-Fetch-Mode": "navigate"}


async def statuses_at(client, url, token, count) -> list[int]:
    """`count` GETs of `url` with `token`, one after another: their statuses."""
    result = []
    for _ in range(count):
        async with client.get(url, headers=bearer(token)) as response:
            result.append(response.status)
    return result


async def statuses(client, gateway, token: str, count: int) -> list[int]:
    """`count` GETs of the gateway's /echo/x with `token`: their statuses."""
    return await statuses_at(client, f"{gateway.url}/echo/x", token, count)


async def browse_headless(client, gateway, token: dict, clock, pages: int, prefix: str = "p") -> list[int]:
    """A headless browser paging through the portal, a second apart; the detectors then catch up."""
    found = []
    for n in range(pages):
        async with client.get(f"{gateway.url}/echo/portal/{prefix}{n}", headers={**token, **HEADLESS}) as response:
            found.append(response.status)
        clock.advance(1)
    await gateway.server.state.detection.drain()
    return found
