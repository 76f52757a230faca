"""Limiter decisions per second on the memory store, in one process, no I/O.

    python bench/limiter_micro.py
    python bench/limiter_micro.py --customers 400,20000,200000 [--requests 200000] [--rounds 3]
    python bench/limiter_micro.py --customers 20000 --plan three

Without `--customers`, the store alone:
"one bucket": a request whose plan has one rate limit (one GCRA decision and its write).
"three limits": rate + concurrency + daily quota decided together, all-or-nothing.
Keys cycle over 10,000 customers so the tables are warm but not trivially cached.

With `--customers`, the whole limits stage: `Limiter.admit` + `finish` with the bench's plan
(a rate limit and a daily request quota, `RateLimit` headers on; `--plan three` adds a
concurrency limit and a quota on bytes), every customer sent once first (warm), then requests
in rotation over all of them as `bench/rotate.lua` sends them. Each count runs in its own
child process (one count's heap does not skew the next) and reports:
- CPU µs per request (process CPU time over the rounds, so it holds up on a loaded machine),
- the template rebuilds and plan-book recomputations per request during the rounds (a table
  too small for the customers in rotation rebuilds on every request),
- tracemalloc bytes per customer allocated by gateway/limits and gateway/state, and
  GC-tracked objects per customer, after the warm pass.

`PYTHONPATH=/some/other/tree` measures that tree's gateway package with this script (A/B).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from gateway.state.memory import MemoryStore
from gateway.state.store import CONCURRENCY, QUOTA, RATE, Check

CUSTOMERS = 10_000
ROUNDS = 5
N = 400_000
T0 = 1_800_000_000.0  # 2027-01-15, as the tests' clock
REQUEST_SECONDS = 1 / 3000  # the clock moves as at 3,000 req/s


def measure(batches: list[list[Check]]) -> float:
    best = 0.0
    for _ in range(ROUNDS):
        store = MemoryStore()
        now = 1_800_000_000.0
        started = time.perf_counter()
        for i in range(N):
            store.evaluate_now(batches[i % CUSTOMERS], now + i * 1e-5)
        best = max(best, N / (time.perf_counter() - started))
    return best


def store_only() -> None:
    one = [[Check(RATE, f"fg:{{c:{n}}}:sustained:{n}", interval=0.01, burst=100)] for n in range(CUSTOMERS)]
    three = [[
        Check(RATE, f"fg:{{c:{n}}}:sustained:{n}", interval=0.01, burst=100),
        Check(CONCURRENCY, f"fg:{{c:{n}}}:parallel:{n}", max=1_000_000, token="t", lease=600),
        Check(QUOTA, f"fg:{{c:{n}}}:daily:{n}:2027-01-15", limit=1e12, cost=1, expires_at=1_800_086_400.0),
    ] for n in range(CUSTOMERS)]
    print("| limiter micro-benchmark (memory store) | decisions/s |")
    print("|---|---:|")
    print(f"| one bucket per request | {measure(one):,.0f} |")
    print(f"| three limits per request (rate + concurrency + quota) | {measure(three):,.0f} |")


PLANS: dict[str, list[dict[str, Any]]] = {
    "bench": [  # bench/processes.py's plan
        {"name": "sustained", "kind": "rate", "rate": "100000/s", "burst": 100000},
        {"name": "daily", "kind": "quota", "metric": "requests", "period": "day", "limit": 1e12},
    ],
    "three": [
        {"name": "sustained", "kind": "rate", "rate": "100000/s", "burst": 100000},
        {"name": "parallel", "kind": "concurrency", "max": 1000},
        {"name": "daily", "kind": "quota", "metric": "requests", "period": "day", "limit": 1e12},
        {"name": "traffic", "kind": "quota", "metric": "bytes", "period": "month", "limit": 1e15},
    ],
}


class StepClock:
    """Wall time that moves on by one request's worth at every reading of it."""

    def __init__(self) -> None:
        self.wall = T0

    def time(self) -> float:
        self.wall += REQUEST_SECONDS
        return self.wall

    def monotonic(self) -> float:
        return self.wall - T0


