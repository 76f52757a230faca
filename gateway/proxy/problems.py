"""RFC 9457 problem details: every error the gateway itself answers with."""

from __future__ import annotations

import json
from typing import Any, Mapping

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:fairgate:problem:"


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """A problem+json response whose `type` is the stable `urn:fairgate:problem:<slug>`."""
    body: dict[str, Any] = {"type": _TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail}
    if extra:
        body.update(extra)
    response = web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers=headers,
    )
    response.content_type = PROBLEM_CONTENT_TYPE
    return response
