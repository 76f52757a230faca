"""The proxy listener's HTTP server: aiohttp's low-level server, with problem+json errors.

aiohttp answers requests it cannot parse (and handler crashes) with text/plain; a gateway
answers every error the same documented way, so that one hook is replaced.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.proxy.problems import problem_response
from gateway.server.logs import JsonAccessLogger

log = logging.getLogger("fairgate.server")


class _ProblemRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; closing the connection")
        if isinstance(exc, LineTooLong):
            response = problem_response(
                431, "headers-too-large", "Request Header Fields Too Large",
                "A request line or header field is longer than the gateway accepts.",
            )
            log.info("rejected request with an oversized line from %s", request.remote)
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
            # aiohttp's parser says 400; RFC 6585 has the precise answer.
            response = problem_response(
                431, "headers-too-large", "Request Header Fields Too Large",
                "The request has more header fields than the gateway accepts.",
            )
            log.info("rejected request with too many headers from %s", request.remote)
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


class ProxyServer(web.Server):
    """aiohttp's low-level Server whose connections answer errors as problem+json."""

    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


def make_proxy_server(handler: Any, *, max_line: int, keepalive_timeout: float, access_log: bool) -> ProxyServer:
    return ProxyServer(
        handler,
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
