"""WebSocket upgrades, proxied message by message."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from gateway.metrics import Metrics
from gateway.problems import SERVER_NAME, problem_response

if TYPE_CHECKING:  # runtime.py imports this module
    from gateway.proxy.runtime import RouteTarget

log = logging.getLogger("fairgate.websocket")

# The handshake is redone on the upstream leg; the client's copies must not leak into it.
WEBSOCKET_HANDSHAKE = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol"}
)


def is_websocket_upgrade(request: BaseRequest) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


async def proxy_websocket(
    request: BaseRequest, target: RouteTarget, lines: list[bytes], metrics: Metrics
) -> web.StreamResponse:
    """Connect upstream with the already-filtered header `lines`, then relay messages both ways."""
    headers: CIMultiDict[str] = CIMultiDict()
    for line in b"".join(lines).split(b"\r\n"):  # an element may hold several fields (the forwarding block)
        if not line:
            continue
        name, _, value = line.partition(b": ")
        headers.add(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    pool = target.pool
    timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=pool.read_timeout)
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, connect=pool.connect_timeout), auto_decompress=False
    )
    try:
        try:
            upstream = await session.ws_connect(
                target.ws_base_url + request.raw_path, headers=headers, protocols=protocols, timeout=timeout,
                autoping=False, max_msg_size=0,
            )
        except TimeoutError:
            metrics.upstream_errors.labels(target.route.upstream, "UpstreamTimeout").inc()
            return problem_response(504, "upstream-timeout", "Gateway Timeout", "The upstream did not answer in time.")
        except (aiohttp.ClientError, OSError) as exc:
            metrics.upstream_errors.labels(target.route.upstream, "UpstreamUnavailable").inc()
            log.warning("websocket upstream %s failed: %s", target.route.upstream, exc)
            return problem_response(
                502, "upstream-unavailable", "Bad Gateway", "The upstream refused the WebSocket connection."
            )
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (), autoping=False,
                                       max_msg_size=0)
        client.headers["Server"] = SERVER_NAME
        await client.prepare(request)
        await _pump_both_ways(client, upstream)
        return client
    finally:
        await session.close()


async def _pump_both_ways(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    to_upstream = asyncio.create_task(_pump(client, upstream))
    to_client = asyncio.create_task(_pump(upstream, client))
    try:
        done, _pending = await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_upstream, to_client):
            task.cancel()
        await asyncio.gather(to_upstream, to_client, return_exceptions=True)
    close_code = (upstream.close_code if to_client in done else client.close_code) or 1000
    if not client.closed:
        await client.close(code=close_code)
    if not upstream.closed:
        await upstream.close(code=close_code)


# Either leg: the client's (server side) or the upstream's (client side); both relay alike.
_WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: _WebSocket, sink: _WebSocket) -> None:
    async for message in source:
        if message.type == WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type == WSMsgType.PING:
            await sink.ping(message.data)
        elif message.type == WSMsgType.PONG:
            await sink.pong(message.data)
        else:
            return
