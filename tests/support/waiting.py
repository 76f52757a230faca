"""Waiting for a condition that another task, thread or process makes true, with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
Message = str | Callable[[], str]


async def wait_until(condition: Callable[[], T | Awaitable[T]], timeout: float = 5.0,
                     message: Message = "condition not met in time", interval: float = 0.01) -> T:
    """Poll `condition` on the event loop until it holds; its truthy value is returned.

    `condition` may be a plain predicate, an `async def` or any callable returning an awaitable
    (an HTTP poll, say). `message` (or a callable making it, for state seen at the end) is the
    failure the test reports when the deadline passes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(message() if callable(message) else message)
        await asyncio.sleep(interval)


def block_until(condition: Callable[[], T], timeout: float = 10.0, message: Message = "condition not met in time",
                interval: float = 0.05) -> T:
    """`wait_until` for code off the event loop: setup of child processes, helpers run in a thread."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(interval)
