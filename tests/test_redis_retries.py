"""A Redis command that may already have run is never sent again by the client library: a limit
script or a usage increment sent twice charges the customer twice. Failures go to the breaker."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis.asyncio
from redis.exceptions import TimeoutError as RedisTimeout

from gateway.config.limits import StateSettings
from gateway.state.redis_store import connect


class SlowReplies:
    """A relay to Redis that passes commands on at once and, once a connection has sent a command
    naming `marker`, holds its replies until released (the handshake's pass, so a retry on a new
    connection would get as far as sending the command again)."""

    def __init__(self, port: int, marker: bytes) -> None:
        self.port, self.marker, self.released = port, marker, asyncio.Event()
        self.connections = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        tested = False

        async def commands() -> None:
            nonlocal tested
            while data := await client_reader.read(65536):
                tested = tested or self.marker in data
                writer.write(data)
                await writer.drain()

        async def replies() -> None:
            while data := await reader.read(65536):
                if tested:
                    await self.released.wait()
                client_writer.write(data)
                await client_writer.drain()

        try:
            await asyncio.gather(commands(), replies())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            client_writer.close()

    async def close(self) -> None:
        self.released.set()
        self.server.close()


@pytest.mark.parametrize("via", ["command", "pipeline"])
async def test_a_command_whose_reply_is_late_is_not_sent_again(private_redis, via):
    key = f"retries:{secrets.token_hex(4)}"
    relay = SlowReplies(private_redis.port, key.encode())
    port = await relay.start()
    client, _ = connect(StateSettings(url=f"redis://127.0.0.1:{port}", timeout="50ms"))
    direct = redis.asyncio.Redis(port=private_redis.port)
    try:
        with pytest.raises(RedisTimeout):
            if via == "command":
                await client.incrby(key, 1)
            else:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.hincrbyfloat(key, "requests", 1)
                    await pipe.execute()
        relay.released.set()
        if via == "command":
            assert int(await direct.get(key)) == 1
        else:
            assert float(await direct.hget(key, "requests")) == 1.0
    finally:
        await relay.close()
        await client.aclose()
        await direct.aclose()
