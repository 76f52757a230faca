"""The pooled HTTP/1.1 upstream client against a scripted upstream on a real socket."""

from __future__ import annotations

import asyncio

import pytest

from gateway.upstream import UpstreamPool, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from tests.support.clock import ManualClock
from tests.support.configs import gateway_config
from tests.support.ports import free_port
from tests.support.raw_upstream import RawUpstream
from tests.support.waiting import wait_until

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@pytest.fixture
async def raw_upstream():
    servers: list[RawUpstream] = []

    async def start(script) -> tuple[RawUpstream, int]:
        server = RawUpstream(script)
        port = await server.start()
        servers.append(server)
        return server, port

    yield start
    for server in servers:
        await server.stop()


def make_pool(port: int, clock=None, **overrides) -> UpstreamPool:
    settings = dict(connect_timeout=1.0, read_timeout=2.0, idle_timeout=30.0, max_connections=8)
    settings.update(overrides)
    return UpstreamPool("127.0.0.1", port, clock=clock or ManualClock().monotonic, **settings)


async def fetch(pool: UpstreamPool, head: bytes = GET, body=None, chunked=False, head_only=False):
    exchange = await pool.exchange(head, body, chunked=chunked, head_only=head_only)
    data = await exchange.read_all()
    exchange.release()
    return exchange.head, data


async def test_keep_alive_connections_are_reused(raw_upstream):
    server, port = await raw_upstream(lambda head: (ok(), False))
    pool = make_pool(port)
    for _ in range(20):
        head, body = await fetch(pool)
        assert (head.status, body) == (200, b"hello")
    assert server.connections == 1
    await pool.close()


async def test_connection_close_from_upstream_is_not_reused(raw_upstream):
    server, port = await raw_upstream(lambda head: (ok(extra=b"Connection: close\r\n"), True))
    pool = make_pool(port)
    for _ in range(3):
        _, body = await fetch(pool)
        assert body == b"hello"
    assert server.connections == 3
    await pool.close()


async def test_idle_connection_closed_by_upstream_is_retried_transparently(raw_upstream):
    # The upstream closes every connection after answering, without saying so: the pooled
    # connection is dead when the next request goes out on it.
    server, port = await raw_upstream(lambda head: (ok(), True))
    pool = make_pool(port)
    for _ in range(5):
        _, body = await fetch(pool)
        assert body == b"hello"
    assert len(server.requests) == 5
    await pool.close()


async def test_body_until_eof_is_read_to_the_end(raw_upstream):
    _, port = await raw_upstream(lambda head: (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", True))
    pool = make_pool(port)
    head, body = await fetch(pool)
    assert body == b"all of it"
    assert not head.keep_alive
    await pool.close()


async def test_chunked_response_is_decoded_for_relay(raw_upstream):
    payload = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    server, port = await raw_upstream(lambda head: (payload, False))
    pool = make_pool(port)
    for _ in range(3):
        _, body = await fetch(pool)
        assert body == b"hello world"
    assert server.connections == 1
    await pool.close()


async def test_interim_100_continue_is_skipped(raw_upstream):
    _, port = await raw_upstream(lambda head: (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"), False))
    pool = make_pool(port)
    head, body = await fetch(pool)
    assert (head.status, body) == (200, b"final")
    await pool.close()


async def test_head_response_with_length_does_not_wait_for_a_body(raw_upstream):
    server, port = await raw_upstream(
        lambda head: ((b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", False) if head.startswith(b"HEAD")
                      else (ok(), False))
    )
    pool = make_pool(port)
    head, body = await fetch(pool, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", head_only=True)
    assert (head.status, body) == (200, b"")
    _, body = await fetch(pool)
    assert body == b"hello"
    assert server.connections == 1
    await pool.close()


async def test_invalid_response_is_a_protocol_error(raw_upstream):
    _, port = await raw_upstream(lambda head: (b"NOT HTTP AT ALL\r\n\r\n", True))
    pool = make_pool(port)
    with pytest.raises(UpstreamProtocolError):
        await fetch(pool)
    await pool.close()


async def test_truncated_body_is_an_error_not_a_short_success(raw_upstream):
    _, port = await raw_upstream(lambda head: (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part", True))
    pool = make_pool(port)
    exchange = await pool.exchange(GET, None, chunked=False, head_only=False)
    with pytest.raises(UpstreamUnavailable):
        await exchange.read_all()
    exchange.abort()
    await pool.close()


async def test_refused_connection_is_unavailable():
    pool = make_pool(free_port())
    with pytest.raises(UpstreamUnavailable):
        await fetch(pool)
    assert pool.open_connections == 0


async def test_no_answer_is_a_timeout(raw_upstream):
    never = asyncio.Event()

    async def hang(reader, writer):
        await never.wait()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    pool = make_pool(server.sockets[0].getsockname()[1], read_timeout=0.1)
    with pytest.raises(UpstreamTimeout):
        await fetch(pool)
    await wait_until(lambda: pool.open_connections == 0)  # the stuck connection is dropped, not pooled
    never.set()
    server.close()
    await pool.close()


async def test_idle_timeout_uses_the_injected_clock(raw_upstream):
    server, port = await raw_upstream(lambda head: (ok(), False))
    clock = ManualClock()
    pool = make_pool(port, clock=clock.monotonic, idle_timeout=30.0)
    await fetch(pool)
    clock.advance(29.9)
    await fetch(pool)
    assert server.connections == 1
    clock.advance(30.1)
    await fetch(pool)
    assert server.connections == 2
    await pool.close()


async def test_connection_cap_queues_requests(raw_upstream):
    server, port = await raw_upstream(lambda head: (ok(), False))
    pool = make_pool(port, max_connections=2)
    exchanges = [await pool.exchange(GET, None, chunked=False, head_only=False) for _ in range(2)]
    assert pool.open_connections == 2
    third = asyncio.create_task(fetch(pool))
    # Parked in the pool's queue (the pool shows its waiters nowhere else); past the cap it would
    # open a third connection instead and never queue.
    await wait_until(lambda: len(pool._slot_waiters) == 1, message="the third request did not queue")
    assert not third.done() and pool.open_connections == 2 and server.connections == 2
    for exchange in exchanges:
        await exchange.read_all()
        exchange.release()
    _, body = await asyncio.wait_for(third, 2)
    assert body == b"hello"
    assert server.connections == 2
    await pool.close()


async def test_gateway_relays_chunked_upstream_response(start_gateway, raw_upstream, client):
    payload = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    server, port = await raw_upstream(lambda head: (payload, False))
    gw = await start_gateway(gateway_config(f"http://127.0.0.1:{port}"))
    for _ in range(3):
        async with client.get(f"{gw.url}/x") as response:
            assert await response.read() == b"abc"
    assert server.connections == 1


async def test_gateway_cuts_the_client_off_when_upstream_truncates(start_gateway, raw_upstream, client):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"z" * 100_000
    _, port = await raw_upstream(lambda head: (big, True))
    gw = await start_gateway(gateway_config(f"http://127.0.0.1:{port}"))
    with pytest.raises(aiohttp_payload_errors()):
        async with client.get(f"{gw.url}/x") as response:
            await response.read()


def aiohttp_payload_errors():
    import aiohttp

    return (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
