"""`detection.worker`: the analysis in a process of its own, fed by the gateway in batches.

Every `detection.flush_interval` the gateway sends what it observed down the worker's stdin (the
headers the detectors read, no more), then waits for the worker's answer: the findings and
sanctions its detectors made of that batch, in their order, which the gateway records and
applies as its own detectors' (audit, ladder, usage, the fleet). One batch in flight at a time:
what arrives meanwhile waits in the gateway's queue, bounded by `detection.queue_size`.

A worker that dies or stops answering loses the batch it held (counted with the dropped
observations) and its detection state; the next batch starts a new one, after a back-off that
doubles while starting keeps failing. The worker is told the config (and the gateway's address
salt: its hashes must be the gateway's), the grants and the sanctions the gateway holds, each
before the first batch that needs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import io
import logging
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.config.limits import StateSettings
from gateway.detect.findings import Finding
from gateway.detect.observation import DETECTED_HEADERS, Observation, as_row
from gateway.detect.sanctions import Sanction, Sanctions
from gateway.fleet.grants import Grants

log = logging.getLogger("fairgate.detect")

# Messages to the worker, in the order a batch sends them (the first three only when changed).
CONFIG, GRANTS, SANCTIONS, ROWS, END = "config", "grants", "sanctions", "rows", "end"
# Rows pickled per message: each message is a step of the gateway's loop under 2 ms (issue 14).
CHUNK = 256
# A worker that takes longer than this over one batch, plus PER_OBSERVATION for each of it
# (measured: 155 us of CPU an observation on a slow VM), is taken for hung, and replaced.
REPLY_TIMEOUT = 30.0
PER_OBSERVATION = 0.001
# A first failure starts a new worker with the next batch; each further one in a row waits
# twice as long as the one before, from the first up to the most.
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 30.0
_LENGTH = 4

Events = list[Sanction | Finding]
# The worker's report with each answer: tracked identities, and its tables as /metrics shows them.
Report = tuple[int, dict[str, tuple[int, int, int, int]]]


def read_only(items: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(items)


class _Pickler(pickle.Pickler):
    # Config objects hold read-only mappings, which pickle does not take on its own.
    dispatch_table = copyreg.dispatch_table.copy()
    dispatch_table[MappingProxyType] = lambda mapping: (read_only, (dict(mapping),))


def encode_config(config: GatewayConfig, salt: bytes, state: StateSettings | None = None) -> bytes:
    """The config as a worker is told it, encoded when the config is prepared (a reload's apply
    cannot fail then). Without `auth` and `alerts`: the issuers' parsed public keys do not pickle,
    and the worker needs no token secret or webhook key. `state`: the gateway's own, read at its
    start (a worker started after a reload must open the store its gateway uses)."""
    return encode(CONFIG, (config.model_copy(update={"auth": None, "alerts": None,
                                                     "state": state or config.state}), salt, __version__))


def encode(kind: str, payload: object) -> bytes:
    buffer = io.BytesIO()
    buffer.write(bytes(_LENGTH))
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((kind, payload))
    data = buffer.getbuffer()
    data[:_LENGTH] = (len(data) - _LENGTH).to_bytes(_LENGTH, "big")
    return bytes(data)


async def read_message(reader: asyncio.StreamReader) -> tuple[str, Any]:
    """The next message; raises asyncio.IncompleteReadError at the end of the stream."""
    size = int.from_bytes(await reader.readexactly(_LENGTH), "big")
    kind, payload = pickle.loads(await reader.readexactly(size))
    return kind, payload


class ReportedTable:
    """A table of the worker's, as it last reported it (the gateway's /metrics and sweeper read it)."""

    __slots__ = ("size", "limit", "evictions", "expirations")

    def __init__(self, size: int, limit: int, evictions: int, expirations: int) -> None:
        self.size, self.limit, self.evictions, self.expirations = size, limit, evictions, expirations

    def __len__(self) -> int:
        return self.size

    def sweep(self, now: float, budget: int) -> int:
        return 0  # the worker sweeps its own


# A worker that died, hung or answered garbage: logged by `_failed` without a traceback.
_PIPE_FAILURES = (OSError, EOFError, TimeoutError, pickle.UnpicklingError)


class WorkerLink:
    """The gateway's side of the worker: its process, what it was told, what it reported."""

    def __init__(self, received: Callable[[Events, bool], None], sanctions: Sanctions, grants: Grants,
                 command: Sequence[str] = (sys.executable, "-m", "gateway.server.detection_worker")) -> None:
        self._received = received
        self._sanctions = sanctions
        self._grants = grants
        self._command = tuple(command)
        self._process: asyncio.subprocess.Process | None = None
        self._config: bytes = b""
        self._config_sent = False
        self._grants_sent = -1  # the grants' version the worker holds
        self._header_names: tuple[str, ...] = DETECTED_HEADERS
        self._failures = 0
        self._retry_at = 0.0
        self.reply_timeout, self.per_observation = REPLY_TIMEOUT, PER_OBSERVATION
        self._deadline: asyncio.Timeout | None = None  # the batch out now, if any: `finishing` shortens it
        self.starts = 0
        self.tracked = 0
        self.tables: dict[str, ReportedTable] = {}

    def configure(self, config: GatewayConfig, message: bytes) -> None:
        """The config (`encode_config`: with the address salt) for the next batch, and for every
        worker started later."""
        self._config = message
        self._config_sent = False
        sharing = config.detection.sharing
        # The Cookie header (a portal's session cookie: a login token) only where a device cookie is read.
        self._header_names = (DETECTED_HEADERS + ((sharing.device_header,) if sharing.device_header else ())
                              + (("Cookie",) if sharing.device_cookie else ()))

    async def analyse(self, batch: Sequence[Observation], now: float) -> int:
        """Have the worker analyse `batch` and do what it found; how many observations were lost."""
        process = await self._running()
        if process is None or process.stdin is None or process.stdout is None:
            return len(batch)
        writer, names = process.stdin, self._header_names
        granted = -1
        try:
            # Writing waits too once the pipe is full: a stopped worker is noticed either way.
            async with asyncio.timeout(self.reply_timeout + len(batch) * self.per_observation) as deadline:
                self._deadline = deadline
                self._send_state(writer)
                granted = self._grants.version
                observations = list(batch)
                for start in range(0, len(observations), CHUNK):
                    writer.write(encode(ROWS, [as_row(obs, names) for obs in observations[start:start + CHUNK]]))
                    await writer.drain()
                    await asyncio.sleep(0)  # drain() yields only once the pipe is full: one chunk a step
                writer.write(encode(END, now))
                await writer.drain()
                kind, (events, report) = await read_message(process.stdout)
                if kind != END:
                    raise pickle.UnpicklingError(f"answer {kind!r}")
        except asyncio.CancelledError:
            # Cut off mid-exchange: what is left in either pipe is unknown, so this worker is done
            # (else the next batch would read this one's answer).
            log.warning("detection worker: a batch's exchange was cut off", extra={"lost_observations": len(batch)})
            self._abandon(process)
            raise
        except Exception as exc:
            if not isinstance(exc, _PIPE_FAILURES):  # an answer that does not decode, or a bug: the traceback
                log.exception("detection worker: a batch's exchange failed")
            await self._failed(process, exc, len(batch))
            return len(batch)
        finally:
            self._deadline = None
        self._failures = 0
        self._take(report)
        # Grants that changed while the worker held the batch: what they now exempt is left out.
        self._received(events, self._grants.version != granted)
        return 0

    def _abandon(self, process: asyncio.subprocess.Process) -> None:
        self._process = None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # reaped by the event loop's child watcher

    def _send_state(self, writer: asyncio.StreamWriter) -> None:
        if not self._config_sent:
            writer.write(self._config)
            self._config_sent = True
        grants = self._grants
        if grants.version != self._grants_sent:
            writer.write(encode(GRANTS, grants.entries()))
            self._grants_sent = grants.version
        journal = self._sanctions.journal
        if journal:
            writer.write(encode(SANCTIONS, journal))
            self._sanctions.journal = []

    def _take(self, report: Report) -> None:
        self.tracked, tables = report
        self.tables = {name: ReportedTable(*counts) for name, counts in tables.items()}

    async def start(self) -> None:
        await self._running()

    async def _running(self) -> asyncio.subprocess.Process | None:
        process = self._process
        if process is not None and process.returncode is None:
            return process
        if time.monotonic() < self._retry_at:
            return None
        try:
            # A session of its own: a terminal's Ctrl-C is the gateway's to act on; the worker ends
            # when its input does.
            process = await asyncio.create_subprocess_exec(
                *self._command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                start_new_session=True)
        except OSError as exc:
            await self._failed(None, exc, 0)
            return None
        self.starts += 1
        if self.starts > 1:
            log.warning("detection worker started again: its detection state starts afresh",
                        extra={"pid": process.pid, "starts": self.starts})
        self._process = process
        # A new worker knows nothing: the config, every grant and every sanction in force go first.
        self._config_sent, self._grants_sent = False, -1
        journal: list[Sanction | str] = []
        journal.extend(self._sanctions.entries())
        self._sanctions.journal = journal
        return process

    async def _failed(self, process: asyncio.subprocess.Process | None, exc: BaseException, lost: int) -> None:
        self._failures += 1
        backoff = 0.0 if self._failures == 1 else min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failures - 2))
        self._retry_at = time.monotonic() + backoff
        log.error("detection worker failed: %s", type(exc).__name__ if not str(exc) else exc,
                  extra={"lost_observations": lost, "retry_in_seconds": backoff})
        if process is not None:
            await _stop(process, 0.0)
        self._process = None

    def finishing(self, grace: float) -> None:
        """The gateway stops: the last batch goes now (no back-off) and is waited for `grace` at most."""
        self._retry_at = 0.0
        self.reply_timeout, self.per_observation = min(self.reply_timeout, grace), 0.0
        deadline = self._deadline  # a batch out already (the run loop's): its timeout was set before
        if deadline is not None:
            when, current = asyncio.get_running_loop().time() + grace, deadline.when()
            if current is None or current > when:
                deadline.reschedule(when)

    async def close(self, grace: float = 5.0) -> None:
        """End the worker's input and let it exit (after the last batch was answered)."""
        process, self._process = self._process, None
        if process is not None:
            await _stop(process, grace)


async def _stop(process: asyncio.subprocess.Process, grace: float) -> None:
    if process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()
    if process.returncode is None:
        try:
            await asyncio.wait_for(process.wait(), grace)
            return
        except TimeoutError:
            pass
        process.kill()
    await process.wait()
