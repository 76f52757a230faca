"""The challenge interstitial: a page whose one script solves the proof-of-work, sets the pass
cookie and reloads, so a real browser passes by itself. Same status (403) as the problem+json
answer to the same request: a refusal, counted and logged as one, that no cache or crawler
takes for the page's content."""

from __future__ import annotations

import html
from collections.abc import Mapping
from importlib.resources import files

from aiohttp import web

from gateway.proxy.challenge import Issued
from gateway.proxy.pages.layout import Appeal, csp_source, document, page_response

SCRIPT = files(__package__).joinpath("challenge.js").read_text()
_SCRIPT_SOURCE = csp_source(SCRIPT)


def challenge_page(issued: Issued, cookie: str, secure: bool, detail: str, headers: Mapping[str, str],
                   request_id: str, appeal: Appeal, policy: str | None) -> web.Response:
    e = html.escape
    body = (f'<main id="fairgate-challenge" data-challenge="{e(issued.challenge)}" '
            f'data-difficulty="{issued.difficulty}" data-cookie="{e(cookie)}" data-max-age="{issued.max_age}" '
            f'data-secure="{1 if secure else 0}">'
            "<h1>Checking that this is a browser</h1>"
            f'<p id="fairgate-state">This takes a moment; the page loads by itself.</p>'
            f"<noscript><p>{e(detail)}</p><p>This check needs JavaScript and cookies: enable them and reload "
            "the page. Programs should use the API under their plan instead.</p></noscript></main>"
            + appeal.footer(request_id, policy if policy != appeal.policy else None))
    return page_response(403, "challenge", document("Checking your browser", "challenge", body, SCRIPT), headers,
                         _SCRIPT_SOURCE)
