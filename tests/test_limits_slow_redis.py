"""Limits on a slow Redis: the one-call-in-flight batching (gateway/state/redis_batches.py)
still gives every request the whole `state.timeout`.

A real Redis behind a real loopback TCP relay that holds every chunk the gateway writes for a
fixed delay: a Redis whose every round trip takes `DELAY`, below the state timeout.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from urllib.parse import urlsplit

from gateway.config.limits import StateSettings
from gateway.state.redis_store import RedisStore, connect
from gateway.state.store import RATE, Check

TIMEOUT = 2.0
DELAY = 1.2  # each round trip: well under TIMEOUT, but two of them in a row are over it

async def _relay(target_host: str, target_port: int, delay: list[float]) -> asyncio.Server:
    """`delay[0]`: how long each chunk towards Redis is held (changed by the test)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: list[float]) -> None:
        try:
            while data := await reader.read(65536):
                if hold[0]:
                    await asyncio.sleep(hold[0])  # the relay's latency, not a synchronisation
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        await asyncio.gather(pipe(reader, up_writer, delay), pipe(up_reader, writer, [0.0]))

    return await asyncio.start_server(serve, "127.0.0.1", 0)

async def test_a_request_behind_a_call_in_flight_still_gets_the_whole_timeout(redis_url):
    """Redis answers every call in DELAY < timeout. A request that arrives while a call is in
    flight would wait for it, then make its own call: 2 x DELAY, over the timeout (with
    on_failure=closed, a 503 for a paying customer although Redis answered each call in time).
    It waits behind the call in flight a quarter of the timeout at most, then goes on its own."""
    parts = urlsplit(redis_url)
    delay = [0.0]
    relay = await _relay(parts.hostname or "127.0.0.1", parts.port or 6379, delay)
    port = relay.sockets[0].getsockname()[1]
    settings = StateSettings(url=f"redis://127.0.0.1:{port}/0", timeout=f"{TIMEOUT}s", on_failure="closed")
    client, _ = connect(settings)
    store = RedisStore(client, settings, cluster=False, use_redis_time=False)
    prefix = f"fg-review-{secrets.token_hex(4)}"
    try:
        now = time.time()
        await store.evaluate("c:x", [Check(RATE, f"{prefix}:{{c:x}}:warm", interval=1.0, burst=5)], now)  # the script
        await asyncio.gather(client.ping(), client.ping())  # two pooled connections, handshakes done
        delay[0] = DELAY

        def request(name: str) -> asyncio.Task:
            return asyncio.ensure_future(store.evaluate(
                f"c:{name}", [Check(RATE, f"{prefix}:{{c:{name}}}:r", interval=60.0, burst=5)], now))

        first = request("a")
        for _ in range(3):  # its evaluate, the batch's flush, the call's write: in flight
            await asyncio.sleep(0)
        second = request("b")
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["list", "list"], results
    finally:
        await store.close()
        relay.close()
        await relay.wait_closed()
