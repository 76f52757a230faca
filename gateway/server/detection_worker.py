"""The process `detection.worker` runs (`python -m gateway.server.detection_worker`, started by
the gateway): the same detectors, tracks and sightings as in the gateway's loop, fed the
gateway's observations on stdin, answering each batch on stdout with what its detectors did.

It keeps no findings or sanctions of its own beyond what its detectors consult: the gateway
records and applies them. Its time is the gateway's clock as of the batch (an injected clock
holds here too). SIGINT and SIGTERM are the gateway's to act on: the worker ends when its input
does, once the gateway has sent its last batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any, BinaryIO

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.detect.engine import Detection, DetectionSetup
from gateway.detect.findings import Finding, FindingLog
from gateway.detect.observation import Observation, from_row
from gateway.detect.sanctions import Sanction
from gateway.detect.worker import CONFIG, END, GRANTS, ROWS, SANCTIONS, Events, Report, encode, read_message
from gateway.fleet.grants import Grants
from gateway.server.logs import configure_logging
from gateway.state.factory import open_store
from gateway.state.store import StateStore
from gateway.state.tables import Sweeper, Tables

log = logging.getLogger("fairgate.detect")


class GatewayTime:
    """The gateway's clock as of the last batch, moving on by this process's own clock since (the
    sweep forgets idle tracks while no batch comes)."""

    __slots__ = ("_at", "_since")

    def __init__(self) -> None:
        self._at, self._since = 0.0, time.monotonic()

    def set(self, now: float) -> None:
        self._at, self._since = now, time.monotonic()

    def time(self) -> float:
        return self._at + (time.monotonic() - self._since)

    def monotonic(self) -> float:
        return self.time()


class Outbox(FindingLog):
    """Findings and sanctions in the order made, for the answer to the batch."""

    def __init__(self) -> None:
        super().__init__(None, keep=1)
        self.events: Events = []

    def record(self, finding: Finding) -> None:
        self.events.append(finding)


class Analysis(Detection):
    """Detection as the worker runs it: a sanction is kept (the detectors consult it) and sent."""

    feeds_worker = False

    def __init__(self, store: StateStore, clock: GatewayTime) -> None:
        self.outbox = Outbox()
        super().__init__(store.sightings(), self.outbox, clock, None, Grants())

    def _configure_worker(self, setup: DetectionSetup) -> None:
        pass  # this is the worker

    def _sanction(self, sanction: Sanction) -> None:
        self.sanctions.add(sanction)
        self.outbox.events.append(sanction)

    def observe(self, obs: Observation) -> None:
        # The gateway's queue bounds a batch (and counts what it drops): a reload that lowered
        # queue_size must not drop here, uncounted, what the gateway had queued before it.
        self._queue.append(obs)

    def report(self, tables: Tables) -> Report:
        return self.tracked, {name: (len(table), table.limit, table.evictions, table.expirations)
                              for name, table in tables.counts()}


class Worker:
    def __init__(self, answers: BinaryIO) -> None:
        self._answers = answers
        self._clock = GatewayTime()
        self._analysis: Analysis | None = None
        self._store: StateStore | None = None
        self._tables = Tables()
        self._sweeper = Sweeper(self._tables)
        self._sweeping: asyncio.Task[None] | None = None

    async def serve(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    kind, payload = await read_message(reader)
                except asyncio.IncompleteReadError:
                    return  # the gateway is done
                await self._take(kind, payload)
        finally:
            if self._sweeping is not None:
                self._sweeping.cancel()
            if self._store is not None:
                await self._store.close()

    async def _take(self, kind: str, payload: Any) -> None:
        if kind == CONFIG:
            config, salt, version = payload
            if version != __version__:  # an upgrade in place: this code is not its gateway's
                raise SystemExit(f"detection worker: fairgate {__version__} cannot serve a gateway of {version}; "
                                 "restart the gateway")
            self._configure(config, salt)
            return
        analysis = self._analysis
        if analysis is None:
            raise RuntimeError(f"detection worker: {kind!r} before any config")
        if kind == ROWS:
            for row in payload:
                analysis.observe(from_row(row))
        elif kind == END:
            self._clock.set(payload)
            try:
                await analysis.drain()
            except Exception:  # as in the gateway's loop: the rest of the batch is lost, not the worker
                log.exception("detection batch failed")
            events, analysis.outbox.events = analysis.outbox.events, []
            self._answers.write(encode(END, (events, analysis.report(self._tables))))
            self._answers.flush()
        elif kind == GRANTS:
            analysis.grants.load(payload)
        elif kind == SANCTIONS:
            analysis.sanctions.replay(payload)
        else:
            raise RuntimeError(f"detection worker: unknown message {kind!r}")

    def _configure(self, config: GatewayConfig, salt: bytes) -> None:
        analysis = self._analysis
        if analysis is None:
            configure_logging(config.logging.level, config.logging.format)
            self._store = open_store(config)
            analysis = self._analysis = Analysis(self._store, self._clock)
            for name, table in self._store.tables().items():
                if name == "sightings":  # the only one of the store's the detectors fill
                    self._tables.add(name, table, self._clock.time)
            analysis.watch(self._tables)
            self._sweeping = asyncio.get_running_loop().create_task(self._sweeper.run())
        analysis.apply(analysis.prepare(config, salt))


async def _main() -> None:
    # Answers go to the gateway on the stdout it gave; anything else printed goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await Worker(answers).serve(reader)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    asyncio.run(_main())


if __name__ == "__main__":
    main()
