"""Request paths the gateway routes exactly as any upstream would resolve them, or refuses.

The gateway picks a route (and so whether a login is needed) by a plain prefix match on the
path as sent; the upstream resolves the same bytes its own way. Where common upstreams differ
from the prefix match, the path is ambiguous and refused before routing:

- `.` and `..` segments, also behind path parameters (`/..;/`, Tomcat and Spring drop
  `;params`) or with encoded parameters (`..%3b`);
- percent-encoded `/`, `\\` and controls, and double encoding of those or of unreserved
  characters (`%252e`): upstreams decode them once, twice or not at all;
- raw backslashes (IIS reads `\\` as `/`), empty segments (`//` collapses), malformed `%`
  escapes (IIS reads `%u002e` as `.`), and controls, spaces or non-ASCII characters.

A path that passes may still carry path parameters and percent-encoded characters, unreserved
ones included (`%7E` for `~` is what Java's URLEncoder and older Pythons send, RFC 3986 6.2.2.2
calls it the same path); `routing_form` is what an upstream that decodes and drops parameters
would see, and the handler checks that it picks the same route (`/%61pi/` is refused there).
"""

from __future__ import annotations

import re
import string
from urllib.parse import unquote

# Characters that need no second look: unreserved, sub-delims other than ';', ':', '@', '/'.
_PLAIN = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
_HEX = frozenset(string.hexdigits)
_UNRESERVED = frozenset(map(ord, string.ascii_letters + string.digits + "-._~"))
# Bytes no %XX may stand for: they are read differently by different upstreams.
_NO_ENCODED = frozenset({ord("/"), ord("\\")}) | frozenset(range(0x20)) | {0x7F}
# Nor may a %25XX stand for these: decoded twice, they become one of the above or plain text.
_NO_DOUBLE_ENCODED = _NO_ENCODED | _UNRESERVED
_DOTS = (".", "..")
_SLASHES = re.compile(r"/{2,}")


def ambiguity(path: str) -> str | None:
    """Why upstreams could resolve `path` differently from a prefix match; None if they cannot."""
    if not path.startswith("/"):
        return "it is not an absolute path"
    if _PLAIN.fullmatch(path):
        if "//" in path:
            return "it has an empty segment ('//')"
        if "/." in path and any(segment in _DOTS for segment in path.split("/")):
            return "it has a '.' or '..' segment"
        return None
    if not path.isascii() or not path.isprintable() or " " in path or "#" in path:
        return "it has spaces, controls or characters that are not ASCII"
    if "\\" in path:
        return "it has a backslash"
    reason = _encoding_problem(path)
    if reason is not None:
        return reason
    segments = path.split("/")
    if "" in segments[1:-1]:
        return "it has an empty segment ('//')"
    for segment in segments:
        if unquote(segment).partition(";")[0] in _DOTS:
            return "it has a '.' or '..' segment (maybe behind ';' parameters)"
    return None


def routing_form(path: str) -> str:
    """The path as an upstream that decodes escapes, drops `;params` and merges slashes sees it."""
    if "%" not in path and ";" not in path:
        return path
    return _SLASHES.sub("/", "/".join(unquote(segment).partition(";")[0] for segment in path.split("/")))


def _encoding_problem(path: str) -> str | None:
    start = path.find("%")
    while start != -1:
        pair = path[start + 1:start + 3]
        if len(pair) != 2 or not _HEX.issuperset(pair):
            return "it has a malformed percent-escape"
        value = int(pair, 16)
        if value in _NO_ENCODED:
            return "it percent-encodes '/', '\\' or a control"
        if value == 0x25:  # "%25XX": decoded twice, it is one of the above
            inner = path[start + 3:start + 5]
            if len(inner) == 2 and _HEX.issuperset(inner) and int(inner, 16) in _NO_DOUBLE_ENCODED:
                return "it double-encodes '/', '\\', '.', a control or an unreserved character"
        start = path.find("%", start + 3)
    return None
