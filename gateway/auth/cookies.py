"""The one reader of `Cookie` request headers (RFC 6265 5.4): one named cookie's value, or the
header without that cookie.

A few lines of its own rather than aiohttp's parser (private; `request.cookies` reads only the
first Cookie header and keeps the last of duplicate names) or `http.cookies` (which drops every
cookie after a malformed one): the gateway needs exactly "name=value" pairs split on ';', and
the same split to take one cookie out of what goes upstream.
"""

from __future__ import annotations

from collections.abc import Iterable

_WHITESPACE = " \t"  # RFC 6265's optional whitespace; nothing Unicode calls space


def cookie_value(headers: Iterable[str], name: str) -> str | None:
    """The first non-empty value of the cookie called exactly `name`, without surrounding quotes."""
    for header in headers:
        for pair in header.split(";"):
            key, sep, value = pair.partition("=")
            if not sep or key.strip(_WHITESPACE) != name:
                continue
            value = value.strip(_WHITESPACE)
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value:
                return value
    return None


def without_cookie(headers: Iterable[str], name: str) -> str | None:
    """Every cookie pair of `headers` but those called `name`, as one Cookie value; None if none is left."""
    kept = [pair.strip(_WHITESPACE) for header in headers for pair in header.split(";")
            if pair.strip(_WHITESPACE) and pair.partition("=")[0].strip(_WHITESPACE) != name]
    return "; ".join(kept) or None
