"""A keep-alive connection pool for one upstream, and the request/response exchange on it."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from gateway.upstream.connection import ResponseHead, UpstreamConnection
from gateway.upstream.errors import UpstreamClosed, UpstreamTimeout, UpstreamUnavailable

RequestBody = bytes | AsyncIterator[bytes] | None


class UpstreamPool:
    """Hands out idle connections most-recently-used first; opens new ones up to a cap."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        read_timeout: float,
        idle_timeout: float,
        max_connections: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._clock = clock
        self._idle: list[UpstreamConnection] = []
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def exchange(self, head: bytes, body: RequestBody, *, chunked: bool, head_only: bool) -> Exchange:
        """Send one request and wait for the response head.

        A reused connection that the upstream closed while it sat idle fails before any answer;
        that request is retried once on a fresh connection when its body can be sent again.
        """
        # The usual case, an idle connection at hand, takes no await of its own; the send is
        # written out here, not a coroutine of its own (each level of await costs a frame per
        # request and a pass on every resume).
        conn = None if self._closed else self._take_idle()
        reused = conn is not None
        if conn is None:
            conn, reused = await self._acquire()
        retried = False
        while True:
            conn.begin(head_only)
            try:
                if body is None or isinstance(body, bytes):
                    conn.write(head + body if body else head)
                else:
                    conn.write(head)
                    await _send_stream(conn, body, chunked, self.read_timeout)
                waiter = conn.head_waiter(self.read_timeout)
                if waiter is not None:
                    await waiter
                return Exchange(self, conn, conn.head())
            except BaseException as exc:
                # A failed body write may still have an early answer (a 413 from upstream, say).
                if isinstance(exc, (ConnectionError, UpstreamClosed)) and conn.head_received:
                    return Exchange(self, conn, await conn.read_head(self.read_timeout))
                conn.abort()
                if retried or not isinstance(exc, UpstreamClosed) or not reused or _is_stream(body):
                    raise
            retried = True
            conn, _ = await self._acquire(fresh=True)

    async def _acquire(self, fresh: bool = False) -> tuple[UpstreamConnection, bool]:
        if self._closed:
            raise UpstreamUnavailable("upstream pool is closed")
        while True:
            if not fresh and (conn := self._take_idle()) is not None:
                return conn, True
            if self._open < self.max_connections:
                break
            if fresh and self._idle:
                self._idle.pop().close()  # make room; its slot frees when the close completes
            await self._wait_for_slot()
        self._open += 1
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: wait_for (3.11) runs the connect as a task, and a
            # refused connect's OSError then holds, through its traceback, wait_for's frame,
            # which holds the task, which holds the error: a reference cycle per failed connect.
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(loop, self._connection_lost), self.host, self.port)
        except TimeoutError:
            self._slot_freed()
            raise UpstreamTimeout(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            self._slot_freed()
            raise UpstreamUnavailable(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        except BaseException:
            self._slot_freed()
            raise
        return conn, False

    def _take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection still fit for use; the others on the way are closed."""
        idle = self._idle
        if not idle:
            return None
        now = self._clock()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.last_used > self.idle_timeout:
                conn.close()
                continue
            return conn
        return None

    async def _wait_for_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.connect_timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"all {self.max_connections} connections to {self.host}:{self.port} busy") from None
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)

    def _wake_slot_waiter(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _slot_freed(self) -> None:
        self._open -= 1
        self._wake_slot_waiter()

    def _connection_lost(self, conn: UpstreamConnection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
        self._slot_freed()

    def release(self, conn: UpstreamConnection) -> None:
        if conn.reusable and not self._closed:
            conn.last_used = self._clock()
            self._idle.append(conn)
            self._wake_slot_waiter()
        else:
            conn.close()

    async def close(self) -> None:
        """Close idle connections now; busy ones close when their exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamUnavailable("upstream pool is closed"))


class Exchange:
    """A response being received; `release()` or `abort()` must end it."""

    __slots__ = ("_pool", "_conn", "head", "_done")

    def __init__(self, pool: UpstreamPool, conn: UpstreamConnection, head: ResponseHead) -> None:
        self._pool = pool
        self._conn = conn
        self.head = head
        self._done = False

    async def read_chunk(self) -> bytes:
        return await self._conn.read_chunk(self._pool.read_timeout)

    def take_body(self) -> bytes | None:
        """The whole body if it has all arrived (the usual small answer), else None: no await."""
        return self._conn.take_body()

    async def read_all(self) -> bytes:
        whole = self._conn.take_body()
        if whole is not None:
            return whole
        chunks = []
        while chunk := await self.read_chunk():
            chunks.append(chunk)
        return b"".join(chunks)

    def release(self) -> None:
        """Return the connection to the pool if the exchange ended cleanly, else close it."""
        if not self._done:
            self._done = True
            self._pool.release(self._conn)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._conn.abort()


def _is_stream(body: RequestBody) -> bool:
    return body is not None and not isinstance(body, bytes)


async def _send_stream(conn: UpstreamConnection, body: AsyncIterator[bytes], chunked: bool, timeout: float) -> None:
    async for chunk in body:
        if not chunk:
            continue
        if chunked:
            conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            conn.write(chunk)
        await conn.drain(timeout)
    if chunked:
        conn.write(b"0\r\n\r\n")
