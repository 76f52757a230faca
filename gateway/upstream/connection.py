"""One HTTP/1.1 connection to an upstream: an asyncio protocol around the httptools parser.

It carries one exchange at a time. The response body is handed out chunk by chunk with flow
control in both directions: reading pauses while the consumer lags, and request-body writes
wait while the socket's send buffer is full. That is what keeps a 1 GB transfer in bounded
memory.

No reference cycles, so a connection is freed by reference counting when it ends: under the
generational freeze (gateway/server/garbage.py) a cycle frozen while the connection was in use
would never be freed. Two would form otherwise: the parser holds the connection's callbacks
(it exists only from connection_made to connection_lost), and an exception raised out of a
wait carries a traceback of frames that hold this connection and the waiter (so waiters are
only ever woken with a result, and every wait raises an exception of its own, never one stored
here).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from math import inf
from typing import Any, cast

import httptools

from gateway.upstream.errors import UpstreamClosed, UpstreamError, UpstreamProtocolError, UpstreamTimeout

_PAUSE_AT = 256 * 1024
_FRAMING_NAMES = frozenset({b"content-length", b"transfer-encoding"})
_FRAMING_LENGTHS = frozenset(map(len, _FRAMING_NAMES))
_RESUME_AT = 64 * 1024


class ResponseHead:
    __slots__ = ("status", "reason", "headers", "keep_alive", "body_until_eof")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keep_alive = keep_alive
        self.body_until_eof = False


class UpstreamConnection(asyncio.Protocol):
    """A pooled connection; `exchange` state is reset by `begin` for each request."""

    __slots__ = (
        "_loop", "transport", "closed", "last_used", "_parser", "_head_only", "_reason", "_headers",
        "_head", "_head_waiter", "_body", "_buffered", "_complete", "_body_waiter", "_error",
        "_reading_paused", "_write_waiter", "_writing_paused", "_new_parser_after_feed", "_on_lost",
        "_deadline", "_deadline_waiter", "_deadline_message", "_timer", "_timer_at",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[UpstreamConnection], None]) -> None:
        self._loop = loop
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_used = 0.0
        self._parser: httptools.HttpResponseParser | None = None  # made once connected
        self._writing_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._new_parser_after_feed = False
        # One timer per connection, re-armed lazily: a wait sets a deadline (a float store), and
        # the timer, when it fires early, moves itself to the current deadline. Arming and
        # cancelling a timer for every wait cost more than the rest of the exchange's bookkeeping.
        self._deadline = inf
        self._deadline_waiter: asyncio.Future[Any] | None = None
        self._deadline_message = ""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = inf
        self._body: deque[bytes] = deque()
        self._reset_exchange(head_only=False)

    def _reset_exchange(self, head_only: bool) -> None:
        self._head_only = head_only
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: ResponseHead | None = None
        self._head_waiter: asyncio.Future[None] | None = None
        self._body.clear()
        self._buffered = 0
        self._complete = False
        self._body_waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None  # how the exchange failed; never raised itself
        self._reading_paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection hands a stream protocol a Transport; BaseTransport is the base class's signature.
        self.transport = cast(asyncio.Transport, transport)
        self._parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if self._head_waiter is None or self._complete or parser is None:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self._fail(UpstreamProtocolError("upstream sent data with no request outstanding"))
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid response from upstream: {exc}"))
            return
        if self._new_parser_after_feed:
            # llhttp cannot be told a response answers HEAD; start clean for the next exchange.
            self._new_parser_after_feed = False
            if not self.closed:  # a closed connection's parser would only be a cycle until it is lost
                self._parser = httptools.HttpResponseParser(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self._parser = None  # it holds this connection's callbacks: a cycle
        if self._head is not None and self._head.body_until_eof and not self._complete:
            self.on_message_complete()
        elif not self._complete:
            self._set_error(UpstreamClosed("upstream closed the connection"))
        _wake(self._write_waiter)  # drain sees `closed`
        self._on_lost(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        _wake(self._write_waiter)

    # -- httptools callbacks -------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # only the parser calls this
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim response (100 Continue, 103 Early Hints): the final one follows.
            self._reason = b""
            self._headers = []
            return
        head = ResponseHead(status, self._reason, self._headers, parser.should_keep_alive())
        if not self._head_only and status not in (101, 204, 304):
            for name, _ in self._headers:
                # The length first: most names are neither, and so need no lower-casing.
                if len(name) in _FRAMING_LENGTHS and name.lower() in _FRAMING_NAMES:
                    break
            else:  # no framing: the body runs until the upstream closes
                head.body_until_eof = True
                head.keep_alive = False
        self._head = head
        _wake(self._head_waiter)
        if self._head_only:
            self._new_parser_after_feed = True
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_AT and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        if self._head is None or self._complete:
            return  # the end of an interim response
        self._complete = True
        self._wake_body()

    # -- used by the pool and the proxy ---------------------------------------------------

    def begin(self, head_only: bool) -> None:
        self._reset_exchange(head_only)
        self._head_waiter = self._loop.create_future()

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamClosed("upstream closed the connection")
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        """Wait while the send buffer is full; an upstream that stops reading times out."""
        if self.closed:
            raise UpstreamClosed("upstream closed the connection")
        if self._writing_paused:
            waiter = self._write_waiter = self._loop.create_future()
            self._arm(waiter, timeout, "upstream stopped reading the request body")
            try:
                await waiter
            finally:
                self._deadline = inf
                self._write_waiter = None
            if self._error is not None:  # timed out
                raise _fresh(self._error)
            if self.closed:
                raise UpstreamClosed("upstream closed the connection")

    @property
    def head_received(self) -> bool:
        return self._head is not None

    async def read_head(self, timeout: float) -> ResponseHead:
        waiter = self.head_waiter(timeout)
        if waiter is not None:
            try:
                await waiter
            finally:
                self._deadline = inf
        return self.head()

    def head_waiter(self, timeout: float) -> asyncio.Future[None] | None:
        """What to await for the response head, its deadline armed (None if the head or a
        failure is in already); then `head()`. For a caller that awaits it in its own frame, as
        the pool does: `read_head` is the same in one call. A caller cancelled meanwhile aborts
        the connection (which disarms the deadline)."""
        waiter = self._head_waiter
        assert waiter is not None
        if waiter.done():
            return None
        self._arm(waiter, timeout, "upstream did not answer in time")
        return waiter

    def head(self) -> ResponseHead:
        """The response head once its waiter is done; raises how the exchange failed otherwise."""
        self._deadline = inf
        head = self._head
        if head is not None:
            return head
        assert self._error is not None  # the waiter is woken by a head or an error
        raise _fresh(self._error)

    async def read_chunk(self, timeout: float) -> bytes:
        """The next body bytes; b"" once the body is complete."""
        while not self._body:
            if self._complete:
                return b""
            if self._error is not None:
                raise _fresh(self._error)
            waiter = self._body_waiter = self._loop.create_future()
            self._arm(waiter, timeout, "upstream stalled while sending the body")
            try:
                await waiter
            finally:
                self._deadline = inf
                self._body_waiter = None
        chunk = self._body.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= _RESUME_AT and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    def take_body(self) -> bytes | None:
        """The whole body if it has all arrived (the usual small answer, in the head's packet), else None."""
        if not self._complete or self._error is not None:
            return None
        body = self._body
        chunk = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def reusable(self) -> bool:
        """True when the exchange ended cleanly and the upstream keeps the connection open."""
        return (
            self._complete
            and not self.closed
            and not self._body
            and self._head is not None
            and self._head.keep_alive
            and self._error is None
        )

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self._stop_timer()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self._stop_timer()

    # -- internals ------------------------------------------------------------------------

    def _arm(self, waiter: asyncio.Future[Any], timeout: float, message: str) -> None:
        """The exchange fails with UpstreamTimeout(message), waking `waiter`, unless it is done
        within `timeout`."""
        deadline = self._deadline = self._loop.time() + timeout
        self._deadline_waiter = waiter
        self._deadline_message = message
        if deadline < self._timer_at:  # no timer, or one due later than this deadline
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = inf
        deadline = self._deadline
        if deadline == inf:
            return  # no wait in progress: the next one arms a new timer
        if self._loop.time() >= deadline:
            self._deadline = inf
            waiter = self._deadline_waiter
            if waiter is not None and not waiter.done():
                self._set_error(UpstreamTimeout(self._deadline_message))
                _wake(waiter)  # a drain's waiter: _set_error wakes the others
        else:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _stop_timer(self) -> None:
        self._deadline = inf
        self._deadline_waiter = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = inf

    def _wake_body(self) -> None:
        _wake(self._body_waiter)

    def _set_error(self, error: UpstreamError) -> None:
        """The exchange failed: each wait woken raises a copy of `error`."""
        if self._error is None:
            self._error = error
        _wake(self._head_waiter)
        _wake(self._body_waiter)

    def _fail(self, error: UpstreamError) -> None:
        self._set_error(error)
        self.abort()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    # Only ever a result: a future holding an exception, raised through a wait's frame (which
    # holds the future), would be a reference cycle.
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _fresh(error: UpstreamError) -> UpstreamError:
    """A new exception like `error`, to raise: its traceback then reaches nothing that holds it."""
    return type(error)(*error.args)
