"""Limit decisions on Redis in one process: CPU µs per request of `RedisStore.evaluate` (the
batching, the EVALSHA, the answers), the bench plan's rate limit and daily quota, over 2,000
customers, `--at-once` requests at a time: 8 (about the 0.13 calls per request of a fleet
member under load) or 1 (a call per request, a gateway at low load).

    python bench/redis_limits_micro.py --url redis://127.0.0.1:PORT/0 [--at-once 8] [--rounds 6]

Use a Redis of your own: the keys (a random prefix) expire within the hour. `PYTHONPATH=/some/
other/tree` measures that tree's gateway package with this script (A/B: run both, alternating).
Process CPU time, so it holds up on a loaded machine; compare ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time

import uvloop

from gateway.config.limits import StateSettings
from gateway.state.redis_store import RedisStore
from gateway.state.store import QUOTA, RATE, Check

CUSTOMERS = 2_000
REQUESTS = 4_000  # a round


async def measure(url: str, rounds: int, at_once: int) -> list[float]:
    store = RedisStore.from_settings(StateSettings(url=url, timeout="2s"))
    run, now = secrets.token_hex(3), time.time()
    checks = [[Check(RATE, f"fgm{run}:{{c:{n}}}:sustained", interval=1e-5, burst=100_000, cost=1),
               Check(QUOTA, f"fgm{run}:{{c:{n}}}:daily", limit=1e12, cost=1, expires_at=now + 3600)]
              for n in range(CUSTOMERS)]

    async def request(n: int) -> None:
        await store.evaluate(f"c:{n % CUSTOMERS}", checks[n % CUSTOMERS], time.time())

    async def requests(count: int) -> None:
        for n in range(0, count, at_once):
            await asyncio.gather(*(request(n + i) for i in range(at_once)))

    try:
        await requests(400)  # the script loaded, the connections made
        spent = []
        for _ in range(rounds):
            started = time.process_time()
            await requests(REQUESTS)
            spent.append((time.process_time() - started) / REQUESTS * 1e6)
        return spent
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="redis://127.0.0.1:PORT/0, a Redis of your own")
    parser.add_argument("--at-once", type=int, default=8, help="requests decided at a time (default 8)")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    spent = uvloop.run(measure(args.url, args.rounds, args.at_once))
    print(" ".join(f"{us:.0f}" for us in spent), f"us CPU per request ({args.at_once} at a time)")


if __name__ == "__main__":
    main()
