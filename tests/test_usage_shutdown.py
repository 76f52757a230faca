"""A usage flush cancelled between its chunks (drain cancels the periodic
`UsageMeter.run`, then flushes once more) lost the customers it had popped but not stored."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo

import pytest

from gateway.calendar import Calendar
from gateway.config.usage import UsageSettings
from gateway.state.memory import MemoryStore
from gateway.usage.meter import UsageMeter
from tests.support.clock import ManualClock
from tests.support.waiting import wait_until


async def test_the_periodic_flush_cancelled_between_chunks_loses_no_usage():
    clock = ManualClock()
    store = MemoryStore()
    meter = UsageMeter(store, clock, Calendar(zoneinfo.ZoneInfo("UTC")))
    meter.settings = UsageSettings(flush_interval="10ms")
    for n in range(2_000):
        meter.forwarded(f"c{n}", 2, 10, 20, 0.5)
    month = dt.datetime.fromtimestamp(clock.time(), dt.UTC).strftime("%Y-%m")
    running = asyncio.ensure_future(meter.run())

    async def part_stored() -> bool:
        return 0 < len(await store.read_counters(meter.index(month))) < 2_000

    await wait_until(part_stored, message="the periodic flush did not start", interval=0)
    running.cancel()  # as Gateway.drain cancels the background tasks
    with pytest.raises(asyncio.CancelledError):
        await running
    await meter.flush()  # drain's final flush
    assert len(await meter.month(month)) == 2_000
