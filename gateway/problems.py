"""RFC 9457 problem details: every error the gateway itself answers with."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
# The Server header of answers the gateway makes itself: no product or version to fingerprint.
SERVER_NAME = "fairgate"
_TYPE_PREFIX = "urn:fairgate:problem:"
# Problem types the IETF httpapi ratelimit-headers draft registers, used where they fit.
IETF_PROBLEM_TYPES = {
    "quota-exceeded": "https://iana.org/assignments/http-problem-types#quota-exceeded",
    "temporary-reduced-capacity": "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """A refusal decided away from the handler (auth, detection); the handler answers it with
    the request id and counts it like every other rejection."""

    status: int
    slug: str
    title: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    type_uri: str | None = None,
) -> web.Response:
    """A problem+json response whose `type` is `type_uri` or the stable `urn:fairgate:problem:<slug>`."""
    response = web.Response(
        status=status,
        body=problem_body(status, slug, title, detail, extra=extra, type_uri=type_uri),
        headers={"Server": SERVER_NAME, **(headers or {})},
    )
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def problem_body(status: int, slug: str, title: str, detail: str, *, extra: Mapping[str, Any] | None = None,
                 type_uri: str | None = None) -> bytes:
    """The problem+json document itself (also for answers written straight to a transport)."""
    body: dict[str, Any] = {"type": type_uri or _TYPE_PREFIX + slug, "title": title, "status": status,
                            "detail": detail}
    if extra:
        body.update(extra)
    return json.dumps(body).encode()


def answer(problem: Problem) -> web.Response:
    """A Problem decided elsewhere as its problem+json response (the admin API; the proxy adds the request id)."""
    return problem_response(problem.status, problem.slug, problem.title, problem.detail,
                            headers=problem.headers, extra=problem.extra)
