"""A prototype, for measurement only (issue 14): `python -m gateway run` with detection analysed
in a worker process instead of the gateway's event loop.

The gateway keeps taking each observation on the request path as it does; instead of
queueing it for its own batches, it copies the fields and the headers the detectors read into a
tuple, and every `detection.flush_interval` pickles the batch and writes it to the worker's
stdin (asyncio's pipe transport: never waits for the worker). The worker loads the same config
file, builds the real state (`assemble_state` on a memory store, the config applied) and runs
the real `Detection` on what it reads: the same detectors, tracks and sightings, in their own
process.

What it leaves out, so it is not the product: sanctions and findings stay in the worker (the
gateway would need them back, a few a second at most, to refuse the next request), a reload
does not reach the worker, and the worker's tables are on no /metrics. What it measures: what
analysing elsewhere takes off the gateway's core and its tail (bench/run.py --gateway-module).

    FAIRGATE_WORKER_CORE=1 python bench/run.py --gateway-module bench.detection_worker_gateway ...
    FAIRGATE_WORKER_CORE=0 FAIRGATE_WORKER_IDLE=1 python bench/run.py --gateway-module ...

FAIRGATE_WORKER_CORE pins the worker to that core (unset: the gateway's own affinity);
FAIRGATE_WORKER_IDLE=1 runs it under SCHED_IDLE (the kernel gives it only CPU nothing else wants).
The worker's CPU is printed on its stderr when its input ends (the gateway stops).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.detection_worker_feed import WANTED  # noqa: E402  # after the path is set
from gateway.detect.engine import Detection  # noqa: E402
from gateway.detect.observation import Observation  # noqa: E402

_batch: list[tuple[object, ...]] = []


def _observe(self: Detection, obs: Observation) -> None:
    headers = obs.headers
    _batch.append((obs.at, obs.route_class, obs.customer, obs.user, obs.session, obs.client_ip, obs.method,
                   obs.target, {name: value for name in WANTED if (value := headers.get(name)) is not None},
                   obs.status, obs.body_digest, obs.subject, obs.refused, obs.offered_proof))


class _Worker:
    """The gateway's side: the worker process and what is written to it."""

    process: asyncio.subprocess.Process | None = None

    @classmethod
    async def feed(cls, detection: Detection) -> None:
        config_path = sys.argv[sys.argv.index("-c") + 1]
        cls.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.detection_worker_gateway", "--worker", config_path,
            stdin=asyncio.subprocess.PIPE, cwd=ROOT)
        while True:
            await asyncio.sleep(detection.settings.flush_interval)
            cls.send()

    @classmethod
    def send(cls) -> None:
        if _batch and cls.process is not None and cls.process.stdin is not None:
            data = pickle.dumps(_batch, protocol=pickle.HIGHEST_PROTOCOL)
            _batch.clear()
            cls.process.stdin.write(len(data).to_bytes(4, "big") + data)

    @classmethod
    async def drain(cls, detection: Detection) -> None:
        """The gateway's last drain (it stops): what is left goes, the worker's input ends, and
        the worker analyses it all before the gateway exits."""
        if cls.process is None or cls.process.stdin is None:
            return
        cls.send()
        cls.process.stdin.close()
        await cls.process.wait()


async def _work(config_path: str) -> None:
    from gateway.clock import SystemClock
    from gateway.config.loader import load_config
    from gateway.metrics import Metrics
    from gateway.server.assembly import StateSettings, assemble_state
    from gateway.state.memory import MemoryStore

    config = load_config(config_path)
    state = assemble_state(MemoryStore(config.state.max_memory_keys, config.state.idle_ttl, config.sighting_keys),
                           Metrics(), SystemClock(), audit_suffix=".worker")
    StateSettings.build(config, state).apply(state)
    detection = state.detection
    reader = asyncio.StreamReader(limit=2**26)
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    observations = 0
    while True:
        try:
            size = int.from_bytes(await reader.readexactly(4), "big")
            batch = pickle.loads(await reader.readexactly(size))
        except asyncio.IncompleteReadError:
            break
        for fields in batch:
            at, route_class, customer, user, session, client_ip, method, target, headers, status, digest, \
                subject, refused, offered_proof = fields
            detection.observe(Observation(at, route_class, customer, user, session, client_ip, method, target,
                                          headers, status, digest, subject, refused, offered_proof))
        observations += len(batch)
        await detection.drain()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"detection worker: {observations} observations, {usage.ru_utime + usage.ru_stime:.1f} s CPU, "
          f"{detection.tracked} tracked", file=sys.stderr)


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:
        core = os.environ.get("FAIRGATE_WORKER_CORE")
        if core:
            os.sched_setaffinity(0, {int(core)})
        if os.environ.get("FAIRGATE_WORKER_IDLE") == "1":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        asyncio.run(_work(sys.argv[2]))
        return 0
    from gateway.cli import main as gateway_main

    Detection.observe = _observe  # type: ignore[method-assign]  # the prototype's variant
    Detection.run = lambda self: _Worker.feed(self)  # type: ignore[method-assign]
    Detection.drain = lambda self: _Worker.drain(self)  # type: ignore[method-assign]
    return gateway_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
