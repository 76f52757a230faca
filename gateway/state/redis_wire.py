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
        await connection.send_packed_command(payload, check_health=False)
        answers: list[Reply] = []
        for _ in range(replies):
            try:
                answers.append(await connection.read_response())
            except redis_errors.ResponseError as exc:
                answers.append(exc)
        return answers
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
