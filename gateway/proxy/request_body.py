"""Receiving a client's request body within an idle timeout and a total deadline.

Without them a client that sends part of a body and stops holds an upstream connection and an
in-flight slot for as long as it likes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import StreamReader


class BodyTimeout(Exception):
    """The client stopped sending its body, or took longer than the total deadline."""


@dataclass(frozen=True, slots=True)
class BodyTimeouts:
    idle: float  # longest wait for the next bytes
    total: float  # longest time for the whole body

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.total


async def next_chunk(content: StreamReader, timeouts: BodyTimeouts, deadline: float) -> bytes:
    """The next bytes of the body, b"" at its end; BodyTimeout when they do not come in time."""
    wait = min(timeouts.idle, deadline - asyncio.get_running_loop().time())
    try:
        async with asyncio.timeout(wait):
            return await content.readany()
    except TimeoutError:
        raise BodyTimeout(f"no request body bytes within {wait:.3g} s") from None


async def read_whole(content: StreamReader, timeouts: BodyTimeouts) -> bytes:
    deadline = timeouts.deadline()
    chunks = []
    while chunk := await next_chunk(content, timeouts, deadline):
        chunks.append(chunk)
    return b"".join(chunks)
