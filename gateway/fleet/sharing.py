"""Sharing with the fleet, in one place: every change another gateway must learn of is
published here (audited once, written to the shared store, and answered with one problem when
the store cannot be written), and every receiver registers here for the one sync that merges
what the others shared."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from gateway.audit.trail import AuditTrail
from gateway.clock import Clock
from gateway.fleet.topics import Change, Topic
from gateway.problems import Problem
from gateway.state.store import StateStore

log = logging.getLogger("fairgate.fleet")

SYNC_SECONDS = 1.0
SYNC_FLOOR_SECONDS = 0.05

# The change is in force on this gateway; only the fleet has not heard of it.
STATE_UNAVAILABLE = Problem(
    503, "state-unavailable", "Service Unavailable",
    "Applied on this gateway only: the shared state store could not be written. Retry to reach the fleet.",
)

Receiver = Callable[[list[dict[str, Any]]], None]


class Fleet:
    def __init__(self, store: StateStore, audit: AuditTrail, clock: Clock) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._receivers: list[tuple[Topic, Receiver]] = []
        self._tasks: set[asyncio.Task[Problem | None]] = set()  # the loop keeps only weak references

    def receive(self, topic: Topic, receiver: Receiver) -> None:
        """Have `receiver` merge the entries of `topic` at every sync, in the order registered."""
        self._receivers.append((topic, receiver))

    async def publish(self, change: Change) -> Problem | None:
        """Audit a change made here and share it; the problem to answer if the store cannot be written."""
        self._record(change)
        return await self._share(change)

    def publish_soon(self, change: Change) -> None:
        """Audit now and share in the background (the engines: off the request path, failures logged)."""
        self._record(change)
        task = asyncio.get_running_loop().create_task(self._share(change))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, change: Change) -> None:
        if change.event is not None:
            self._audit.record(change.event, **change.fields)

    async def _share(self, change: Change) -> Problem | None:
        try:
            await self._store.share(change.topic, change.entry, change.until)
            for topic, match in change.withdraws:
                await self._store.unshare(topic, match)
        except Exception as exc:  # this gateway has applied it; a retry or the next change reaches the fleet
            log.warning("not shared with the fleet", extra={"topic": str(change.topic), "error": str(exc)})
            return STATE_UNAVAILABLE
        return None

    async def sync(self) -> bool:
        """Merge what the fleet shared into every receiver; False for a store of one process."""
        now = self._clock.time()
        for topic, receiver in self._receivers:
            entries = await self._store.shared(topic, now)
            if entries is None:
                return False
            receiver(entries)
        return True

    async def run(self) -> None:
        """Sync whenever another gateway shares something, and every second regardless."""
        changed = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(self._store.watch_shared(changed.set))
        try:
            while True:
                changed.clear()
                try:
                    if not await self.sync():
                        return  # a store of one process: nothing to merge, ever
                except Exception as exc:
                    log.debug("fleet sync failed", extra={"error": str(exc)})
                await asyncio.sleep(SYNC_FLOOR_SECONDS)  # a burst of changes costs one sync, not one each
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), SYNC_SECONDS)
        finally:
            watcher.cancel()

    async def drain(self) -> None:
        """Wait for the shares still under way."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
