"""What a client and an upstream see through the gateway."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json

import aiohttp
import pytest

from tests.support.configs import gateway_config
from tests.support.ports import free_port
from tests.support.upstream_app import header, pattern_bytes
from tests.support.waiting import wait_until


def header_names(echo: dict) -> list[str]:
    return [name.lower() for name, _ in echo["headers"]]


async def test_get_is_forwarded_with_path_and_query_unchanged(gateway, client):
    async with client.get(f"{gateway.url}/echo/a%20b/c%3Fd;v=1?x=1&y=%20z") as response:
        assert response.status == 200
        echo = await response.json()
    assert echo["method"] == "GET"
    assert echo["path"] == "/echo/a%20b/c%3Fd;v=1?x=1&y=%20z"


async def test_forwarded_headers_are_set(gateway, client):
    async with client.get(f"{gateway.url}/echo", headers={"X-Forwarded-For": "203.0.113.9"}) as response:
        echo = await response.json()
        returned_id = response.headers["X-Request-Id"]
        assert "1.1 fairgate" in response.headers["Via"]
    assert header(echo, "X-Forwarded-For") == "203.0.113.9, 127.0.0.1"
    assert header(echo, "X-Forwarded-Proto") == "http"
    assert header(echo, "X-Forwarded-Host") == gateway.url.removeprefix("http://")
    assert header(echo, "Via") == "1.1 fairgate"
    assert header(echo, "X-Request-Id") == returned_id
    assert len(returned_id) == 32


async def test_client_request_id_is_kept_and_echoed(gateway, client):
    async with client.get(f"{gateway.url}/echo", headers={"X-Request-Id": "req-abc.123"}) as response:
        assert response.headers["X-Request-Id"] == "req-abc.123"
        assert header(await response.json(), "X-Request-Id") == "req-abc.123"


async def test_malformed_request_id_is_replaced(gateway, client):
    async with client.get(f"{gateway.url}/echo", headers={"X-Request-Id": "bad id with spaces"}) as response:
        assert response.headers["X-Request-Id"] != "bad id with spaces"
        assert header(await response.json(), "X-Request-Id") == response.headers["X-Request-Id"]


async def test_untrusted_peer_cannot_set_forwarded_proto_or_host(gateway, client):
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    async with client.get(f"{gateway.url}/echo", headers=headers) as response:
        echo = await response.json()
    assert header(echo, "X-Forwarded-Proto") == "http"
    assert header(echo, "X-Forwarded-Host") != "evil.example"


async def test_trusted_proxy_forwarding_headers_are_believed(start_gateway, upstream, client, caplog):
    gw = await start_gateway(gateway_config(upstream.url, trusted_proxies=["127.0.0.0/8"], access_log=True))
    headers = {"X-Forwarded-For": "198.51.100.7, 127.0.0.5", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "api.example.com"}
    with caplog.at_level("INFO", logger="fairgate.access"):
        async with client.get(f"{gw.url}/echo", headers=headers) as response:
            echo = await response.json()
        await wait_until(lambda: any(r.name == "fairgate.access" for r in caplog.records))
    assert header(echo, "X-Forwarded-For") == "198.51.100.7, 127.0.0.5, 127.0.0.1"
    assert header(echo, "X-Forwarded-Proto") == "https"
    assert header(echo, "X-Forwarded-Host") == "api.example.com"
    access = next(r for r in caplog.records if r.name == "fairgate.access")
    # 127.0.0.1 and 127.0.0.5 are trusted hops; the client is the first untrusted one.
    assert access.client_ip == "198.51.100.7"


async def test_hop_by_hop_headers_are_removed_towards_upstream(gateway, client):
    headers = {
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "do-not-forward",
        "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive",
        "TE": "trailers",
        "Upgrade": "h2c",
        "X-End-To-End": "kept",
    }
    async with client.get(f"{gateway.url}/echo", headers=headers) as response:
        names = header_names(await response.json())
    for hop in ("x-secret-hop", "keep-alive", "proxy-connection", "te", "upgrade"):
        assert hop not in names
    assert "x-end-to-end" in names


async def test_hop_by_hop_headers_are_removed_towards_client(gateway, client):
    async with client.get(f"{gateway.url}/hop") as response:
        assert await response.text() == "hop"
        for hop in ("X-Private-Hop", "Keep-Alive", "Proxy-Connection", "Trailer"):
            assert hop not in response.headers
        assert response.headers["X-End-To-End"] == "kept"
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_content_encoding_passes_through_untouched(gateway, client):
    async with client.get(f"{gateway.url}/gzip", headers={"Accept-Encoding": "gzip"}) as response:
        raw = await response.read()
        assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw) == b'{"compressed": true}' * 100


async def test_compressed_request_body_reaches_upstream_as_sent(gateway, client):
    body = gzip.compress(b"x" * 10_000, mtime=0)
    async with client.post(f"{gateway.url}/echo", data=body, headers={"Content-Encoding": "gzip"}) as response:
        echo = await response.json()
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("length", [0, 1, 65536, 65537, 3_000_000])
async def test_request_bodies_arrive_intact(gateway, client, length):
    body = bytes(i % 251 for i in range(length))
    async with client.post(f"{gateway.url}/echo", data=body) as response:
        echo = await response.json()
    assert echo["body_length"] == length
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_expect_100_continue_is_answered_by_the_gateway(gateway):
    reader, writer = await asyncio.open_connection(*gateway.server.proxy_address)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readline(), 5) == b"HTTP/1.1 100 Continue\r\n"
    assert await reader.readline() == b"\r\n"
    writer.write(b"hello")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1])
    echo = json.loads(await reader.readexactly(length))
    writer.close()
    assert echo["body_length"] == 5
    assert "expect" not in header_names(echo)


async def test_body_over_limit_is_refused_before_continue(start_gateway, upstream):
    gw = await start_gateway(
        gateway_config(upstream.url, routes=[{"name": "r", "path_prefix": "/", "upstream": "app", "max_body": "10B"}])
    )
    reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\nExpect: 100-continue\r\n\r\n")
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 413")
    writer.close()


async def test_chunked_request_body_is_streamed_upstream(gateway, client):
    async def generate():
        for chunk in pattern_bytes(1_000_000):
            yield chunk

    async with client.post(f"{gateway.url}/upload", data=generate()) as response:
        result = await response.json()
    assert result["size"] == 1_000_000
    assert result["sha256"] == hashlib.sha256(b"".join(pattern_bytes(1_000_000))).hexdigest()
    assert result["transfer_encoding"] == "chunked"


@pytest.mark.parametrize("with_length", [True, False])
async def test_response_bodies_stream_intact(gateway, client, with_length):
    size = 5_000_123
    query = "?length=1" if with_length else ""
    async with client.get(f"{gateway.url}/bytes/{size}{query}") as response:
        digest = hashlib.sha256()
        async for chunk in response.content.iter_any():
            digest.update(chunk)
        if with_length:
            assert response.headers["Content-Length"] == str(size)
    assert digest.hexdigest() == hashlib.sha256(b"".join(pattern_bytes(size))).hexdigest()


async def test_head_keeps_content_length_and_sends_no_body(gateway, client):
    async with client.head(f"{gateway.url}/bytes/1234?length=1") as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "1234"
        assert await response.read() == b""
    # The pooled connection is still usable after a HEAD.
    async with client.get(f"{gateway.url}/echo") as response:
        assert response.status == 200


@pytest.mark.parametrize("code", [201, 204, 304, 404, 500, 503])
async def test_upstream_status_codes_pass_through(gateway, client, code):
    async with client.get(f"{gateway.url}/status/{code}") as response:
        assert response.status == code
        if code in (204, 304):
            assert response.headers["X-Status"] == str(code)
            assert await response.read() == b""


async def test_problem_for_unknown_route(start_gateway, upstream, client):
    gw = await start_gateway(gateway_config(upstream.url, routes=[{"name": "api", "path_prefix": "/api/", "upstream": "app"}]))
    async with client.get(f"{gw.url}/other") as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        problem = await response.json()
    assert problem["type"] == "urn:fairgate:problem:no-route"
    assert problem["status"] == 404


@pytest.mark.parametrize("path", [
    "/echo/%7Ejohn",  # Java's URLEncoder, PHP's and older Pythons' quote encode '~'
    "/echo/report%2D2024%5Ffinal%2Epdf",
    "/echo/files/a%20b.txt", "/echo/J%C3%BCrgen", "/echo/me%40acme.com", "/echo/~user/a+b;jsessionid=1A/",
    "/echo/tickets?next=../../x&p=a%2Fb//c",
])
async def test_paths_real_clients_send_are_forwarded_unchanged(gateway, client, path):
    reader, writer = await asyncio.open_connection(*gateway.server.proxy_address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:300]
    assert json.loads(response.partition(b"\r\n\r\n")[2])["path"] == path


@pytest.mark.parametrize("path", ["/public/../echo", "/public/%2e%2e/echo", "/a/./echo", "/x/%2E%2E%2Fecho"])
async def test_paths_with_dot_segments_are_rejected(gateway, path):
    reader, writer = await asyncio.open_connection(*gateway.server.proxy_address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 400")


async def test_body_over_route_limit_gets_413(start_gateway, upstream, client):
    gw = await start_gateway(
        gateway_config(upstream.url, routes=[{"name": "small", "path_prefix": "/", "upstream": "app", "max_body": "1KB"}])
    )
    async with client.post(f"{gw.url}/echo", data=b"x" * 1001) as response:
        assert response.status == 413
        assert response.content_type == "application/problem+json"
        assert (await response.json())["type"] == "urn:fairgate:problem:body-too-large"
    assert upstream.state.requests == 0

    async def generate():
        for _ in range(10):
            yield b"y" * 200

    async with client.post(f"{gw.url}/upload", data=generate()) as response:
        assert response.status == 413
        assert response.content_type == "application/problem+json"
    async with client.post(f"{gw.url}/echo", data=b"x" * 1000) as response:
        assert response.status == 200


async def test_headers_over_route_limit_get_431(start_gateway, upstream, client):
    gw = await start_gateway(gateway_config(
        upstream.url, routes=[{"name": "r", "path_prefix": "/", "upstream": "app", "max_header_bytes": "2KB"}]
    ))
    async with client.get(f"{gw.url}/echo", headers={"X-Big": "a" * 3000}) as response:
        assert response.status == 431
        assert response.content_type == "application/problem+json"
        assert (await response.json())["type"] == "urn:fairgate:problem:headers-too-large"


async def test_header_line_over_parser_limit_gets_431_problem(start_gateway, upstream):
    gw = await start_gateway(gateway_config(upstream.url, max_header_line="4KB"))
    reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Huge: " + b"a" * 70_000 + b"\r\n\r\n")
    response = await reader.read()
    writer.close()
    assert response.split(b" ", 2)[1] == b"431"
    assert b"application/problem+json" in response
    assert b"Traceback" not in response


async def test_garbage_request_gets_400_problem(gateway):
    reader, writer = await asyncio.open_connection(*gateway.server.proxy_address)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nBad Header Without Colon\r\n\r\n")
    response = await reader.read()
    writer.close()
    assert response.split(b" ", 2)[1] == b"400"
    assert b"application/problem+json" in response


async def test_unreachable_upstream_gets_502(start_gateway, client):
    gw = await start_gateway(gateway_config(f"http://127.0.0.1:{free_port()}"))
    async with client.get(f"{gw.url}/echo") as response:
        assert response.status == 502
        assert response.content_type == "application/problem+json"
        problem = await response.json()
    assert problem["type"] == "urn:fairgate:problem:upstream-unavailable"
    assert "127.0.0.1" not in problem["detail"]  # no internal addresses to clients


async def test_slow_upstream_gets_504(start_gateway, upstream, client):
    config = gateway_config(upstream.url)
    config["upstreams"]["app"]["read_timeout"] = "200ms"
    gw = await start_gateway(config)
    async with client.get(f"{gw.url}/stall") as response:
        assert response.status == 504
        assert response.content_type == "application/problem+json"
        assert (await response.json())["type"] == "urn:fairgate:problem:upstream-timeout"


async def test_client_disconnect_cancels_the_upstream_call(gateway, upstream):
    _reader, writer = await asyncio.open_connection(*gateway.server.proxy_address)
    writer.write(b"GET /stall HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(upstream.state.stall_started.wait(), 5)
    writer.close()
    await asyncio.wait_for(upstream.state.cancelled.wait(), 5)


async def test_websocket_echo_through_gateway(gateway, client):
    async with client.ws_connect(f"{gateway.url}/ws", protocols=("chat.v1",)) as ws:
        assert ws.protocol == "chat.v1"
        await ws.send_str("hello")
        assert (await ws.receive_str()) == "echo:hello"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive_bytes()) == b"\x03\x02\x01"
        await ws.close()
    assert ws.close_code == aiohttp.WSCloseCode.OK


async def test_websocket_to_unreachable_upstream_gets_502(start_gateway, client):
    gw = await start_gateway(gateway_config(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as failure:
        await client.ws_connect(f"{gw.url}/ws")
    assert failure.value.status == 502


async def test_host_routing_prefers_exact_host(start_gateway, upstream, client):
    routes = [
        {"name": "default", "path_prefix": "/", "upstream": "app"},
        {"name": "missing", "path_prefix": "/", "host": "other.example", "upstream": "nowhere"},
    ]
    config = gateway_config(upstream.url, routes=routes)
    config["upstreams"]["nowhere"] = {"url": f"http://127.0.0.1:{free_port()}", "connect_timeout": "1s"}
    gw = await start_gateway(config)
    async with client.get(f"{gw.url}/echo") as response:
        assert response.status == 200
    async with client.get(f"{gw.url}/echo", headers={"Host": "Other.Example:8080"}) as response:
        assert response.status == 502


async def test_preserve_host_false_sends_upstream_authority(start_gateway, upstream, client):
    config = gateway_config(upstream.url)
    config["upstreams"]["app"]["preserve_host"] = False
    gw = await start_gateway(config)
    async with client.get(f"{gw.url}/echo", headers={"Host": "public.example"}) as response:
        echo = await response.json()
    assert header(echo, "Host") == f"127.0.0.1:{upstream.port}"
    assert header(echo, "X-Forwarded-Host") == "public.example"


async def test_too_many_headers_get_431_problem(gateway):
    reader, writer = await asyncio.open_connection(*gateway.server.proxy_address)
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(200))
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
    response = await reader.read()
    writer.close()
    assert response.split(b" ", 2)[1] == b"431"
    assert b"application/problem+json" in response


async def test_gateway_answers_name_no_versions_and_upstream_server_passes_through(start_gateway, client):
    from tests.support.raw_upstream import RawUpstream

    def script(head: bytes) -> tuple[bytes, bool]:
        if head.startswith(b"GET /theirs "):
            return b"HTTP/1.1 200 OK\r\nServer: Apache/2.4.1 (Unix)\r\nContent-Length: 2\r\n\r\nok", False
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False

    raw = RawUpstream(script)
    port = await raw.start()
    try:
        gw = await start_gateway(gateway_config(f"http://127.0.0.1:{port}", routes=[
            {"name": "app", "path_prefix": "/", "upstream": "app"}]))
        async with client.get(f"{gw.url}/theirs") as response:
            assert response.headers.getall("Server") == ["Apache/2.4.1 (Unix)"]
        own = [f"{gw.url}/mine", f"{gw.admin_url}/healthz", f"{gw.admin_url}/metrics", f"{gw.admin_url}/admin/reload"]
        for url in own:
            async with client.get(url) as response:
                assert response.headers.getall("Server") == ["fairgate"], url
        reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
        writer.write(b"GET /x/%2e%2e/y HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        refused = await reader.read()
        writer.close()
        assert refused.startswith(b"HTTP/1.1 400") and b"\r\nServer: fairgate\r\n" in refused
    finally:
        await raw.stop()


@pytest.mark.parametrize("path", [
    "/healthz/..;/api/v1/whoami", "/healthz/..%5capi/v1/whoami", "/healthz/..%5Capi/v1/whoami",
    "/healthz/%2e%2e/api/v1/whoami", "/healthz/..\\api/v1/whoami", "/healthz/%u002e%u002e/api/v1/whoami",
    "//api/v1/whoami", "/;/api/v1/whoami", "/%61pi/v1/whoami", "/healthz/%00",
])
async def test_traversal_past_an_open_route_is_refused_before_upstream(start_gateway, upstream, path):
    from tests.support.configs import auth_config

    gw = await start_gateway(auth_config(upstream, routes=[
        {"name": "health", "path_prefix": "/healthz", "upstream": "app", "auth": "none"},
        {"name": "open", "path_prefix": "/", "upstream": "app", "auth": "none"},
        {"name": "api", "path_prefix": "/api/", "upstream": "app"},
    ]))
    reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode("latin-1"))
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 400"), response[:200]
    assert b"application/problem+json" in response and b"bad-path" in response
    assert upstream.state.requests == 0


async def test_aborted_uploads_leave_no_unretrieved_future_and_a_healthy_pool(gateway, upstream, client):
    import gc

    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    pool = gateway.server.runtimes.current.pools["app"]
    try:
        for _ in range(20):
            _reader, writer = await asyncio.open_connection(*gateway.server.proxy_address)
            writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
            await wait_until(lambda: pool.open_connections > pool.idle_connections)  # the upload is upstream
            writer.transport.abort()
            await wait_until(lambda: pool.open_connections == pool.idle_connections)
        gc.collect()  # a lost future's exception is reported when it is collected
        async with client.post(f"{gateway.url}/echo", data=b"still fine") as response:
            assert response.status == 200
    finally:
        loop.set_exception_handler(previous)
    assert [context.get("message") for context in errors] == []
