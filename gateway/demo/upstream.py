"""The demo upstream: tickets over JSON, a portal over HTML, an echo WebSocket."""

from __future__ import annotations

import argparse
import asyncio
import html
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

TICKETS = 500
PAGE_SIZE = 20
_STATIC = Path(__file__).parent / "static"


def _ticket(ticket_id: int) -> dict[str, Any]:
    return {
        "id": ticket_id,
        "title": f"Ticket {ticket_id}",
        "status": ("open", "pending", "closed")[ticket_id % 3],
        "priority": ("low", "normal", "high")[ticket_id % 3],
    }


def _ticket_id(request: web.Request) -> int:
    raw = request.match_info["ticket_id"]
    if not raw.isdigit() or not 1 <= int(raw) <= TICKETS:
        raise web.HTTPNotFound(text='{"error": "no such ticket"}', content_type="application/json")
    return int(raw)


def _page(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    return int(raw) if raw.isdigit() and int(raw) >= 1 else 1


async def list_tickets(request: web.Request) -> web.Response:
    page = _page(request)
    first = (page - 1) * PAGE_SIZE + 1
    items = [_ticket(i) for i in range(first, min(first + PAGE_SIZE, TICKETS + 1))]
    return web.json_response({"page": page, "items": items, "total": TICKETS})


async def get_ticket(request: web.Request) -> web.Response:
    return web.json_response(_ticket(_ticket_id(request)))


async def create_ticket(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "body must be JSON"}, status=400)
    return web.json_response({"id": TICKETS + 1, "received": body}, status=201)


async def usage_report(request: web.Request) -> web.Response:
    # The expensive endpoint: it takes a while, as real reports do.
    await asyncio.sleep(0.2)
    return web.json_response({"report": "usage", "rows": [{"day": d, "calls": 100 + d} for d in range(1, 31)]})


async def whoami(request: web.Request) -> web.Response:
    """Shows what the gateway told the upstream about the caller."""
    return web.json_response(
        {name: request.headers.get(name) for name in ("X-Customer-Id", "X-User-Id", "X-Forwarded-For", "X-Request-Id")}
    )


async def stream(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


def _portal_page(title: str, body: str) -> web.Response:
    return web.Response(
        text=(
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title>"
            "<link rel='stylesheet' href='/portal/static/app.css'>"
            "<script src='/portal/static/app.js' defer></script>"
            f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
        ),
        content_type="text/html",
    )


async def portal_home(request: web.Request) -> web.Response:
    return _portal_page("Support portal", "<p><a href='/portal/tickets'>Your tickets</a></p>")


async def portal_tickets(request: web.Request) -> web.Response:
    page = _page(request)
    first = (page - 1) * PAGE_SIZE + 1
    rows = "".join(
        f"<tr><td><a href='/portal/tickets/{t['id']}'>{t['id']}</a></td>"
        f"<td>{t['title']}</td><td>{t['status']}</td></tr>"
        for t in (_ticket(i) for i in range(first, min(first + PAGE_SIZE, TICKETS + 1)))
    )
    return _portal_page(f"Tickets, page {page}", f"<table>{rows}</table><a href='?page={page + 1}'>next</a>")


async def portal_ticket(request: web.Request) -> web.Response:
    ticket = _ticket(_ticket_id(request))
    return _portal_page(ticket["title"], f"<p>Status: {ticket['status']}, priority: {ticket['priority']}</p>")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/tickets", list_tickets)
    app.router.add_post("/api/v1/tickets", create_ticket)
    app.router.add_get("/api/v1/tickets/{ticket_id}", get_ticket)
    app.router.add_get("/api/v1/reports/usage", usage_report)
    app.router.add_get("/api/v1/whoami", whoami)
    app.router.add_get("/api/v1/stream", stream)
    app.router.add_get("/portal/", portal_home)
    app.router.add_get("/portal/tickets", portal_tickets)
    app.router.add_get("/portal/tickets/{ticket_id}", portal_ticket)
    app.router.add_static("/portal/static/", _STATIC)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo", description="Run the demo upstream.")
    parser.add_argument("--listen", default="127.0.0.1:9000", metavar="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    web.run_app(build_app(), host=host, port=int(port), access_log=None, print=lambda *_: None)
