"""A real HTTP upstream for tests: echoes what it received, streams, stalls, and speaks WebSocket."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

CHUNK = bytes(range(256)) * 256  # 64 KiB of a known pattern


@dataclass
class UpstreamState:
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    stall_started: asyncio.Event = field(default_factory=asyncio.Event)
    release_stall: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0


def header(echo: dict, name: str) -> str | None:
    """A header of the request as the echo route saw it, repeated values joined; None if absent."""
    values = [value for key, value in echo["headers"] if key.lower() == name.lower()]
    return ", ".join(values) if values else None


def pattern_bytes(size: int):
    """The body /bytes/{size} sends, as chunks."""
    full, rest = divmod(size, len(CHUNK))
    for _ in range(full):
        yield CHUNK
    if rest:
        yield CHUNK[:rest]


def build_upstream_app(state: UpstreamState) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        state.requests += 1
        body = await request.read()
        return web.json_response({
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        })

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse()
        if request.query.get("length") == "1":
            response.content_length = size
        await response.prepare(request)
        for chunk in pattern_bytes(size):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest(),
                                  "transfer_encoding": request.headers.get("Transfer-Encoding"),
                                  "content_length": request.headers.get("Content-Length")})

    async def stall(request: web.Request) -> web.Response:
        state.stall_started.set()
        try:
            await state.release_stall.wait()
        except asyncio.CancelledError:
            state.cancelled.set()
            raise
        return web.json_response({"released": True})

    async def hop_by_hop(request: web.Request) -> web.Response:
        response = web.Response(text="hop")
        response.headers["Connection"] = "keep-alive, X-Private-Hop"
        response.headers["X-Private-Hop"] = "secret"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["Proxy-Connection"] = "keep-alive"
        response.headers["Trailer"] = "X-Checksum"
        response.headers["X-End-To-End"] = "kept"
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def gzipped(request: web.Request) -> web.Response:
        body = gzip.compress(b'{"compressed": true}' * 100, mtime=0)
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        if code in (204, 304):
            return web.Response(status=code, headers={"X-Status": str(code)})
        return web.Response(status=code, text=json.dumps({"status": code}), content_type="application/json")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat.v1",))
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"echo:{message.data}")
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_get("/bytes/{size}", download)
    app.router.add_post("/upload", upload)
    app.router.add_get("/stall", stall)
    app.router.add_get("/hop", hop_by_hop)
    app.router.add_get("/gzip", gzipped)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/ws", websocket)
    return app
