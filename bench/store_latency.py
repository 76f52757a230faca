"""How long a request waits on the Redis state store under the gateway's batched load: the
figure `state.timeout` must stay clear of.

    python bench/store_latency.py [--redis redis://127.0.0.1:6379/0] [--seconds 10] [--concurrency 256]

Each of `concurrency` tasks loops: some CPU work standing in for the rest of a request (auth,
routing, proxying: `--work-us`), then one `evaluate` of a rate + concurrency + daily quota check
through RedisStore, timed from the call to its answer. That wait includes the event-loop turns
spent queueing behind other requests, which is what the store timeout measures too. Keys are
under a random prefix and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time

import redis

from gateway.config.limits import StateSettings
from gateway.state.redis_store import RedisStore
from gateway.state.store import CONCURRENCY, QUOTA, RATE, Check

CUSTOMERS = 2_000


def checks(prefix: str, n: int, now: float) -> list[Check]:
    tag = f"{{c:{n}}}"
    return [
        Check(RATE, f"{prefix}:{tag}:sustained:{n}", interval=0.0001, burst=1000),
        Check(CONCURRENCY, f"{prefix}:{tag}:parallel:{n}", max=1_000_000, token=secrets.token_hex(4), lease=60),
        Check(QUOTA, f"{prefix}:{tag}:daily:{n}", limit=1e12, cost=1, expires_at=now + 3600),
    ]


async def measure(url: str, seconds: float, concurrency: int, work_us: float, prefix: str) -> list[float]:
    settings = StateSettings(url=url, key_prefix="bench", timeout="10s")
    store = RedisStore.from_settings(settings)
    waits: list[float] = []
    stop_at = time.monotonic() + seconds

    async def one(worker: int) -> None:
        n = worker
        while time.monotonic() < stop_at:
            spin_until = time.perf_counter() + work_us / 1e6
            while time.perf_counter() < spin_until:
                pass
            started = time.perf_counter()
            await store.evaluate(f"c:{n}", checks(prefix, n % CUSTOMERS, time.time()), time.time())
            waits.append(time.perf_counter() - started)
            n += concurrency

    try:
        await asyncio.gather(*(one(i) for i in range(concurrency)))
    finally:
        await store.close()
    return waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--work-us", type=float, default=150.0)
    args = parser.parse_args()
    prefix = f"fgbench-{secrets.token_hex(4)}"
    try:
        waits = asyncio.run(measure(args.redis, args.seconds, args.concurrency, args.work_us, prefix))
    finally:
        client = redis.Redis.from_url(args.redis)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    waits.sort()

    def pct(p: float) -> float:
        return waits[min(len(waits) - 1, int(len(waits) * p))] * 1000

    print(f"{len(waits)} store calls in {args.seconds:.0f} s ({len(waits) / args.seconds:,.0f}/s), "
          f"concurrency {args.concurrency}, {args.work_us:.0f} us of other work per request")
    print(f"wait ms: p50 {statistics.median(waits) * 1000:.1f}  p99 {pct(0.99):.1f}  "
          f"p99.9 {pct(0.999):.1f}  max {waits[-1] * 1000:.1f}")


if __name__ == "__main__":
    main()
