"""The loop-hold finder bench/stalls.py turns on (gateway/server/holds.py): a hold of the event
loop longer than the threshold is one line naming what held it, and nothing runs when off."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from pathlib import Path

import pytest

from gateway.server.holds import HOLD_LOG_ENV, HoldFinder, start_from_env


def hold_the_loop_until_sampled(finder: HoldFinder) -> None:
    """Computes, holding the loop, until the watchdog has sampled this frame (it samples only
    once the beat is late past the threshold): a hold the finder must report."""
    deadline = time.monotonic() + 10
    while not finder._samples and time.monotonic() < deadline:
        sum(range(1000))


async def logged(log: Path) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    while not log.read_text() and time.monotonic() < deadline:
        await asyncio.sleep(0.001)  # the beat is due at once: the loop only has to come round
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def switch_interval():
    interval = sys.getswitchinterval()
    yield
    sys.setswitchinterval(interval)  # the finder lowers it for the process


async def test_a_hold_is_logged_with_the_stack_that_held_the_loop(tmp_path, switch_interval):
    log = tmp_path / "holds.jsonl"
    finder = HoldFinder(log.open("a", buffering=1), threshold=0.002)
    finder.start(asyncio.get_running_loop())
    try:
        hold_the_loop_until_sampled(finder)
        holds = await logged(log)
    finally:
        finder.stop()
    assert len(holds) == 1
    hold = holds[0]
    assert hold["late_ms"] > 2 and hold["cpu_ms"] > 0
    assert any("hold_the_loop_until_sampled" in sample[2] for sample in hold["samples"])


async def test_a_hold_that_is_a_collection_names_the_generation_and_who_started_it(tmp_path, switch_interval):
    garbage = [[n] for n in range(300_000)]  # enough tracked objects for a full walk past 2 ms
    log = tmp_path / "holds.jsonl"
    finder = HoldFinder(log.open("a", buffering=1), threshold=0.002)
    finder.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0)
        gc.collect()
        holds = await logged(log)
    finally:
        finder.stop()
    del garbage
    assert holds and holds[0]["cause"].startswith("gc gen2 from ")
    assert any("test_a_hold_that_is_a_collection" in c["from"][2] for c in holds[0]["collections"])


def test_off_unless_its_variable_names_a_file(monkeypatch):
    monkeypatch.delenv(HOLD_LOG_ENV, raising=False)
    loop = asyncio.new_event_loop()
    try:
        assert start_from_env(loop) is None
    finally:
        loop.close()
