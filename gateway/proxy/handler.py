"""The request path: route, check limits, forward upstream, stream the answer back."""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator, Protocol

from aiohttp import web
from aiohttp.web_request import BaseRequest

from gateway.auth.errors import AuthError
from gateway.auth.responses import auth_problem
from gateway.metrics import Metrics
from gateway.proxy.headers import VIA_TOKEN, client_response_headers, request_id_or_new, upstream_header_lines
from gateway.proxy.problems import problem_response
from gateway.proxy.request_keys import CLIENT_IP, IDENTITY, REQUEST_ID
from gateway.proxy.routing import has_dot_segments
from gateway.proxy.runtime import Runtime, RouteTarget
from gateway.proxy.websocket import is_websocket_upgrade, proxy_websocket
from gateway.upstream import Exchange, UpstreamError, UpstreamTimeout

log = logging.getLogger("fairgate.proxy")

# Bodies up to this size are read whole: one write instead of a streaming loop.
_BUFFER_LIMIT = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
_VIA = VIA_TOKEN.decode()


class RuntimeSource(Protocol):
    @property
    def current(self) -> Runtime: ...


class BodyTooLarge(Exception):
    pass


class ProxyHandler:
    """The aiohttp low-level handler for the proxy listener."""

    def __init__(self, runtimes: RuntimeSource, metrics: Metrics, *, scheme: str = "http") -> None:
        self._runtimes = runtimes
        self._metrics = metrics
        self._scheme = scheme.encode("ascii")

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        runtime = self._runtimes.current
        metrics = self._metrics
        request_id = request_id_or_new(request.headers.get("X-Request-Id"))
        request[REQUEST_ID] = request_id
        route_name = "-"
        status = 499  # stays so if the client goes away first
        metrics.in_flight += 1
        try:
            target = self._match(runtime, request)
            if isinstance(target, web.Response):
                response = target
            else:
                route_name = target.route.name
                response = await self._forward(runtime, target, request, request_id)
            status = response.status
            return response
        finally:
            metrics.in_flight -= 1
            metrics.observe(route_name, status, time.perf_counter() - started)

    def _match(self, runtime: Runtime, request: BaseRequest) -> RouteTarget | web.Response:
        path = request.raw_path.partition("?")[0]
        if not path.startswith("/") or has_dot_segments(path):
            return self._reject(request, 400, "bad-path", "Bad Request", "The request path is not a normalized absolute path.")
        target = runtime.router.match(request.host, path)
        if target is None:
            return self._reject(request, 404, "no-route", "Not Found", "No route matches this host and path.")
        route = target.route
        header_bytes = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
        if header_bytes > route.max_header_bytes:
            return self._reject(
                request, 431, "headers-too-large", "Request Header Fields Too Large",
                f"The request headers exceed {route.max_header_bytes} bytes on this route.",
            )
        length = request.content_length
        if length is not None and length > route.max_body:
            return self._reject(
                request, 413, "body-too-large", "Content Too Large",
                f"The request body exceeds {route.max_body} bytes on this route.",
            )
        return target

    def _reject(self, request: BaseRequest, status: int, slug: str, title: str, detail: str) -> web.Response:
        self._metrics.rejections.labels(slug).inc()
        return problem_response(
            status, slug, title, detail,
            headers={"X-Request-Id": request[REQUEST_ID]},
            extra={"request_id": request[REQUEST_ID]},
        )

    async def _forward(
        self, runtime: Runtime, target: RouteTarget, request: BaseRequest, request_id: str
    ) -> web.StreamResponse:
        peer = request.remote or ""
        route = target.route
        websocket = route.websocket and is_websocket_upgrade(request)
        lines, found, client_host = upstream_header_lines(
            request.raw_headers, replace_host=target.host_header,
            strip=target.strip_headers_websocket if websocket else target.strip_headers,
        )
        clients = runtime.client_addresses
        trusted = clients.is_trusted(peer)
        client_ip = request[CLIENT_IP] = (
            clients.resolve(peer, found.forwarded_for.decode("latin-1")) if trusted and found.forwarded_for else peer
        )
        if route.auth != "none":
            try:
                identity = await runtime.authenticator.authenticate(  # type: ignore[union-attr]
                    request.headers.get("Authorization"), client_ip,
                    required=route.auth == "required", scopes=route.required_scopes,
                )
            except AuthError as exc:
                self._metrics.rejections.labels(type(exc).__name__).inc()
                return auth_problem(exc, request_id)
            if identity is not None:
                request[IDENTITY] = identity
                lines.append(b"%s: %s\r\n" % (runtime.customer_header, identity.customer.encode()))
                lines.append(b"%s: %s\r\n" % (runtime.user_header, identity.user.encode()))
        peer_bytes = peer.encode("ascii")
        lines.append(b"X-Forwarded-For: %s\r\n" % (found.forwarded_for + b", " + peer_bytes if found.forwarded_for else peer_bytes))
        lines.append(b"X-Forwarded-Proto: %s\r\n" % (found.proto if trusted and found.proto else self._scheme))
        forwarded_host = found.host if trusted and found.host else client_host
        if forwarded_host:
            lines.append(b"X-Forwarded-Host: %s\r\n" % forwarded_host)
        lines.append(b"Via: %s\r\n" % (found.via + b", " + VIA_TOKEN if found.via else VIA_TOKEN))
        lines.append(b"X-Request-Id: %s\r\n" % request_id.encode("ascii"))
        if target.host_header is not None:
            lines.append(b"Host: %s\r\n" % target.host_header)

        if websocket:
            return await proxy_websocket(request, target, lines, self._metrics)

        length = request.content_length
        body: bytes | AsyncIterator[bytes] | None = None
        chunked = False
        if request.body_exists and request.headers.get("Expect", "").lower() == "100-continue":
            # The limits passed, so invite the body; the upstream never sees the Expect.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if length is None and request.body_exists:
            chunked = True
            body = _limited_body(request, route.max_body)
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif length:
            body = await request.read() if length <= _BUFFER_LIMIT else _limited_body(request, route.max_body)
            lines.append(b"Content-Length: %d\r\n" % length)
        elif length == 0 and request.method not in ("GET", "HEAD"):
            lines.append(b"Content-Length: 0\r\n")

        head = b"".join([_wire(f"{request.method} {request.raw_path} HTTP/1.1\r\n"), *lines, b"\r\n"])
        try:
            exchange = await target.pool.exchange(head, body, chunked=chunked, head_only=request.method == "HEAD")
        except BodyTooLarge:
            return self._reject(
                request, 413, "body-too-large", "Content Too Large",
                f"The request body exceeds {route.max_body} bytes on this route.",
            )
        except UpstreamError as exc:
            return self._upstream_failed(request, target, exc)
        return await self._relay(request, exchange, target, request_id)

    def _upstream_failed(self, request: BaseRequest, target: RouteTarget, exc: UpstreamError) -> web.Response:
        timed_out = isinstance(exc, UpstreamTimeout)
        self._metrics.upstream_errors.labels(target.upstream_name, type(exc).__name__).inc()
        log.warning(
            "upstream %s failed: %s", target.upstream_name, exc,
            extra={"request_id": request[REQUEST_ID], "route": target.route.name},
        )
        if timed_out:
            return self._reject(request, 504, "upstream-timeout", "Gateway Timeout", "The upstream did not answer in time.")
        return self._reject(request, 502, "upstream-unavailable", "Bad Gateway", "The upstream could not be reached or answered badly.")

    async def _relay(
        self, request: BaseRequest, exchange: Exchange, target: RouteTarget, request_id: str
    ) -> web.StreamResponse:
        upstream = exchange.head
        headers, length = client_response_headers(upstream.headers)
        headers["X-Request-Id"] = request_id
        via = headers.get("Via")
        headers["Via"] = f"{via}, {_VIA}" if via else _VIA
        reason = upstream.reason.decode("utf-8", "replace") or None
        status = upstream.status
        response: web.StreamResponse | None = None
        try:
            if request.method == "HEAD" or status in _NO_BODY_STATUSES:
                exchange.release()
                response = web.StreamResponse(status=status, reason=reason, headers=headers)
                if length is not None and status != 204:
                    response.content_length = length
                await response.prepare(request)
                await response.write_eof()
                return response
            if length is not None and length <= _BUFFER_LIMIT:
                body = await exchange.read_all()
                exchange.release()
                return web.Response(status=status, reason=reason, headers=headers, body=body)
            response = web.StreamResponse(status=status, reason=reason, headers=headers)
            if length is not None:
                response.content_length = length
            await response.prepare(request)
            while chunk := await exchange.read_chunk():
                await response.write(chunk)
            exchange.release()
            await response.write_eof()
            return response
        except UpstreamError as exc:
            exchange.abort()
            if response is None or not response.prepared:  # nothing of this response sent yet
                return self._upstream_failed(request, target, exc)
            # Part of the body is out: only a broken connection tells the client it is truncated.
            log.warning("upstream %s failed mid-response: %s", target.upstream_name, exc,
                        extra={"request_id": request_id})
            self._metrics.upstream_errors.labels(target.upstream_name, type(exc).__name__).inc()
            if request.transport is not None:
                request.transport.abort()
            return response
        except BaseException:
            exchange.abort()
            raise


def _wire(text: str) -> bytes:
    # aiohttp decodes the request line and headers as UTF-8 with surrogateescape; this
    # restores the exact bytes the client sent.
    return text.encode("utf-8", "surrogateescape")


async def _limited_body(request: BaseRequest, limit: int) -> AsyncIterator[bytes]:
    received = 0
    while chunk := await request.content.readany():
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge()
        yield chunk
