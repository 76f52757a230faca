"""The framework's ceiling: aiohttp's low-level server answering without any upstream."""

import asyncio
import sys

from aiohttp import web

BODY = b'{"id": 42, "status": "open", "title": "A ticket of typical size"}'


async def main(port: int) -> None:
    async def hello(request: web.BaseRequest) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    runner = web.ServerRunner(web.Server(hello, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
