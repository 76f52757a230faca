"""Event-loop lag: a probe that asks to wake every `interval` seconds and records how late it
woke. Every request waits behind whatever blocked the loop (a synchronous call, a CPU-heavy
step), so this is the first place a stall shows, before latency quantiles move."""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

PROBE_INTERVAL = 0.1


async def probe_loop_lag(histogram: Histogram, interval: float = PROBE_INTERVAL) -> None:
    """Runs until cancelled (the gateway's drain cancels it with its other background tasks)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, loop.time() - due))
