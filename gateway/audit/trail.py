"""The audit trail: events (violations, state changes, findings, admin actions) are queued off
the request path, appended to a hash-chained JSON Lines file every flush interval, and the
latest kept in memory for the admin API. A graceful shutdown writes every queued event."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any, Callable

from prometheus_client import Counter

from gateway.audit.chain import GENESIS, chain_line
from gateway.clock import Clock
from gateway.config.enforcement import AuditSettings
from gateway.state.store import StateStore, StoreUnavailable

log = logging.getLogger("fairgate.audit")


class AuditCounters:
    def __init__(self, written: Counter, dropped: Counter) -> None:
        self.written = written
        self.dropped = dropped


class AuditTrail:
    def __init__(self, clock: Clock, counters: AuditCounters | None = None, suffix: str = "",
                 store: StateStore | None = None) -> None:
        self._clock = clock
        self._store = store  # for audit.redis_stream
        self._stream_backlog: deque[dict[str, Any]] = deque()
        self._suffix = suffix  # "audit.jsonl" + ".1234" -> "audit.1234.jsonl"
        self._counters = counters
        self._settings = AuditSettings()
        self._queue: deque[dict[str, Any]] = deque()
        self._recent: deque[dict[str, Any]] = deque(maxlen=self._settings.keep)
        self._path: Path | None = None
        self._file: Any = None
        self._prev = GENESIS
        self._seq = 0
        self._writing = asyncio.Lock()
        self._warned_stream = False
        # Called with every event (alerts); they must not block.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def configure(self, settings: AuditSettings) -> None:
        """Apply (re)loaded settings; a new path starts (or continues) that file's chain."""
        self._settings = settings
        if self._recent.maxlen != settings.keep:
            self._recent = deque(self._recent, maxlen=settings.keep)
        path = settings.path
        if path is not None and self._suffix:
            path = path.with_name(f"{path.stem}{self._suffix}{path.suffix}")
        if path != self._path:
            self._close()
            self._path = path
            if path is not None:
                self._open(path)

    def record(self, kind: str, **fields: Any) -> None:
        """Queue one event; never blocks, never raises."""
        self._seq += 1
        event = {"seq": self._seq, "at": self._clock.time(), "kind": kind, **fields}
        self._recent.append(event)
        for listener in self.listeners:
            listener(event)
        if self._path is None and self._settings.redis_stream is None:
            return
        if len(self._queue) >= self._settings.queue_size:
            if self._counters is not None:
                self._counters.dropped.inc()
            log.error("audit queue full: event dropped", extra={"event_kind": kind, "seq": self._seq})
            return
        self._queue.append(event)

    def recent(self, *, customer: str | None = None, kind: str | None = None,
               since: float | None = None) -> list[dict[str, Any]]:
        return [e for e in self._recent
                if (customer is None or e.get("customer") == customer) and (kind is None or e["kind"] == kind)
                and (since is None or e["at"] >= since)]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        async with self._writing:  # one writer at a time keeps the chain in order
            if not self._queue and not self._stream_backlog:
                return
            batch = list(self._queue)
            self._queue.clear()
            if self._file is not None and batch:
                try:
                    await asyncio.to_thread(self._write, batch)
                except OSError as exc:
                    # Put them back in order; the next flush retries.
                    self._queue.extendleft(reversed(batch))
                    log.error("audit file write failed", extra={"error": str(exc), "path": str(self._path)})
                    return
                if self._counters is not None:
                    self._counters.written.inc(len(batch))
            if self._settings.redis_stream is not None:
                await self._to_stream(self._settings.redis_stream, batch)

    async def _to_stream(self, stream: str, batch: list[dict[str, Any]]) -> None:
        """Append to the fleet's Redis stream; what Redis cannot take now waits (bounded) for the next flush."""
        backlog = self._stream_backlog
        backlog.extend(batch)
        while len(backlog) > self._settings.queue_size:
            backlog.popleft()
            if self._counters is not None:
                self._counters.dropped.inc()
        if self._store is None:
            return
        events = list(backlog)
        try:
            appended = await self._store.append_events(stream, events, self._settings.redis_stream_max)
        except StoreUnavailable as exc:
            log.warning("audit stream write failed; kept for the next flush", extra={"error": str(exc)})
            return
        backlog.clear()
        if not appended and not self._warned_stream:
            self._warned_stream = True
            log.error("enforcement.audit.redis_stream needs a Redis state store; events are not streamed",
                      extra={"stream": stream})

    async def drain(self) -> None:
        await self.flush()
        self._close()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        prev = self._prev
        lines = []
        for event in batch:
            line, prev = chain_line(event, prev)
            lines.append(line)
        data = ("\n".join(lines) + "\n").encode()
        written = 0
        while written < len(data):
            written += os.write(self._file.fileno(), data[written:])
        self._prev = prev

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._prev = _last_hash(path)
        self._file = path.open("ab", buffering=0)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _last_hash(path: Path) -> str:
    """The hash the next line must follow: the last complete line's, or the genesis."""
    if not path.exists() or path.stat().st_size == 0:
        return GENESIS
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - 65536))
        tail = file.read().splitlines()
    for raw in reversed(tail):
        try:
            return str(json.loads(raw)["hash"])
        except (ValueError, KeyError, TypeError):
            log.error("audit file ends with a damaged line; the chain continues from the last good one",
                      extra={"path": str(path)})
    return GENESIS
