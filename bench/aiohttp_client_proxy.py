"""The naive alternative fairgate's upstream client is measured against: aiohttp's server
relaying through an aiohttp ClientSession (pooled, keep-alive), with no policies."""

import asyncio
import sys

import aiohttp
from aiohttp import web


async def main(port: int, upstream_port: int) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256), auto_decompress=False, skip_auto_headers=("User-Agent",)
    )
    base = f"http://127.0.0.1:{upstream_port}"

    async def relay(request: web.BaseRequest) -> web.Response:
        async with session.request(request.method, base + request.raw_path, data=await request.read()) as upstream:
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body, content_type=upstream.content_type)

    runner = web.ServerRunner(web.Server(relay, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
