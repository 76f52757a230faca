"""How much cyclic garbage the generational freeze strands (server.gc.freeze_interval, on by
default, with full_collection_interval off): an aiohttp server and client in one process, batches
of 50 concurrent requests (every fifth cut short by a client timeout unless --no-timeouts) while
`freeze_survivors` runs every 250 ms; then one `collect_everything`: the unreachable objects it
finds are garbage that was frozen while in use, which no automatic collection would ever free.

    .venv/bin/python bench/review_freeze_leak.py --requests 9000 [--no-freeze] [--no-timeouts] [--port 28111]
"""

from __future__ import annotations

import argparse
import asyncio
import gc

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from gateway.server.garbage import collect_everything, freeze_survivors


async def _handler(request: web.Request) -> web.Response:
    await asyncio.sleep(0.2 if "slow" in request.query else 0.002)
    return web.Response(body=b"x" * 100)


async def main(freeze: bool, requests: int, timeouts: bool, port: int) -> None:
    app = web.Application()
    app.router.add_get("/", _handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    gc.collect()
    gc.freeze()
    base = gc.get_freeze_count()
    stopping = asyncio.Event()

    async def freezer() -> None:
        while not stopping.is_set():
            await asyncio.sleep(0.25)
            if freeze:
                freeze_survivors()

    freezing = asyncio.create_task(freezer())
    async with ClientSession() as session:

        async def one(i: int) -> None:
            slow = "?slow=1" if timeouts and i % 5 == 0 else ""
            try:
                async with session.get(f"http://127.0.0.1:{port}/{slow}", timeout=ClientTimeout(total=0.05)) as r:
                    await r.read()
            except (ClientError, TimeoutError):
                pass

        for start in range(0, requests, 50):
            await asyncio.gather(*(one(i) for i in range(start, start + 50)))
    stopping.set()
    await freezing
    await runner.cleanup()
    await asyncio.sleep(0.3)
    growth = gc.get_freeze_count() - base
    found = collect_everything()
    print(f"freeze={freeze} timeouts={timeouts} requests={requests} frozen_growth={growth} "
          f"unreachable_found_by_full_collection={found}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--no-freeze", action="store_true")
    parser.add_argument("--no-timeouts", action="store_true")
    parser.add_argument("--port", type=int, default=28111)
    args = parser.parse_args()
    asyncio.run(main(not args.no_freeze, args.requests, not args.no_timeouts, args.port))
