"""A webhook receiver on loopback for the alerts' tests."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web


class Receiver:
    """A webhook receiver on loopback: records what it got; can fail or stall on demand."""

    def __init__(self) -> None:
        self.received: list[tuple[dict, dict]] = []
        self.fail_next = 0
        self.stall = False
        self.arrived = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def stop(self) -> None:
        self.stall = False
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        if self.stall:
            await asyncio.sleep(3600)
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=503)
        self.received.append((dict(request.headers), json.loads(await request.read())))
        self.raw = await request.read()
        self.arrived.set()
        return web.Response(status=204)
