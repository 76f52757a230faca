"""Whether a request is a person's browser opening a page (and so gets an HTML refusal) or a
program (which keeps problem+json)."""

from __future__ import annotations

from collections.abc import Mapping

_HTML = frozenset({"text/html", "application/xhtml+xml"})
_JSON = frozenset({"application/json", "application/problem+json"})
# What a browser fetches a page into; a script's fetch() says "empty" and wants data.
_DOCUMENTS = frozenset({"document", "iframe", "frame"})
_MAX_ACCEPT = 2048  # longer Accept headers are read only this far


def wants_html(headers: Mapping[str, str]) -> bool:
    """A navigation: Accept prefers HTML over JSON (`*/*` alone is a program's), and the
    Fetch Metadata, when sent, names a document."""
    dest = headers.get("Sec-Fetch-Dest")
    if dest is not None and dest.strip().lower() not in _DOCUMENTS:
        return False
    accept = headers.get("Accept")
    if not accept:
        return dest is not None or headers.get("Sec-Fetch-Mode", "").strip().lower() == "navigate"
    html, json = preference(accept)
    return html > 0 and (html > json or (html == json and dest is not None))


def preference(accept: str) -> tuple[float, float]:
    """The highest quality an Accept header gives HTML and JSON; wildcards count for neither."""
    html = json = 0.0
    for item in accept[:_MAX_ACCEPT].split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        if media not in _HTML and media not in _JSON:
            continue
        quality = _quality(params)
        if media in _HTML:
            html = max(html, quality)
        else:
            json = max(json, quality)
    return html, json


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value.strip())
            except ValueError:
                return 0.0  # an unreadable weight: not a preference to honour
            return quality if 0.0 <= quality <= 1.0 else 0.0
    return 1.0
