"""Structured JSON logs, and the access log."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from gateway.proxy.request_keys import CLIENT_IP, REQUEST_ID

# LogRecord attributes that are not user-supplied `extra` fields.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access logger would double ours.
    logging.getLogger("aiohttp.access").propagate = False


class JsonAccessLogger(AbstractAccessLogger):
    """One line per request, written after the response is sent."""

    def log(self, request: BaseRequest, response: StreamResponse, duration: float) -> None:
        self.logger.info(
            "access",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "bytes_out": response.body_length,
                "duration_ms": round(duration * 1000, 3),
                "client_ip": request.get(CLIENT_IP) or request.remote,
                "request_id": request.get(REQUEST_ID),
            },
        )
