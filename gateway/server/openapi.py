"""The admin API described as OpenAPI 3.1, served at /admin/openapi.json. A test checks that
every /admin route the listener serves is described here, so the two cannot drift."""

from __future__ import annotations

from typing import Any

_PROBLEM = {"description": "problem+json", "content": {"application/problem+json": {"schema": {"type": "object"}}}}
_JSON = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
_BODY = {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
_CUSTOMER = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _query(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in names]


def _operation(summary: str, *, body: bool = False, params: list[dict[str, Any]] | None = None, created: bool = False,
               conflict: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"201" if created else "200": _JSON, "401": _PROBLEM}
    if body or params:
        responses["400"] = _PROBLEM
    for status in (conflict,) if isinstance(conflict, str) else conflict or ():
        responses[status] = _PROBLEM
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        operation["requestBody"] = _BODY
    if params:
        operation["parameters"] = params
    return operation


PATHS: dict[str, dict[str, Any]] = {
    "/admin/customers": {"get": _operation("Customers with plan and standing")},
    "/admin/customers/{id}": {"get": _operation("One customer: standings, findings, events, usage",
                                                params=[_CUSTOMER])},
    "/admin/customers/{id}/reinstate": {"post": _operation("Clear the customer's and its users' standings now",
                                                           body=True, params=[_CUSTOMER], conflict="503")},
    "/admin/customers/{id}/suspend": {"post": _operation("Suspend now: {reason, for, by}", body=True,
                                                         params=[_CUSTOMER], created=True, conflict="503")},
    "/admin/customers/{id}/exceptions": {"post": _operation(
        "An exception until a date: {limit, rate|burst|max|quota|mode} or {exempt}; until|for, reason, by",
        body=True, params=[_CUSTOMER], created=True, conflict="503")},
    "/admin/exceptions": {"get": _operation("Exceptions and allow-list entries in force", params=_query("customer"))},
    "/admin/exceptions/{grant}": {"delete": _operation(
        "End an exception or allow-list entry now, fleet-wide: optional {by, note}", body=True,
        params=[{"name": "grant", "in": "path", "required": True, "schema": {"type": "string"}}],
        conflict=("404", "503"))},
    "/admin/allow-list": {"post": _operation("Allow-list {customer, user} or {user_agent} until a date; lifts "
                                             "decisions already made", body=True, created=True, conflict="503")},
    "/admin/events": {"get": _operation("Recent audit events", params=_query("customer", "kind", "since"))},
    "/admin/usage": {"get": _operation("Usage per customer in a month against its plan's quotas, estimated fees; "
                                       "format=fees: the invoicing CSV", params=_query("month", "customer", "format"))},
    "/admin/findings": {"get": _operation("Recent detector findings",
                                          params=_query("detector", "subject", "customer", "since"))},
    "/admin/revocations": {"post": _operation("Revoke a token {issuer, jti[, exp]} or a user's tokens {issuer, user}",
                                              body=True, created=True, conflict="503")},
    "/admin/reload": {"post": _operation("Reload the config file", conflict="422")},
    "/admin/config": {"get": _operation("The effective config, secrets redacted")},
    "/admin/openapi.json": {"get": _operation("This document")},
}


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "fairgate admin API", "version": version,
                 "description": "On the admin listener; every /admin path needs `Authorization: Bearer "
                                "$FAIRGATE_ADMIN_TOKEN`. Errors are application/problem+json."},
        "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}},
        "security": [{"admin": []}],
        "paths": PATHS,
    }
