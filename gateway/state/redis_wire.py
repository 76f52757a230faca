"""Commands written to Redis by hand: RESP encoding and one write, then the replies, on a
pooled connection of a redis-py client (single server or Sentinel; a Cluster client keeps pools
per node and goes through redis-py's own pipeline instead).

redis-py's Pipeline costs about 10 us of Python per command (its bookkeeping, a timeout context
around every reply, the reply callbacks), which at 20,000 customers was 43% of a fleet member's
CPU (py-spy, bench/fleet.py). Here a call costs one join of bytes and one hiredis parse per reply.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis import exceptions as redis_errors

# One reply: a value, or the error Redis answered that command with (the others still ran).
Reply = Any


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def text(value: str) -> bytes:
    return bulk(value.encode())


def texts(values: list[str]) -> bytes:
    """Many bulk strings from text at once: one format and one encode for all of them (a
    detection batch has thousands; measured 2x faster than `text` each). A value that is not
    ASCII has more bytes than characters, so then each is encoded on its own."""
    joined = "".join([f"${len(value)}\r\n{value}\r\n" for value in values])
    data = joined.encode()
    if len(data) != len(joined):
        return b"".join(text(value) for value in values)
    return data


def command(parts: Iterable[bytes]) -> bytes:
    """One command in RESP from its parts, each already a bulk string (`bulk`, `text`)."""
    items = list(parts)
    return b"*%d\r\n%s" % (len(items), b"".join(items))


async def send(client: Any, payload: bytes, replies: int) -> list[Reply]:
    """Write `payload` (commands in RESP) in one go and read `replies` replies, in order. An error
    reply is returned in its place; a lost connection raises, and the connection is dropped (a
    reply may still be in flight on it)."""
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        return await _exchange(connection, payload, replies)
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


class Line:
    """One pooled connection kept by a caller that makes its calls one at a time (the limits'
    EVALSHA, one call in flight per gateway). Taking a connection out of redis-py's pool and
    giving it back cost more than the call itself (a lock, connection-count metrics, a release
    event: 60-75 us of CPU a call against 35-50 kept, measured on a loaded machine); the pool's
    own readiness check still runs before each call, so a connection Redis closed is replaced
    as the pool would. A call made while the line is busy (a batch overtaking a slow call)
    takes a connection of the pool, as `send` does."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._kept: Any = None  # the idle connection, checked out of the pool

    async def send(self, payload: bytes, replies: int) -> list[Reply]:
        """As `send`, on the kept connection when it is idle."""
        pool = self._client.connection_pool
        connection, self._kept = self._kept, None
        if connection is None:
            connection = await pool.get_connection()
        else:
            try:
                await pool.ensure_connection(connection)
            except BaseException:
                await pool.release(connection)
                raise
        try:
            answers = await _exchange(connection, payload, replies)
        except BaseException:
            await connection.disconnect()
            await pool.release(connection)
            raise
        if self._kept is None:
            self._kept = connection
        else:
            await pool.release(connection)
        return answers

    async def drop(self) -> None:
        """Close the kept connection (before a probe: it may lead to a Redis since restarted)."""
        connection, self._kept = self._kept, None
        if connection is not None:
            await connection.disconnect()
            await self._client.connection_pool.release(connection)


async def _exchange(connection: Any, payload: bytes, replies: int) -> list[Reply]:
    await connection.send_packed_command(payload, check_health=False)
    answers: list[Reply] = []
    for _ in range(replies):
        try:
            answers.append(await connection.read_response())
        except redis_errors.ResponseError as exc:
            answers.append(exc)
    return answers
