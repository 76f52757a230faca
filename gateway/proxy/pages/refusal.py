"""The HTML page a person's browser gets for a block, a suspension or a forced re-login: what
happened, until when, and how to appeal. Same status and headers as the problem+json."""

from __future__ import annotations

import html
from collections.abc import Mapping

from aiohttp import web

from gateway.proxy.pages.layout import Appeal, document, page_response

# Refusals a person meets in a browser: slug -> (heading, outcome for programs reading the page).
HEADINGS: Mapping[str, tuple[str, str]] = {
    "automation-blocked": ("Access from this browser is paused", "block"),
    "session-blocked": ("This session is blocked", "block"),
    "suspended": ("Access is suspended", "block"),
    "reauthentication-required": ("Please sign in again", "reauth"),
}


def refusal_page(status: int, slug: str, detail: str, headers: Mapping[str, str], extra: Mapping[str, object],
                 request_id: str, appeal: Appeal) -> web.Response:
    heading, outcome = HEADINGS[slug]
    e = html.escape
    until = extra.get("until")
    body = [f"<main><h1>{e(heading)}</h1><p>{e(detail)}</p>"]
    if isinstance(until, str):
        body.append(f'<p>Until: <time datetime="{e(until)}">{e(until)}</time> (UTC).</p>')
    body.append("</main>")
    policy = extra.get("policy")
    body.append(appeal.footer(request_id, policy if isinstance(policy, str) and policy != appeal.policy else None))
    return page_response(status, outcome, document(heading, outcome, "".join(body)), headers)
