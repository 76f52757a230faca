"""Admin API for account managers: customers with their plan, standing and usage, the audit
events, the monthly usage report, and the actions that change a standing (reinstate, suspend)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.calendar import month_bounds
from gateway.config.units import parse_duration
from gateway.enforce.ladder import OK, SEVERITY
from gateway.fleet.topics import Change
from gateway.problems import answer
from gateway.server.admin_requests import actor_and_note, actor_and_reason, bad_request, json_object, since_param
from gateway.server.reloader import RuntimeHolder
from gateway.usage.fees import as_fees_csv
from gateway.usage.report import build_report


def add_customer_routes(app: web.Application, runtimes: RuntimeHolder) -> None:
    state = runtimes.state

    def plan_of(customer: str) -> str | None:
        return runtimes.current.config.plan_of(customer)

    async def month_report(month: str, customer: str | None) -> list[dict[str, Any]]:
        await state.usage.flush()  # this gateway's latest too
        stored = await state.usage.month(month)
        return build_report(month, stored, runtimes.current.config, customer)

    def view(customer: str, *, full: bool, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        now = state.clock.time()
        standings = state.enforcement.standings.subjects_of(customer)
        in_force = [s for s in standings if s.in_force(now)]
        strictest = max(in_force, key=lambda s: SEVERITY[s.state], default=None)
        data: dict[str, Any] = {
            "id": customer,
            "plan": usage["plan"] if usage else plan_of(customer),  # the plan this month's requests had
            "state": strictest.state if strictest is not None else OK,
            "until": strictest.until if strictest is not None else None,
            "reason": strictest.reason if strictest is not None else None,
            # what the warning tells the customer, for the account manager to see the same
            "advice": [notice["text"] for notice in strictest.notices] if strictest is not None else [],
        }
        if full:
            data["standings"] = [s.as_entry() for s in standings]
            data["usage"] = usage
            data["findings"] = [f.as_json() for f in state.findings.recent(customer=customer)[-50:]]
            data["events"] = state.audit.recent(customer=customer)[-100:]
        return data

    async def publish(changes: list[Change]) -> web.Response | None:
        """Reach the fleet before answering; the problem if the shared store cannot be written."""
        failed = [problem for change in changes if (problem := await state.fleet.publish(change)) is not None]
        return answer(failed[0]) if failed else None

    async def list_customers(_: web.Request) -> web.Response:
        month, _end = state.usage.calendar.period("month", state.clock.time())
        usage = {row["customer"]: row for row in await month_report(month, None)}
        known = set(runtimes.current.config.customers) | set(usage)
        known |= {s.subject.split(":", 1)[1].split("/", 1)[0] for s in state.enforcement.standings.all_latest()}
        findings: dict[str, int] = {}
        for finding in state.findings.recent():
            if finding.customer is not None:
                findings[finding.customer] = findings.get(finding.customer, 0) + 1
        customers = []
        for customer in sorted(known):
            row = usage.get(customer)
            customers.append({**view(customer, full=False, usage=row), "findings": findings.get(customer, 0),
                              "usage": {"month": month, "requests": row["requests"] if row else 0,
                                        "over": row["over"] if row else False}})
        return web.json_response({"customers": customers})

    async def get_customer(request: web.Request) -> web.Response:
        customer = request.match_info["id"]
        month, _ = state.usage.calendar.period("month", state.clock.time())
        rows = await month_report(month, customer)
        return web.json_response(view(customer, full=True, usage=rows[0] if rows else None))

    async def usage(request: web.Request) -> web.Response:
        """Usage per customer in a month against its plan's quotas and the estimated fees:
        ?month=YYYY-MM[&customer=ID][&format=fees] (fees: the invoicing CSV)."""
        month = request.query.get("month") or state.usage.calendar.period("month", state.clock.time())[0]
        try:
            month_bounds(state.usage.calendar.zone, month)
        except ValueError:
            return bad_request(f"month: expected YYYY-MM such as 2026-11, got {month!r}")
        form = request.query.get("format", "json")
        if form not in ("json", "fees"):
            return bad_request(f"format: expected json or fees, got {form!r}")
        rows = await month_report(month, request.query.get("customer"))
        if form == "fees":
            return web.Response(text=as_fees_csv(rows), content_type="text/csv")
        return web.json_response({"month": month, "customers": rows})

    async def reinstate(request: web.Request) -> web.Response:
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        customer = request.match_info["id"]
        given = actor_and_note(body)
        if isinstance(given, web.Response):
            return given
        by, note = given
        cleared = state.enforcement.reinstate(customer, by=by, note=note)
        failed = await publish(cleared)
        state.audit.record("admin_action", action="reinstate", customer=customer, by=by, note=note)
        return failed or web.json_response({"reinstated": customer, "standings": [c.entry for c in cleared]})

    async def suspend(request: web.Request) -> web.Response:
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        customer = request.match_info["id"]
        given = actor_and_reason(body, "it is shown to the customer")
        if isinstance(given, web.Response):
            return given
        by, reason = given
        try:
            seconds = parse_duration(body.get("for", "24h"))
        except ValueError as exc:
            return bad_request(f"for: {exc}")
        if seconds <= 0:
            return bad_request("'for' must be a positive duration.")
        suspended = state.enforcement.suspend(customer, seconds, reason, by=by)
        failed = await publish([suspended])
        state.audit.record("admin_action", action="suspend", customer=customer, by=by, reason=reason,
                           until=suspended.entry["until"])
        return failed or web.json_response({"suspended": customer, "standing": suspended.entry}, status=201)

    async def events(request: web.Request) -> web.Response:
        """Recent audit events, oldest first; filters: customer, kind, since (epoch seconds)."""
        query = request.query
        since = since_param(request)
        if isinstance(since, web.Response):
            return since
        found = state.audit.recent(customer=query.get("customer"), kind=query.get("kind"), since=since)
        return web.json_response({"events": found})

    app.router.add_get("/admin/customers", list_customers)
    app.router.add_get("/admin/customers/{id}", get_customer)
    app.router.add_post("/admin/customers/{id}/reinstate", reinstate)
    app.router.add_post("/admin/customers/{id}/suspend", suspend)
    app.router.add_get("/admin/events", events)
    app.router.add_get("/admin/usage", usage)
