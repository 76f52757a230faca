"""Structured JSON logs, and the access log."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import time
from typing import Any, TextIO

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


# Access lines written together, at most this long after the first of them was logged.
_ACCESS_FLUSH_SECONDS = 0.05


class JsonAccessLogger(AbstractAccessLogger):
    """One line per request, written after the response is sent.

    With the JSON log format and nothing else listening (no other handler, as in production),
    the line is the one JsonFormatter would write, built directly and written with the lines
    of the same 50 ms in one write, off the request path: the logging machinery (a LogRecord,
    the handler lock, a write and flush per line) cost more than a proxied request's own work.
    Anything else (a test's capture handler, the text format) goes through logging as before.
    """

    def log(self, request: BaseRequest, response: StreamResponse, duration: float) -> None:
        extra = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "bytes_out": response.body_length,
            "duration_ms": round(duration * 1000, 3),
            "client_ip": request.get(CLIENT_IP) or request.remote,
            "request_id": request.get(REQUEST_ID),
        }
        stream = _json_stream(self.logger)
        if stream is None:
            self.logger.info("access", extra=extra)
        else:
            _ACCESS_LINES.add(stream, self.logger.name, extra)


def _json_stream(logger: logging.Logger) -> TextIO | None:
    """The stream JSON lines go to when the root's one JSON handler is all that hears `logger`."""
    if logger.handlers or not logger.propagate or not logger.isEnabledFor(logging.INFO):
        return None
    handlers = logging.getLogger().handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if type(handler) is not logging.StreamHandler or not isinstance(handler.formatter, JsonFormatter):
        return None
    if handler.level > logging.INFO or handler.filters or logger.filters:
        return None
    stream: TextIO = handler.stream
    return stream


class _AccessLines:
    """Access lines waiting for their batched write."""

    __slots__ = ("_lines", "_stream", "_second", "_stamp", "_registered")

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._stream: TextIO | None = None
        self._second = -1
        self._stamp = ""
        self._registered = False

    def add(self, stream: TextIO, logger: str, extra: dict[str, Any]) -> None:
        if stream is not self._stream:
            self.flush()
            self._stream = stream
        now = time.time()
        second = int(now)
        if second != self._second:  # the formatted second is reused for the lines of the same second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry = {"ts": f"{self._stamp}.{int((now - second) * 1000):03d}Z", "level": "info", "logger": logger,
                 "msg": "access", **extra}
        self._lines.append(json.dumps(entry, default=str))
        if len(self._lines) == 1:
            if not self._registered:
                self._registered = True
                atexit.register(self.flush)
            try:
                asyncio.get_running_loop().call_later(_ACCESS_FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (not the server): write at once
                self.flush()

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines and self._stream is not None:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # a closed or broken stderr loses access lines, as logging would
                pass


_ACCESS_LINES = _AccessLines()
