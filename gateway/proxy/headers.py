"""Header rules of a proxy: hop-by-hop removal (RFC 9110 7.6.1) and forwarding headers.

Both directions are handled in one pass over the raw header list: this runs on every request.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterable

from multidict import CIMultiDict

# Hop-by-hop fields RFC 9110 7.6.1 names, plus the legacy ones (RFC 2616 13.5.1) proxies in
# the wild still send. Headers named by `Connection` are removed as well, per message.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
VIA_TOKEN = b"1.1 fairgate"

# Set by the gateway on the way upstream (so a client's copy is never passed on as is), and
# framing that is recomputed for the upstream leg (Expect is answered by the gateway itself).
_GATEWAY_SET = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"via",
     b"content-length", b"expect"}
)
_REQUEST_DROP = HOP_BY_HOP | _GATEWAY_SET
_RESPONSE_DROP = HOP_BY_HOP | {b"content-length"}
# Connection values that name nothing beyond the fields dropped anyway.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})

# fullmatch: "$" would also match before a trailing newline ("0\n" passed as an id).
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# Request ids only need to be unique, not secret: a random per-process prefix and a counter
# cost no system call.
_ID_PREFIX = f"{random.SystemRandom().getrandbits(64):016x}"
_ID_COUNTER = itertools.count(1)


def request_id_or_new(value: str | None) -> str:
    """Keep a well-formed client request id; otherwise mint one."""
    if value is not None and _REQUEST_ID_RE.fullmatch(value):
        return value
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """Lower-cased field names listed in Connection header values."""
    return frozenset(token.strip().lower() for value in values for token in value.split(b",") if token.strip())


class ForwardedFrom:
    """What the client (or a trusted proxy in front of it) said in the forwarding headers."""

    __slots__ = ("forwarded_for", "proto", "host", "via")

    def __init__(self) -> None:
        self.forwarded_for: bytes | None = None
        self.proto: bytes | None = None
        self.host: bytes | None = None
        self.via: bytes | None = None


def upstream_header_lines(
    raw_headers: tuple[tuple[bytes, bytes], ...],
    *,
    replace_host: bytes | None,
    strip: frozenset[bytes] = frozenset(),
) -> tuple[list[bytes], ForwardedFrom, bytes | None]:
    """The client's header lines for upstream, minus hop-by-hop and gateway-set fields.

    Returns the lines, the forwarding headers found (for appending), and the client's Host.
    `replace_host` drops the client's Host (the caller adds its own); `strip` names more
    fields to remove (lower-case).
    """
    lines: list[bytes] = []
    found = ForwardedFrom()
    client_host = None
    named: list[bytes] | None = None
    special = _special_names(strip)
    for name, value in raw_headers:
        lower = name.lower()
        if lower in special:  # one set lookup decides for the headers passed on as they are
            if lower == b"host" and lower not in strip:
                client_host = value
                if replace_host is None:
                    lines.append(name + b": " + value + b"\r\n")
            elif lower == b"x-forwarded-for":
                found.forwarded_for = value if found.forwarded_for is None else found.forwarded_for + b", " + value
            elif lower == b"via":
                found.via = value if found.via is None else found.via + b", " + value
            elif lower == b"x-forwarded-proto":
                found.proto = value
            elif lower == b"x-forwarded-host":
                found.host = value
            elif lower == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                (named := named or []).append(value)
            continue
        lines.append(name + b": " + value + b"\r\n")
    if named:
        drop = connection_tokens(named)
        lines = [line for line in lines if line.split(b":", 1)[0].lower() not in drop]
    return lines, found, client_host


# The request's names that need more than passing on, per route's `strip` (a handful of sets).
_SPECIAL: dict[frozenset[bytes], frozenset[bytes]] = {}


def _special_names(strip: frozenset[bytes]) -> frozenset[bytes]:
    special = _SPECIAL.get(strip)
    if special is None:
        special = _REQUEST_DROP | strip | {b"host"}
        if len(_SPECIAL) < 64:
            _SPECIAL[strip] = special
    return special


# Response header names passed on, decoded once: an upstream sends the same few names in every
# answer. Bounded, so an upstream inventing names cannot grow it.
_PASSED_NAMES: dict[bytes, str] = {}
_MAX_PASSED_NAMES = 512


def client_response_headers(raw_headers: list[tuple[bytes, bytes]]) -> tuple[CIMultiDict[str], int | None]:
    """Upstream response headers for the client, minus hop-by-hop; also returns Content-Length."""
    headers: CIMultiDict[str] = CIMultiDict()
    content_length = None
    named: list[bytes] | None = None
    passed = _PASSED_NAMES
    for name, value in raw_headers:
        # aiohttp writes header text as UTF-8, so UTF-8 round-trips exactly.
        text = passed.get(name)
        if text is not None:
            headers.add(text, value.decode("utf-8", "surrogateescape"))
            continue
        lower = name.lower()
        if lower in _RESPONSE_DROP:
            if lower == b"content-length":
                content_length = int(value)  # llhttp has already rejected malformed lengths
            elif lower == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                (named := named or []).append(value)
            continue
        text = name.decode("utf-8", "surrogateescape")
        if len(passed) < _MAX_PASSED_NAMES:
            passed[name] = text
        headers.add(text, value.decode("utf-8", "surrogateescape"))
    if named:
        for token in connection_tokens(named):
            headers.popall(token.decode("latin-1"), None)
    return headers, content_length


# What the pass over a buffered answer's headers does with each name (names are cached raw, as
# the upstream spells them, so the lower-casing and set lookups happen once per name).
_PASS, _DROP, _LENGTH, _CONNECTION, _VIA, _DATE, _SERVER, _TYPE = range(8)
_KIND_BY_LOWER = {b"content-length": _LENGTH, b"connection": _CONNECTION, b"via": _VIA, b"date": _DATE,
                  b"server": _SERVER, b"content-type": _TYPE, b"x-request-id": _DROP}
_KINDS: dict[bytes, tuple[int, bytes]] = {}


def _kind(name: bytes) -> tuple[int, bytes]:
    lower = name.lower()
    kind = (_KIND_BY_LOWER.get(lower, _DROP if lower in _RESPONSE_DROP else _PASS), lower)
    if len(_KINDS) < _MAX_PASSED_NAMES:
        _KINDS[name] = kind
    return kind


class AnswerLines:
    """A buffered upstream answer's header lines for the client, as the upstream sent their bytes.

    Hop-by-hop fields, those its Connection names, its Content-Length (reframed) and its
    X-Request-Id (the gateway's replaces it) are left out; its Via values are held for
    appending. The flags say which fields the gateway must add when the upstream sent none.
    """

    __slots__ = ("lines", "names", "content_length", "via", "has_date", "has_server", "has_type")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.names: list[bytes] = []  # lower-case, one per line
        self.content_length: int | None = None
        self.via: bytes | None = None
        self.has_date = False
        self.has_server = False
        self.has_type = False

    def drop(self, names: frozenset[bytes] | set[bytes]) -> None:
        """Leave out the lines of these (lower-case) names."""
        kept = [(line, name) for line, name in zip(self.lines, self.names, strict=True) if name not in names]
        self.lines = [line for line, _ in kept]
        self.names = [name for _, name in kept]
        if b"via" in names:
            self.via = None
        self.has_date = self.has_date and b"date" not in names
        self.has_server = self.has_server and b"server" not in names
        self.has_type = self.has_type and b"content-type" not in names


def client_answer_lines(raw_headers: list[tuple[bytes, bytes]]) -> AnswerLines:
    """The same rules as `client_response_headers`, without decoding: for answers written whole."""
    answer = AnswerLines()
    lines, names = answer.lines, answer.names
    kinds = _KINDS
    named: list[bytes] | None = None
    for name, value in raw_headers:
        kind, lower = kinds.get(name) or _kind(name)
        if kind > _VIA:  # passed on, and noted
            if kind == _DATE:
                answer.has_date = True
            elif kind == _SERVER:
                answer.has_server = True
            else:
                answer.has_type = True
        elif kind != _PASS:
            if kind == _LENGTH:
                answer.content_length = int(value)  # llhttp has already rejected malformed lengths
            elif kind == _VIA:
                answer.via = value if answer.via is None else answer.via + b", " + value
            elif kind == _CONNECTION and value.lower() not in _PLAIN_CONNECTION:
                (named := named or []).append(value)
            continue
        lines.append(name + b": " + value + b"\r\n")
        names.append(lower)
    if named:
        answer.drop(connection_tokens(named))
    return answer
