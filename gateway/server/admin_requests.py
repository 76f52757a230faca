"""What admin endpoints need from a request: its JSON object or a `since` filter, or a 400
saying why not."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.problems import problem_response


async def json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object (an empty body is an empty object), or a 400 problem."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return bad_request("The body must be a JSON object.")
    return body


def actor_and_note(body: dict[str, Any]) -> tuple[str, str | None] | web.Response:
    """Who acts (`by`, default "admin") and an optional `note` of an admin action, or a 400 problem."""
    by, note = body.get("by", "admin"), body.get("note")
    if not isinstance(by, str) or (note is not None and not isinstance(note, str)):
        return bad_request("'by' and 'note' must be strings.")
    return by, note


def actor_and_reason(body: dict[str, Any], why: str) -> tuple[str, str] | web.Response:
    """Who acts and the `reason` an admin action must give (`why` says what it is for), or a 400 problem."""
    by, reason = body.get("by", "admin"), body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        return bad_request(f"'reason' is required: {why}.")
    if not isinstance(by, str):
        return bad_request("'by' must be a string.")
    return by, reason


def bad_request(detail: str) -> web.Response:
    return problem_response(400, "bad-request", "Bad Request", detail)


def since_param(request: web.Request) -> float | web.Response | None:
    """The `since` query filter (epoch seconds), None when absent, or a 400 problem."""
    if "since" not in request.query:
        return None
    try:
        return float(request.query["since"])
    except ValueError:
        return bad_request("since: expected epoch seconds, e.g. 1795000000")
