"""The loop-hold finder bench/stalls.py turns on (gateway/server/holds.py): a hold of the event
loop longer than the threshold is one line naming what held it, and nothing runs when off."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.server.holds import HOLD_LOG_ENV, HoldFinder, start_from_env


def hold_the_loop_until_sampled(finder: HoldFinder) -> None:
    """Computes, holding the loop, until the watchdog has sampled this frame (it samples only
    once the beat is late past the threshold): a hold the finder must report."""
    deadline = time.monotonic() + 10
    while not finder._samples and time.monotonic() < deadline:
        sum(range(1000))


async def logged(log: Path, wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The holds logged once one of them is `wanted`. Not the first line: on a loaded machine the
    process is descheduled past the threshold too, and each of those is a hold of its own."""
    deadline = time.monotonic() + 10
    while True:
        holds = [json.loads(line) for line in log.read_text().splitlines()]
        if any(wanted(hold) for hold in holds) or time.monotonic() > deadline:
            return holds
        await asyncio.sleep(0.001)  # the beat is due at once: the loop only has to come round


def sampled_here(hold: dict[str, Any]) -> bool:
    return any("hold_the_loop_until_sampled" in sample[2] for sample in hold["samples"])


def collected_here(hold: dict[str, Any]) -> bool:
    return str(hold["cause"]).startswith("gc gen2 from ") and any(
        "test_a_hold_that_is_a_collection" in c["from"][2] for c in hold["collections"])


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
        holds = await logged(log, sampled_here)
    finally:
        finder.stop()
    held = [hold for hold in holds if sampled_here(hold)]
    assert len(held) == 1, holds
    assert held[0]["late_ms"] > 2 and held[0]["cpu_ms"] > 0


async def test_a_hold_that_is_a_collection_names_the_generation_and_who_started_it(tmp_path, switch_interval):
    garbage = [[n] for n in range(300_000)]  # enough tracked objects for a full walk past 2 ms
    log = tmp_path / "holds.jsonl"
    finder = HoldFinder(log.open("a", buffering=1), threshold=0.002)
    finder.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0)
        gc.collect()
        holds = await logged(log, collected_here)
    finally:
        finder.stop()
    del garbage
    assert any(collected_here(hold) for hold in holds), holds


def test_off_unless_its_variable_names_a_file(monkeypatch):
    monkeypatch.delenv(HOLD_LOG_ENV, raising=False)
    loop = asyncio.new_event_loop()
    try:
        assert start_from_env(loop) is None
    finally:
        loop.close()
