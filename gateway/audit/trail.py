"""The audit trail: events (violations, state changes, findings, admin actions) are queued off
the request path, appended to a hash-chained JSON Lines file every flush interval, and the
latest kept in memory for the admin API. A graceful shutdown writes every queued event; an
event that cannot be written stays queued for the next flush, and one that has to be dropped
(the queue is full) is counted and logged."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from gateway.audit.file import AppendError, AuditFile
from gateway.clock import Clock
from gateway.config.enforcement import AuditSettings
from gateway.state.store import StateStore, StoreUnavailable

log = logging.getLogger("fairgate.audit")


class AuditCounters:
    def __init__(self, written: Counter, dropped: Counter, write_failures: Counter) -> None:
        self.written = written
        self.dropped = dropped
        self.write_failures = write_failures  # failed appends; their events wait for the next flush


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
        self._file: AuditFile | None = None
        self._seq = 0
        self._writing = asyncio.Lock()
        self._warned_stream = False
        # Called with every event (alerts); they must not block.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def configure(self, settings: AuditSettings) -> None:
        """Apply (re)loaded settings; a new path starts (or continues) that file's chain. Raises
        OSError, changing nothing, if the new file cannot be opened."""
        self.apply(self.prepare(settings))

    def prepare(self, settings: AuditSettings) -> PreparedAudit:
        """Open the file `settings` name if it is a new one, changing nothing yet (a reload applies
        it with the rest of the config, or discards it); raises OSError if it cannot be opened."""
        path = settings.path
        if path is not None and self._suffix:
            path = path.with_name(f"{path.stem}{self._suffix}{path.suffix}")
        if path == self._path:
            return PreparedAudit(settings, path, None, reopen=False)
        return PreparedAudit(settings, path, self._open(path) if path is not None else None, reopen=True)

    def apply(self, prepared: PreparedAudit) -> None:
        if prepared.reopen:
            self._close()
            self._path, self._file = prepared.path, prepared.opened
        settings = prepared.settings
        self._settings = settings
        if self._recent.maxlen != settings.keep:
            self._recent = deque(self._recent, maxlen=settings.keep)

    def record(self, kind: str, **fields: Any) -> None:
        """Queue one event; never blocks, never raises."""
        event = self._stamp(kind, fields)
        if self._path is None and self._settings.redis_stream is None:
            return
        if len(self._queue) >= self._settings.queue_size:
            if self._counters is not None:
                self._counters.dropped.inc()
            log.error("audit queue full: event dropped", extra={"event_kind": kind, "seq": self._seq})
            return
        self._queue.append(event)

    def _stamp(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        event = {"seq": self._seq, "at": self._clock.time(), "kind": kind, **fields}
        self._recent.append(event)
        for listener in self.listeners:
            listener(event)
        return event

    def recent(self, *, customer: str | None = None, kind: str | None = None,
               since: float | None = None) -> list[dict[str, Any]]:
        return [e for e in self._recent
                if (customer is None or e.get("customer") == customer) and (kind is None or e["kind"] == kind)
                and (since is None or e["at"] >= since)]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.flush_interval)
            await self.flush()

    @property
    def waiting(self) -> int:
        """Events queued for the next flush."""
        return len(self._queue)

    async def flush(self) -> None:
        async with self._writing:  # one writer at a time keeps the chain in order
            if not self._queue and not self._stream_backlog:
                return
            batch = list(self._queue)
            self._queue.clear()
            cancelled = False
            if self._file is not None and batch:
                failure, cancelled = await _finish_in_thread(self._file.append, batch)
                if isinstance(failure, AppendError):
                    # What reached the file stays; the rest goes back, in order, for the next flush.
                    written, batch = batch[:failure.written], batch[failure.written:]
                    self._queue.extendleft(reversed(batch))
                    if self._counters is not None:
                        self._counters.written.inc(len(written))
                        self._counters.write_failures.inc()
                    log.error("audit file write failed; %d events wait for the next flush", len(self._queue),
                              extra={"error": str(failure.__cause__), "path": str(self._path)})
                    batch = written
                elif failure is not None:
                    raise failure
                elif self._counters is not None:
                    self._counters.written.inc(len(batch))
            if self._settings.redis_stream is not None:
                self._keep_for_stream(batch)
                if not cancelled:
                    await self._to_stream(self._settings.redis_stream)
            if cancelled:
                raise asyncio.CancelledError

    def _keep_for_stream(self, batch: list[dict[str, Any]]) -> None:
        backlog = self._stream_backlog
        backlog.extend(batch)
        while len(backlog) > self._settings.queue_size:
            backlog.popleft()
            if self._counters is not None:
                self._counters.dropped.inc()

    async def _to_stream(self, stream: str) -> None:
        """Append the backlog to the fleet's Redis stream; what Redis cannot take now waits for the next flush."""
        backlog = self._stream_backlog
        if self._store is None or not backlog:
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
        if self._queue:  # the file still refuses them, and this process is going away
            if self._counters is not None:
                self._counters.dropped.inc(len(self._queue))
            log.error("audit events could not be written before shutdown: dropped",
                      extra={"events": len(self._queue), "path": str(self._path)})
            self._queue.clear()
        self._close()

    def _open(self, path: Path) -> AuditFile:
        """Open `path`, and write first the events describing what recovering it found."""
        opened = AuditFile(path)
        try:
            if opened.notes:
                opened.append([self._stamp(kind, fields) for kind, fields in opened.notes])
        except OSError:
            opened.close()
            raise
        return opened

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True, slots=True)
class PreparedAudit:
    """Audit settings ready to apply: the file they name already open if it is a new one."""

    settings: AuditSettings
    path: Path | None
    opened: AuditFile | None
    reopen: bool

    def discard(self) -> None:
        if self.opened is not None:
            self.opened.close()


async def _finish_in_thread(append: Callable[[list[dict[str, Any]]], None],
                            batch: list[dict[str, Any]]) -> tuple[BaseException | None, bool]:
    """Run `append` in a thread to its end: (what it raised, whether the caller was cancelled meanwhile).

    A thread cannot be stopped, so a cancelled flush (shutdown cancels the periodic one) still
    waits for it: otherwise the writer lock would be released while the file is being written,
    the next flush would write beside it, and the events of a failed append would be lost."""
    writing = asyncio.ensure_future(asyncio.to_thread(append, batch))
    cancelled = False
    while not writing.done():
        try:
            await asyncio.wait({writing})
        except asyncio.CancelledError:
            cancelled = True
    return writing.exception(), cancelled
