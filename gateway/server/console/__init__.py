"""The admin console: one static page and its script at /console on the admin listener. It
holds no data itself; the script asks for the admin token and calls the admin API with it."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

_HERE = Path(__file__).parent
_FILES = {"": ("index.html", "text/html"), "console.js": ("console.js", "text/javascript"),
          "console.css": ("console.css", "text/css")}
# Scripts only from this origin and never inline: nothing an API value contains can run.
_HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def add_console_routes(app: web.Application) -> None:
    async def serve(request: web.Request) -> web.Response:
        entry = _FILES.get(request.match_info.get("name", ""))
        if entry is None:
            raise web.HTTPNotFound()
        name, content_type = entry
        return web.Response(body=(_HERE / name).read_bytes(), content_type=content_type, charset="utf-8",
                            headers=_HEADERS)

    app.router.add_get("/console", serve)
    app.router.add_get("/console/", serve)
    app.router.add_get("/console/{name}", serve)
