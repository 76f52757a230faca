"""How long one usage flush holds the event loop at a time: N customers' pending amounts flushed
to the memory store while a probe task records the longest gap between its turns (the longest
step of the flush, the garbage collector's pauses inside it included), in wall and CPU time.

    python bench/usage_flush.py --customers 200000 --repeat 3 [--gc-off | --freeze]

`--freeze`: the adopted `server.gc` design, thresholds (700, 3, 10) and the survivors frozen once
the pending amounts are in (a running gateway freezes every second while they build up).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import zoneinfo
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.calendar import Calendar
from gateway.clock import SYSTEM_CLOCK
from gateway.state.memory import MemoryStore
from gateway.usage.meter import UsageMeter


async def one_flush(meter: UsageMeter, customers: int, freeze: bool) -> tuple[float, float, int]:
    for n in range(customers):
        meter.forwarded(f"c{n}", 1, 100, 200, 0.01, plan="bench")
    if freeze:
        gc.collect(1)
        gc.freeze()
    stop = False
    longest_wall = longest_cpu = 0.0
    turns = 0

    async def probe() -> None:
        nonlocal longest_wall, longest_cpu, turns
        wall, cpu = time.perf_counter(), time.thread_time()
        while not stop:
            await asyncio.sleep(0)
            now_wall, now_cpu = time.perf_counter(), time.thread_time()
            longest_wall, longest_cpu = max(longest_wall, now_wall - wall), max(longest_cpu, now_cpu - cpu)
            wall, cpu = now_wall, now_cpu
            turns += 1

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    await meter.flush()
    stop = True
    await task
    return longest_wall, longest_cpu, turns


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gc-off", action="store_true", help="without the garbage collector (its share of a hold)")
    parser.add_argument("--freeze", action="store_true", help="thresholds (700, 3, 10), survivors frozen first")
    args = parser.parse_args()
    if args.gc_off:
        gc.disable()
    if args.freeze:
        gc.set_threshold(700, 3, 10)
        gc.collect()
        gc.freeze()
    meter = UsageMeter(MemoryStore(), SYSTEM_CLOCK, Calendar(zoneinfo.ZoneInfo("UTC")))
    for n in range(args.repeat):
        wall, cpu, turns = await one_flush(meter, args.customers, args.freeze)
        print(f"flush {n + 1}: {args.customers} customers, longest hold {wall * 1000:.2f} ms wall, "
              f"{cpu * 1000:.2f} ms CPU, {turns} turns")


if __name__ == "__main__":
    asyncio.run(main())