def one_count(customers: int, requests: int, rounds: int, plan: str, trace: bool = True) -> dict[str, Any]:
    import gateway
    from gateway.auth.identity import Identity
    from gateway.config import Route
    from gateway.config.limits import LimitSettings, Plan
    from gateway.limits.limiter import Limiter
    from gateway.limits.policy import PlanBook
    from gateway.limits.stats import LimitStats

    plans = {"bench": Plan.model_validate({"limits": PLANS[plan]})}
    book = PlanBook(LimitSettings(default_plan="bench"), plans, {})
    store = MemoryStore()
    limiter = Limiter(book, store, LimitStats(), StepClock(), key_prefix="fairgate", ratelimit_headers=True,
                      legacy_headers=False, max_templates=LimitSettings().max_templates)
    route = Route.model_validate({"name": "api", "path_prefix": "/", "upstream": "app"})
    who = [Identity(sys.intern(f"customer-{n}"), "user", None, None, None, "bench", None, frozenset(), 0.0, 0.0)
           for n in range(customers)]

    async def feed(count: int, start: int) -> None:
        admit, finish = limiter.admit, limiter.finish
        for i in range(start, start + count):
            admission = await admit(who[i % customers], route, "127.0.0.1", "r")
            finish(admission, 67, 0.001)
        await limiter.drain()

    async def run() -> dict[str, Any]:
        gc.collect()
        objects = len(gc.get_objects())
        if trace:
            tracemalloc.start()
        await feed(customers, 0)  # warm: every customer once
        snapshot = tracemalloc.take_snapshot() if trace else None
        tracemalloc.stop()
        gc.collect()
        tracked = (len(gc.get_objects()) - objects) / customers
        by_area: dict[str, int] = {}
        for stat in snapshot.statistics("filename") if snapshot is not None else ():
            name = stat.traceback[0].filename.replace("\\", "/")
            for area in ("gateway/limits", "gateway/state"):
                if area in name:
                    by_area[area] = by_area.get(area, 0) + stat.size
        cpu = []
        rebuilds_before = limiter.templates.evictions
        for r in range(rounds):
            started = time.process_time()
            await feed(requests, customers + r * requests)
            cpu.append((time.process_time() - started) / requests * 1e6)
        return {
            "gateway": gateway.__file__,
            "customers": customers,
            "plan": plan,
            "cpu_us": cpu,
            "template_evictions_per_request": (limiter.templates.evictions - rebuilds_before) / (rounds * requests),
            "templates": len(limiter.templates),
            "bytes_per_customer": {area: size / customers for area, size in by_area.items()},
            "gc_tracked_per_customer": tracked,
        }

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", help="comma-separated customer counts, e.g. 400,20000,200000")
    parser.add_argument("--requests", type=int, default=200_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plan", choices=sorted(PLANS), default="bench")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="skip the bytes per customer (a faster warm pass; for callgrind runs of --one N)")
    parser.add_argument("--one", type=int, help="one count in this process (JSON out): for a profiler")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_count(args.one, args.requests, args.rounds, args.plan, not args.no_tracemalloc)))
        return
    if args.customers is None:
        store_only()
        return
    print(f"| customers ({args.plan} plan) | CPU µs/request (rounds) | template evictions/request | "
          "bytes/customer limits | bytes/customer state | GC objects/customer |")
    print("|---:|---|---:|---:|---:|---:|")
    for count in (int(c) for c in args.customers.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(count), "--requests", str(args.requests),
                              "--rounds", str(args.rounds), "--plan", args.plan,
                               *(["--no-tracemalloc"] if args.no_tracemalloc else [])],
                             check=True, capture_output=True, text=True).stdout
        result = json.loads(out)
        cpu = sorted(result["cpu_us"])
        sizes = result["bytes_per_customer"]
        print(f"| {count:,} | {cpu[len(cpu) // 2]:.2f} ({cpu[0]:.2f}-{cpu[-1]:.2f}) | "
              f"{result['template_evictions_per_request']:.2f} | {sizes.get('gateway/limits', 0):,.0f} | "
              f"{sizes.get('gateway/state', 0):,.0f} | {result['gc_tracked_per_customer']:.1f} |", flush=True)
    print(f"gateway package: {result['gateway']}")


if __name__ == "__main__":
    main()
