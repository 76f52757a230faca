"""Slow clients: headers and bodies that never finish are answered 408 and hold nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.configs import gateway_config
from tests.support.waiting import wait_until


async def slow_gateway(start_gateway, upstream, **server):
    config = gateway_config(upstream.url, **server)
    config["upstreams"]["app"]["max_in_flight"] = 50
    return await start_gateway(config)


def held_nothing(gw) -> bool:
    runtime = gw.server.runtimes.current
    pool, gate = runtime.pools["app"], runtime.gates["app"]
    return gw.server.metrics.in_flight == 0 and gate.in_flight == 0 and pool.open_connections == pool.idle_connections


async def send_and_read(gw, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    writer.write(data)
    response = await asyncio.wait_for(reader.read(), 10)  # read() returns once the gateway closes
    writer.close()
    return response


def problem_of(response: bytes) -> dict:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head
    return json.loads(body)


async def test_headers_that_never_finish_get_408_and_the_connection_closes(start_gateway, upstream):
    gw = await slow_gateway(start_gateway, upstream, header_read_timeout="200ms")
    response = await send_and_read(gw, b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Slow: a")
    assert response.startswith(b"HTTP/1.1 408 ")
    assert problem_of(response)["type"] == "urn:fairgate:problem:header-timeout"
    assert upstream.state.requests == 0


async def test_the_header_deadline_applies_to_each_request_on_a_kept_alive_connection(start_gateway, upstream):
    gw = await slow_gateway(start_gateway, upstream, header_read_timeout="200ms")
    reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n")
    writer.write(b"ok")  # the body in its own packet is not the next head
    assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1])
    await reader.readexactly(length)
    writer.write(b"GET /echo HTTP/1.1\r\nHo")
    rest = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 408 ")
    assert upstream.state.requests == 1


async def test_a_head_begun_behind_a_pipelined_request_gets_408(start_gateway, upstream):
    gw = await slow_gateway(start_gateway, upstream, header_read_timeout="200ms")
    response = await send_and_read(gw, b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\nGET /echo HTTP/1.1\r\nHo")
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 408 Request Timeout\r\n" in response
    assert upstream.state.requests == 1


async def test_a_head_begun_while_an_answer_is_pending_gets_408_after_it(start_gateway, upstream):
    gw = await slow_gateway(start_gateway, upstream, header_read_timeout="200ms")
    reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    writer.write(b"GET /stall HTTP/1.1\r\nHost: t\r\n\r\n")
    await upstream.state.stall_started.wait()
    writer.write(b"GET /echo HTTP/1.1\r\nHo")
    await asyncio.sleep(0.5)  # the header deadline passes while the first answer is pending
    upstream.state.release_stall.set()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 408 Request Timeout\r\n" in response


async def test_an_idle_kept_alive_connection_is_not_timed_out_by_the_header_deadline(start_gateway, upstream):
    gw = await slow_gateway(start_gateway, upstream, header_read_timeout="100ms")
    reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    for request in (b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n" * 2,  # pipelined, whole
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok"):
        writer.write(request)
        for _ in range(request.count(b"HTTP/1.1")):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            length = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            await reader.readexactly(int(length.split(b":")[1]))
        await asyncio.sleep(0.3)  # think time past the header deadline: idleness is keep-alive's business
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200 ")
    writer.close()
    assert upstream.state.requests == 4


async def test_a_body_shorter_than_its_content_length_gets_408_before_upstream(start_gateway, upstream):
    gw = await slow_gateway(start_gateway, upstream, body_idle_timeout="200ms")
    response = await send_and_read(gw, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    assert response.startswith(b"HTTP/1.1 408 ")
    assert problem_of(response)["type"] == "urn:fairgate:problem:body-timeout"
    assert upstream.state.requests == 0
    await wait_until(lambda: held_nothing(gw))


@pytest.mark.parametrize("timeouts", [
    {"body_idle_timeout": "200ms"},
    {"body_idle_timeout": "1h", "body_total_timeout": "300ms"},
])
async def test_a_chunked_upload_that_stops_is_cut_off_upstream_and_frees_its_slot(start_gateway, upstream, client,
                                                                                    timeouts):
    gw = await slow_gateway(start_gateway, upstream, **timeouts)
    response = await send_and_read(gw, b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                       b"5\r\nhello\r\n")
    assert response.startswith(b"HTTP/1.1 408 ")
    assert b"\r\nConnection: close" in response.partition(b"\r\n\r\n")[0]
    await wait_until(lambda: held_nothing(gw))  # the upstream connection was aborted, not pooled
    async with client.post(f"{gw.url}/upload", data=b"whole") as response:
        assert response.status == 200
        assert (await response.json())["size"] == 5


async def test_a_slow_but_steady_body_is_not_cut_off(start_gateway, upstream, client):
    gw = await slow_gateway(start_gateway, upstream, body_idle_timeout="5s")

    async def body():
        for _ in range(3):
            yield b"x" * 1000

    async with client.post(f"{gw.url}/upload", data=body()) as response:
        assert response.status == 200
        assert (await response.json())["size"] == 3000


async def test_a_client_that_stops_reading_a_download_is_cut_off_and_frees_its_slot(start_gateway, upstream, client):
    gw = await slow_gateway(start_gateway, upstream, send_timeout="300ms")
    reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    writer.write(b"GET /bytes/200000000 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
    writer.transport.pause_reading()  # and never reads again: the socket buffers fill up
    await wait_until(lambda: held_nothing(gw))  # the upstream download was aborted, not held
    writer.transport.abort()
    async with client.get(f"{gw.url}/bytes/300000") as response:  # a reader at its own pace is served whole
        assert response.status == 200
        assert len(await response.read()) == 300000


async def test_an_upstream_that_stops_reading_an_upload_gets_504_not_a_hang(start_gateway):
    stuck = asyncio.Event()

    async def never_read(reader, writer):
        await stuck.wait()
        writer.close()

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = gateway_config(f"http://127.0.0.1:{port}", routes=[
        {"name": "r", "path_prefix": "/", "upstream": "app", "max_body": "1GB"}])
    config["upstreams"]["app"].update(read_timeout="200ms", max_in_flight=5)
    gw = await start_gateway(config)
    reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n")

    async def upload():
        while True:
            writer.write(b"x" * 1_000_000)
            await writer.drain()

    uploading = asyncio.create_task(upload())
    try:
        assert (await asyncio.wait_for(reader.readline(), 20)).startswith(b"HTTP/1.1 504 ")
    finally:
        uploading.cancel()
        await asyncio.gather(uploading, return_exceptions=True)
        writer.transport.abort()
        stuck.set()
        server.close()
    await wait_until(lambda: held_nothing(gw))
