"""Admin API for exceptions by agreement and the allow-list: raise a customer's limit, exempt it
from a detector or the ladder, allow-list a user or an integration's user agent, each until a
date; an allow-list entry also lifts the decisions already made about whom it allows."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from gateway.config.limits import OVERRIDE_NUMBERS, Override
from gateway.config.units import parse_duration
from gateway.fleet.grants import ALLOW_AGENT, ALLOW_USER, EXEMPT, EXEMPTABLE, OVERRIDE, Grant
from gateway.problems import answer, problem_response
from gateway.server.admin_requests import actor_and_note, actor_and_reason, bad_request, json_object
from gateway.server.reloader import RuntimeHolder


def add_grant_routes(app: web.Application, runtimes: RuntimeHolder, origin: str) -> None:
    state = runtimes.state

    def until_of(body: dict[str, Any], now: float) -> float | str:
        """The grant's end from `until` (a date or ISO datetime) or `for` (a duration); or a problem text."""
        if ("until" in body) == ("for" in body):
            return "give exactly one of 'until' (a date or ISO datetime) or 'for' (a duration such as '30d')"
        if "for" in body:
            try:
                return now + parse_duration(body["for"])
            except ValueError as exc:
                return f"for: {exc}"
        zone = runtimes.current.limiter.book.zone if runtimes.current.limiter else dt.UTC
        try:
            moment = dt.datetime.fromisoformat(str(body["until"]))
        except ValueError:
            return f"until: expected a date or ISO datetime such as 2026-12-31, got {body['until']!r}"
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        return moment.timestamp()

    async def grant(body: dict[str, Any], kind: str, **fields: Any) -> web.Response:
        now = state.clock.time()
        until = until_of(body, now)
        if isinstance(until, str):
            return bad_request(until)
        if until <= now:
            return bad_request("The grant would end in the past.")
        given = actor_and_reason(body, "what was agreed, and with whom")
        if isinstance(given, web.Response):
            return given
        by, reason = given
        made = Grant(state.grants.new_id(origin), kind, until, by, reason, now, **fields)
        failed = await state.granting.grant(made)
        if failed is not None:
            return answer(failed)
        return web.json_response({"grant": made.as_entry()}, status=201)

    async def add_exception(request: web.Request) -> web.Response:
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        customer = request.match_info["id"]
        if "exempt" in body:
            if body["exempt"] not in EXEMPTABLE:
                return bad_request(f"exempt: expected one of {', '.join(EXEMPTABLE)}")
            return await grant(body, EXEMPT, customer=customer, exempt=body["exempt"])
        changes = {name: body[name] for name in OVERRIDE_NUMBERS if name in body}
        limit = body.get("limit")
        config = runtimes.current.config
        plan = config.plans.get(config.plan_of(customer) or "")
        limits = {lim.name: lim for lim in plan.limits} if plan is not None else {}
        if limit not in limits:
            names = ", ".join(limits) if plan is not None else "none (no plan)"
            return bad_request(f"limit: {limit!r} is not a limit of this customer's plan; its limits: {names}")
        if not changes:
            return bad_request(f"Give at least one of {', '.join(OVERRIDE_NUMBERS)} (or 'exempt').")
        try:
            misfits = Override(limit=limit, **changes).misfits(limits[limit].kind)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            return bad_request(problems)
        if misfits:
            return bad_request(f"{', '.join(misfits)}: does not apply to a {limits[limit].kind} limit")
        return await grant(body, OVERRIDE, customer=customer, override={"limit": limit, **changes})

    async def list_grants(request: web.Request) -> web.Response:
        grants = state.grants.in_force(state.clock.time(), request.query.get("customer"))
        return web.json_response({"grants": [g.as_entry() for g in grants]})

    async def revoke(request: web.Request) -> web.Response:
        """End an exception or allow-list entry now: optional {"by": WHO, "note": TEXT}."""
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        given = actor_and_note(body)
        if isinstance(given, web.Response):
            return given
        by, note = given
        grant_id = request.match_info["grant"]
        ended, failed = await state.granting.revoke(grant_id, by, note)
        if ended is None:
            return problem_response(404, "no-such-grant", "Not Found",
                                    f"No exception or allow-list entry {grant_id!r} is in force.")
        if failed is not None:
            return answer(failed)
        return web.json_response({"revoked": ended.as_entry()})

    async def allow(request: web.Request) -> web.Response:
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        if "user_agent" in body:
            agent = body["user_agent"]
            if not isinstance(agent, str) or len(agent.strip()) < 3:
                return bad_request("user_agent: a distinctive part of the integration's User-Agent, 3 characters "
                                   "or more (matched case-insensitively)")
            return await grant(body, ALLOW_AGENT, customer=body.get("customer"), agent=agent.strip())
        customer, user = body.get("customer"), body.get("user")
        if not isinstance(customer, str) or not isinstance(user, str):
            return bad_request("Give 'customer' and 'user' (a user), or 'user_agent' (an integration).")
        return await grant(body, ALLOW_USER, customer=customer, user=user)

    app.router.add_post("/admin/customers/{id}/exceptions", add_exception)
    app.router.add_get("/admin/exceptions", list_grants)
    app.router.add_delete("/admin/exceptions/{grant}", revoke)
    app.router.add_post("/admin/allow-list", allow)
