"""The admin listener: health, readiness, metrics, and the token-protected admin API."""

from __future__ import annotations

import hmac
import os
import re
import signal
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from pydantic import BaseModel, SecretStr

from gateway import __version__
from gateway.auth.bearer import bearer_token
from gateway.auth.revocations import revocation_change
from gateway.config import GatewayConfig
from gateway.metrics import CONTENT_TYPE_LATEST, Metrics
from gateway.problems import SERVER_NAME, answer, problem_response
from gateway.server.admin_requests import bad_request, json_object, since_param
from gateway.server.console import add_console_routes
from gateway.server.customers_api import add_customer_routes
from gateway.server.grants_api import add_grant_routes
from gateway.server.openapi import document as openapi_document
from gateway.server.reloader import RuntimeHolder

ADMIN_TOKEN_ENV = "FAIRGATE_ADMIN_TOKEN"
SUPERVISOR_ENV = "FAIRGATE_SUPERVISOR_PID"

Readiness = Callable[[], str | None]  # None when ready, else the reason it is not


def build_admin_app(
    metrics: Metrics, readiness: Readiness, runtimes: RuntimeHolder, admin_token: str | None
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        # The pid tells which worker answered when --workers shares the port.
        return web.json_response({"status": "ok", "pid": os.getpid()})

    async def readyz(_: web.Request) -> web.Response:
        reason = readiness()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    async def metrics_endpoint(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def reload_endpoint(_: web.Request) -> web.Response:
        supervisor = os.environ.get(SUPERVISOR_ENV)
        if supervisor:
            # Under --workers every process must reload, so the supervisor fans the signal out.
            os.kill(int(supervisor), signal.SIGHUP)
            return web.json_response({"status": "reload signalled to all workers"}, status=202)
        result = await runtimes.reload()
        if result.ok:
            return web.json_response({"status": "reloaded"})
        return problem_response(
            422, "config-rejected", "Config Rejected",
            "The new config is invalid; the previous config stays in force.",
            extra={"errors": list(result.errors)},
        )

    async def revoke(request: web.Request) -> web.Response:
        """{"issuer": NAME, "jti": ID[, "exp": EXP]} revokes one token; {"issuer": NAME, "user": ID}
        every token of that user issued until now."""
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        issuer_name, token_id, user = body.get("issuer"), body.get("jti"), body.get("user")
        authenticator = runtimes.current.authenticator
        issuer = authenticator.verifier.issuer_named(issuer_name) if isinstance(issuer_name, str) else None
        if issuer is None:
            return bad_request(f"Unknown issuer {issuer_name!r}.")
        settings = issuer.settings
        revocations, fleet = runtimes.state.revocations, runtimes.state.fleet
        now = runtimes.state.clock.time()
        if isinstance(token_id, str) and token_id and user is None:
            # Kept as long as the token can live: its `exp` when given, else the issuer's maximum.
            longest = now + settings.max_lifetime + settings.leeway
            exp = body.get("exp")
            if exp is not None and (isinstance(exp, bool) or not isinstance(exp, (int, float))):
                return bad_request("'exp' must be a number (the token's expiry, seconds since the epoch).")
            expires_at = min(float(exp) + settings.leeway, longest) if exp is not None else longest
            entry = revocations.revoke_token(settings.name, token_id, expires_at)
            failed = await fleet.publish(revocation_change(entry))
            if failed is not None:
                return answer(failed)
            return web.json_response(
                {"revoked": {"issuer": settings.name, "jti": token_id, "until": expires_at}}, status=201
            )
        if token_id is not None or not isinstance(user, str):
            return bad_request("Give exactly one of 'jti' or 'user', as a string.")
        entry = revocations.revoke_user(settings.name, user, settings.max_lifetime + settings.leeway)
        failed = await fleet.publish(revocation_change(entry))
        if failed is not None:
            return answer(failed)
        return web.json_response(
            {"revoked": {"issuer": settings.name, "user": user, "issued_before": entry["before"]}}, status=201
        )

    async def findings(request: web.Request) -> web.Response:
        """Recent findings, newest last; filters: detector, subject, customer, since (epoch seconds)."""
        query = request.query
        since = since_param(request)
        if isinstance(since, web.Response):
            return since
        found = runtimes.state.findings.recent(
            detector=query.get("detector"), subject=query.get("subject"), customer=query.get("customer"), since=since,
        )
        return web.json_response({"findings": [finding.as_json() for finding in found]})

    async def effective_config(_: web.Request) -> web.Response:
        return web.json_response(redacted(runtimes.current.config))

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(openapi_document(__version__))

    app = web.Application(middlewares=[_require_token(admin_token)])
    app.on_response_prepare.append(_neutral_server_header)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_post("/admin/reload", reload_endpoint)
    app.router.add_post("/admin/revocations", revoke)
    app.router.add_get("/admin/findings", findings)
    app.router.add_get("/admin/config", effective_config)
    app.router.add_get("/admin/openapi.json", openapi)
    add_customer_routes(app, runtimes)
    add_grant_routes(app, runtimes, origin=f"{os.getpid()}-{os.urandom(2).hex()}")
    add_console_routes(app)
    return app


JsonValue = dict[str, "JsonValue"] | list["JsonValue"] | str | int | float | bool | None


def redacted(config: GatewayConfig) -> dict[str, JsonValue]:
    """The config as JSON values with every secret masked: SecretStr fields, and passwords in URLs."""
    return _cleaned_model(config)


def _cleaned_model(model: BaseModel) -> dict[str, JsonValue]:
    return _cleaned_mapping(model.model_dump(by_alias=True, warnings=False))


def _cleaned_mapping(mapping: Mapping[Any, object]) -> dict[str, JsonValue]:
    return {str(key): _cleaned(item) for key, item in mapping.items()}


def _cleaned(value: object) -> JsonValue:
    if isinstance(value, BaseModel):  # e.g. inside a frozen mapping, which pydantic leaves as is
        return _cleaned_model(value)
    if isinstance(value, Mapping):
        return _cleaned_mapping(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_cleaned(item) for item in value]
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)  # paths, dates, zones


_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")


async def _neutral_server_header(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


def _require_token(token: str | None) -> Middleware:
    expected = token.encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/admin/"):
            return await handler(request)
        if expected is None:
            return problem_response(
                503, "admin-disabled", "Admin API Disabled", f"Set {ADMIN_TOKEN_ENV} to enable the admin API."
            )
        presented = (bearer_token(request.headers.get("Authorization")) or "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(presented, expected):
            return problem_response(
                401, "admin-unauthorized", "Unauthorized", "A valid admin bearer token is required.",
                headers={"WWW-Authenticate": 'Bearer realm="fairgate-admin"'},
            )
        return await handler(request)

    return middleware
