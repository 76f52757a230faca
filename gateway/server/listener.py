"""The proxy listener's HTTP server: aiohttp's low-level server, with problem+json errors
and a deadline for request headers.

aiohttp answers requests it cannot parse (and handler crashes) with text/plain; a gateway
answers every error the same documented way, so that one hook is replaced. aiohttp has no
header-read timeout (its keep-alive timeout only closes connections with nothing pending), so a
client trickling a header in holds the connection; the handler here answers 408 and closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.problems import PROBLEM_CONTENT_TYPE, SERVER_NAME, problem_body, problem_response
from gateway.server.logs import JsonAccessLogger

log = logging.getLogger("fairgate.server")


def _raw_problem(status: int, reason: str, slug: str, detail: str) -> bytes:
    """A whole problem+json response, for answering where aiohttp has no request to answer."""
    body = problem_body(status, slug, reason, detail)
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {PROBLEM_CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nServer: {SERVER_NAME}\r\n\r\n")
    return head.encode() + body


_HEADER_TIMEOUT_RESPONSE = _raw_problem(408, "Request Timeout", "header-timeout",
                                        "The request headers did not arrive in time.")


class _ProblemRequestHandler(RequestHandler):
    __slots__ = ("_header_read_timeout", "_header_timer", "_last_body")

    def __init__(self, manager: Any, *, header_read_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_read_timeout = header_read_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._last_body: Any = None  # the body stream of the newest request head parsed

    def data_received(self, data: bytes) -> None:
        # Bytes that arrive after the newest request's body has ended are the next request's
        # head; if they do not complete it, the clock runs from these first bytes.
        last = self._last_body
        between_requests = last is None or last is EMPTY_PAYLOAD or last.is_eof()
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            if self._messages:
                self._last_body = self._messages[-1][1]
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            # A bodiless request ends at its blank line: bytes after it (pipelined in the same
            # packet) are the next request's head, begun.
            if self._last_body is EMPTY_PAYLOAD and not data.endswith(b"\r\n\r\n") and not self._upgraded:
                self._start_header_timer()
        elif between_requests and self._header_timer is None and not self._upgraded and data:
            self._start_header_timer()

    def _start_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._header_read_timeout, self._header_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _header_timed_out(self) -> None:
        self._header_timer = None
        # aiohttp's loop waits on `_waiter` only while no complete request is queued or handled.
        waiter = self._waiter
        if waiter is None and self.transport is not None and not self._force_close and not self._upgraded:
            # An earlier request is still being answered; the head begun meanwhile is still
            # incomplete (completing it cancels this timer): judge it after that answer.
            self._start_header_timer()
        elif waiter is not None and not waiter.done() and self.transport is not None:
            log.info("request headers from %s did not arrive in time",
                     (self.transport.get_extra_info("peername") or ("?",))[0])
            self.transport.write(_HEADER_TIMEOUT_RESPONSE)
            self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; closing the connection")
        too_large = _headers_too_large(exc)
        if too_large is not None:
            response = problem_response(431, "headers-too-large", "Request Header Fields Too Large",
                                        f"{too_large} than the gateway accepts.")
            log.info("rejected request with headers too large from %s", request.remote)
        elif isinstance(exc, BadHttpMessage):
            response = problem_response(400, "bad-request", "Bad Request", "The request is not valid HTTP/1.1.")
            if not isinstance(exc, BadHttpMethod):
                log.info("rejected malformed request from %s: %s", request.remote, exc)
        elif status == 504:
            response = problem_response(504, "timeout", "Gateway Timeout", "The request took too long.")
        else:
            log.error("unhandled error answering %s", request.remote, exc_info=exc)
            response = problem_response(
                500, "internal-error", "Internal Server Error", "The gateway failed to handle this request."
            )
        response.force_close()
        return response


def _headers_too_large(exc: BaseException | None) -> str | None:
    """What was too large, when aiohttp refused the head for its size (431, not 400)."""
    if isinstance(exc, LineTooLong):
        return "A request line or header field is longer"
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:  # aiohttp says 400
        return "The request has more header fields"
    return None


class ProxyServer(web.Server):
    """aiohttp's low-level Server whose connections answer errors as problem+json."""

    def __init__(self, handler: Any, *, header_read_timeout: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._header_read_timeout = header_read_timeout

    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, header_read_timeout=self._header_read_timeout,
                                      **self._kwargs)


def make_proxy_server(handler: Any, *, max_line: int, keepalive_timeout: float, header_read_timeout: float,
                      access_log: bool) -> ProxyServer:
    return ProxyServer(
        handler,
        header_read_timeout=header_read_timeout,
        # A client that goes away cancels its handler, and so its upstream exchange.
        handler_cancellation=True,
        # Bodies are relayed as sent; decoding them would alter what upstream receives.
        auto_decompress=False,
        max_line_size=max_line,
        max_field_size=max_line,
        keepalive_timeout=keepalive_timeout,
        access_log_class=JsonAccessLogger,
        access_log=logging.getLogger("fairgate.access") if access_log else None,
    )
