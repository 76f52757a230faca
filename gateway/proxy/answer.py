"""A buffered upstream answer, written to the client in one piece.

Most answers are small and come whole (a Content-Length up to the buffer limit). For them
aiohttp's `Response` would decode every header into a multidict, copy it, add its own fields,
and serialise it back: about a quarter of a proxied request's instructions. The upstream's
header bytes, already filtered (`client_answer_lines`), are written instead, with the fields
aiohttp's `Response` adds (Content-Length, Content-Type when missing, Date when missing,
Connection as the request's keep-alive needs) added here by the same rules.

Only public aiohttp API is used: a `StreamResponse` subclass overriding `prepare`, `write_eof`,
`keep_alive`, `prepared` and `body_length`, and the request's stream writer's `write_eof`.
tests/test_answer.py pins the bytes on the wire against what aiohttp's own `Response` sends.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest

from gateway.problems import SERVER_NAME
from gateway.proxy.headers import VIA_TOKEN, AnswerLines

# aiohttp refuses header values with these (header injection); so does this writer.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_SERVER_LINE = f"Server: {SERVER_NAME}\r\n".encode()
_DEFAULT_TYPE_LINE = b"Content-Type: application/octet-stream\r\n"
_KEEP_ALIVE_LINE = b"Connection: keep-alive\r\n"
_CLOSE_LINE = b"Connection: close\r\n"

# Status lines by (HTTP version, status, upstream's reason bytes): an upstream answers with a
# handful. Bounded, so an upstream inventing reasons cannot grow it.
_STATUS_LINES: dict[tuple[int, int, int, bytes], bytes] = {}
_MAX_STATUS_LINES = 256


def _status_line(major: int, minor: int, status: int, reason: bytes) -> bytes:
    key = (major, minor, status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        # As aiohttp does: the reason as text (invalid UTF-8 replaced), or the standard phrase.
        text = reason.decode("utf-8", "replace") or _PHRASES.get(status, "")
        line = f"HTTP/{major}.{minor} {status} {text}\r\n".encode()
        if len(_STATUS_LINES) < _MAX_STATUS_LINES:
            _STATUS_LINES[key] = line
    return line


class _DateLine:
    """The Date field aiohttp would add, formatted once a second."""

    __slots__ = ("second", "line")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.line = f"Date: {formatdate(second, usegmt=True)}\r\n".encode("ascii")
        return self.line


_DATE = _DateLine()


def _field(name: str, value: str) -> bytes:
    if _FORBIDDEN.search(value) is not None or _FORBIDDEN.search(name) is not None:
        raise ValueError("Forbidden control character detected in headers. Potential header injection attack.")
    return f"{name}: {value}\r\n".encode()


class BufferedAnswer(web.StreamResponse):
    """A whole answer: its head and body leave in one write when aiohttp prepares it."""

    def __init__(self, status: int, head: list[bytes], body: bytes) -> None:
        super().__init__(status=status)
        self._head = head  # status line and fields, without Connection and the blank line
        self._whole_body = body
        self._keep: bool | None = None
        self._written = False
        self._length = 0

    @property
    def prepared(self) -> bool:
        return self._written

    @property
    def keep_alive(self) -> bool | None:
        return self._keep

    @property
    def body_length(self) -> int:
        return self._length

    def force_close(self) -> None:
        if self._written:
            raise RuntimeError("the answer has been sent")
        self._keep = False

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self._written:
            return None
        self._written = True
        keep_alive = self._keep = request.keep_alive if self._keep is None else self._keep
        head = self._head
        version = request.version
        # As aiohttp's response: say keep-alive to an HTTP/1.0 client, close to an HTTP/1.1 one.
        if keep_alive:
            if version == (1, 0):
                head.append(_KEEP_ALIVE_LINE)
        elif version == (1, 1):
            head.append(_CLOSE_LINE)
        head.append(b"\r\n")
        head.append(self._whole_body)
        writer = request.writer
        await writer.write_eof(b"".join(head))
        self._length = writer.output_size
        return None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        raise RuntimeError("a buffered answer is written whole")

    async def write_eof(self, data: bytes = b"") -> None:
        if not self._written:
            raise RuntimeError("write_eof before prepare")


def buffered_answer(request: BaseRequest, status: int, reason: bytes, lines: AnswerLines,
                    extra: Mapping[str, str], request_id: str, body: bytes) -> BufferedAnswer:
    """The client's answer for a whole upstream answer (not HEAD, not 1xx, 204 or 304)."""
    version = request.version
    if extra:
        # The gateway's fields replace the upstream's of the same names.
        replaced = {name.lower().encode("latin-1") for name in extra}
        if not replaced.isdisjoint(lines.names):
            lines.drop(replaced)
    head = [_status_line(version.major, version.minor, status, reason), *lines.lines]
    for name, value in extra.items():
        head.append(_field(name, value))
    head.append(b"X-Request-Id: %s\r\n" % request_id.encode("ascii"))
    if not lines.has_server:
        head.append(_SERVER_LINE)
    head.append(b"Via: %s\r\n" % (lines.via + b", " + VIA_TOKEN if lines.via else VIA_TOKEN))
    head.append(b"Content-Length: %d\r\n" % len(body))
    if body and not lines.has_type:
        head.append(_DEFAULT_TYPE_LINE)
    if not lines.has_date:
        head.append(_DATE.now())
    return BufferedAnswer(status, head, body)
