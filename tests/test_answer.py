"""A buffered answer on the wire is what aiohttp's own `Response` sends for the same upstream answer.

`BufferedAnswer` writes the head itself instead of letting aiohttp build it; these tests run
both behind real aiohttp servers on loopback and compare the bytes, so a change in how aiohttp
prepares responses (keep-alive, HTTP/1.0, the fields it adds) fails here loudly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.web_request import BaseRequest

from gateway.problems import SERVER_NAME
from gateway.proxy.answer import buffered_answer
from gateway.proxy.headers import client_answer_lines, client_response_headers
from tests.support.configs import gateway_config

NGINX_LIKE = [(b"Server", b"nginx/1.24.0"), (b"Date", b"Wed, 02 Dec 2026 01:40:00 GMT"),
              (b"Content-Type", b"application/json"), (b"Content-Length", b"13"), (b"Connection", b"keep-alive")]
BODY = b'{"id": 42}\r\n\x00'


def reference(request: BaseRequest, status: int, reason: bytes, raw: list[tuple[bytes, bytes]],
              extra: dict[str, str], request_id: str, body: bytes) -> web.StreamResponse:
    """The answer as aiohttp's Response makes it (the handler's path before BufferedAnswer)."""
    headers, _ = client_response_headers(raw)
    headers.update(extra)
    headers["X-Request-Id"] = request_id
    headers.setdefault("Server", SERVER_NAME)
    via = headers.get("Via")
    headers["Via"] = f"{via}, 1.1 fairgate" if via else "1.1 fairgate"
    return web.Response(status=status, reason=reason.decode("utf-8", "replace") or None, headers=headers, body=body)


def buffered(request: BaseRequest, status: int, reason: bytes, raw: list[tuple[bytes, bytes]],
             extra: dict[str, str], request_id: str, body: bytes) -> web.StreamResponse:
    return buffered_answer(request, status, reason, client_answer_lines(raw), extra, request_id, body)


Answer = Callable[..., web.StreamResponse]
Serve = Callable[[Answer, int, bytes, list[tuple[bytes, bytes]], dict[str, str], bytes], Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.ServerRunner] = []

    async def start(answer: Answer, status: int, reason: bytes, raw: list[tuple[bytes, bytes]],
                    extra: dict[str, str], body: bytes) -> int:
        async def handler(request: BaseRequest) -> web.StreamResponse:
            return answer(request, status, reason, list(raw), extra, "req-1", body)

        runner = web.ServerRunner(web.Server(handler, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return runner.addresses[0][1]

    yield start
    for runner in runners:
        await runner.cleanup()


async def exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Each request's whole response, in turn, over one connection (until it is closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                assert not exc.partial
                answers.append(b"")  # closed before this request
                continue
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answers.append(head + await reader.readexactly(length))
        answers.append(await reader.read())  # what follows the last answer: nothing, or the close
    finally:
        writer.close()
    return answers


GET_11 = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
GET_11_CLOSE = b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
GET_10 = b"GET /a HTTP/1.0\r\nHost: t\r\n\r\n"
GET_10_KEEP = b"GET /a HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n"
SEQUENCES = {
    "1.1 keep-alive, then close": [GET_11, GET_11, GET_11_CLOSE],
    "1.0 keep-alive": [GET_10_KEEP, GET_10_KEEP, GET_10],
    "1.0 closes": [GET_10, GET_11],
}


@pytest.mark.parametrize("sequence", sorted(SEQUENCES))
async def test_an_upstream_answer_goes_out_byte_for_byte_as_aiohttp_would_send_it(serve, sequence):
    requests = SEQUENCES[sequence]
    args = (200, b"OK", NGINX_LIKE, {"RateLimit": "limit=10, remaining=9"}, BODY)
    expected = await exchange(await serve(reference, *args), requests)
    assert await exchange(await serve(buffered, *args), requests) == expected
    assert expected[0].endswith(BODY)


def fields(answer: bytes, masked: frozenset[bytes] = frozenset()) -> tuple[bytes, list[bytes], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, sorted(line.split(b":")[0] + b": *" if line.split(b":")[0].lower() in masked else line
                          for line in lines), body


@pytest.mark.parametrize(("status", "reason", "raw", "body"), [
    (200, b"", [(b"Content-Length", b"2")], b"{}"),  # no Date, Server or type: the gateway's, the phrase
    (404, b"Nope", [(b"Content-Length", b"0")], b""),  # empty: no default Content-Type
    (201, b"Cr\xe9\xe9", [(b"content-length", b"1"), (b"X-Request-Id", b"up-1"), (b"Keep-Alive", b"timeout=5")], b"x"),
    (500, b"Err", [(b"Connection", b"x-secret, close"), (b"X-Secret", b"s"), (b"Date", b"d"),
                   (b"Content-Length", b"1"), (b"X-Kept", b"k")], b"e"),
])
async def test_the_fields_aiohttp_adds_are_added_by_the_same_rules(serve, status, reason, raw, body):
    requests = [GET_11, GET_10]
    expected = await exchange(await serve(reference, status, reason, raw, {}, body), requests)
    got = await exchange(await serve(buffered, status, reason, raw, {}, body), requests)
    masked = frozenset({b"date"})  # aiohttp's own Date is now; the two servers may straddle a second
    assert [fields(answer, masked) for answer in got] == [fields(answer, masked) for answer in expected]
    assert all(b"\r\nDate: " in answer for answer in got[:2])


async def test_upstream_via_values_are_kept_and_gateway_fields_replace_the_upstream_ones(serve):
    raw = [(b"Via", b"1.1 cdn"), (b"RateLimit", b"upstream's"), (b"Via", b"1.0 edge"), (b"Content-Length", b"1")]
    port = await serve(buffered, 200, b"OK", raw, {"RateLimit": "limit=10"}, b"x")
    answer, _ = await exchange(port, [GET_11_CLOSE])
    _, lines, _ = fields(answer, frozenset({b"date"}))
    assert lines.count(b"RateLimit: limit=10") == 1 and b"RateLimit: upstream's" not in lines
    # aiohttp's multidict kept only the first Via; every hop is listed now, the gateway last.
    assert b"Via: 1.1 cdn, 1.0 edge, 1.1 fairgate" in lines


async def test_header_bytes_that_are_not_utf8_are_relayed_as_sent(serve):
    raw = [(b"X-Name", b"caf\xe9"), (b"Content-Length", b"1")]
    answer, _ = await exchange(await serve(buffered, 200, b"OK", raw, {}, b"x"), [GET_11_CLOSE])
    assert b"\r\nX-Name: caf\xe9\r\n" in answer


async def test_a_gateway_field_with_a_line_break_is_refused(serve):
    port = await serve(buffered, 200, b"OK", [(b"Content-Length", b"1")], {"Fair-Use-Warning": "a\r\nX-Evil: 1"}, b"x")
    answer, _ = await exchange(port, [GET_11_CLOSE])
    assert answer.startswith(b"HTTP/1.1 500") and b"X-Evil" not in answer


async def test_every_via_of_a_streamed_answer_is_kept_before_the_gateways(start_gateway, client):
    # The streamed path (chunked, no Content-Length) lists the same hops as the buffered one.
    async def upstream_handler(request: BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers=[("Via", "1.1 cdn"), ("Via", "1.0 edge")])
        await response.prepare(request)
        await response.write(b"chunk")
        await response.write_eof()
        return response

    runner = web.ServerRunner(web.Server(upstream_handler, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        gateway = await start_gateway(gateway_config(f"http://127.0.0.1:{runner.addresses[0][1]}"))
        async with client.get(f"{gateway.url}/stream") as response:
            assert response.headers.getall("Via") == ["1.1 cdn, 1.0 edge, 1.1 fairgate"]
            assert await response.read() == b"chunk"
    finally:
        await runner.cleanup()
