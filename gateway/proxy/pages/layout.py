"""The skeleton every refusal page shares: one small inline stylesheet, the appeal footer, a
strict Content-Security-Policy (only the page's own hashed style and script run), no caching."""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from gateway.config.enforcement import EnforcementSettings
from gateway.problems import SERVER_NAME

STYLE = ("body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}"
         "h1{font-size:1.5rem}footer{margin-top:2rem;font-size:.875rem;color:#555}code{font-size:.875rem}")


def csp_source(text: str) -> str:
    """The CSP hash source that lets exactly this inline text run."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_STYLE_SOURCE = csp_source(STYLE)


@dataclass(frozen=True, slots=True)
class Appeal:
    """Where a refused person reads the policy and appeals."""

    policy: str  # a title, or a URL
    appeal_url: str | None

    @classmethod
    def of(cls, settings: EnforcementSettings) -> Appeal:
        policy = settings.policy
        return cls(policy, settings.appeal_url or (policy if _is_web(policy) else None))

    def footer(self, request_id: str, policy_named: str | None = None) -> str:
        """The policy, the way to appeal and the request id, escaped."""
        e = html.escape
        policy = (f'<a href="{e(self.policy)}">{e(self.policy)}</a>' if _is_web(self.policy)
                  else e(self.policy))
        lines = [f"<p>Policy: {policy}{f' ({e(policy_named)})' if policy_named else ''}.</p>"]
        if self.appeal_url is not None:
            lines.append(f'<p>If this is a mistake, <a href="{e(self.appeal_url)}" rel="noopener">appeal '
                         "here</a> and quote the request id below.</p>")
        else:
            lines.append("<p>If this is a mistake, contact the service's support and quote the request id below.</p>")
        lines.append(f'<p>Request id: <code id="fairgate-request-id">{e(request_id)}</code></p>')
        return "<footer>" + "".join(lines) + "</footer>"


def document(title: str, outcome: str, body: str, script: str | None = None) -> str:
    """A whole page; `outcome` (challenge, block, reauth) is for programs reading the page (the
    evaluation harness), `body` and `script` are already safe."""
    script_tag = f"<script>{script}</script>" if script is not None else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<meta name="robots" content="noindex"><title>{html.escape(title)}</title><style>{STYLE}</style>'
            f'</head><body data-fairgate-outcome="{html.escape(outcome)}">{body}{script_tag}</body></html>')


def page_response(status: int, outcome: str, text: str, headers: Mapping[str, str],
                  script_source: str | None = None) -> web.Response:
    """`text` as the answer, with the refusal's own headers (Retry-After, X-Request-Id, ...).
    `Fairgate-Outcome` repeats the page's outcome for clients that keep headers, not bodies (a
    browser's network log once the challenge page has reloaded)."""
    scripts = script_source if script_source is not None else "'none'"
    response = web.Response(status=status, body=text.encode(), headers={
        "Server": SERVER_NAME,
        **headers,
        "Content-Security-Policy": (f"default-src 'none'; script-src {scripts}; style-src {_STYLE_SOURCE}; "
                                    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
        "Cache-Control": "no-store",
        "Vary": "Accept",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Fairgate-Outcome": outcome,
    })
    response.content_type = "text/html"
    response.charset = "utf-8"
    return response


def _is_web(text: str) -> bool:
    return text.startswith(("https://", "http://"))
