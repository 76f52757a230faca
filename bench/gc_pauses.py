"""Garbage-collection pauses and background-step holds by `server.gc` design, in CPU time (steady
on a loaded machine), with the real gateway state built in-process as bench/memory_per_customer.py
builds it: N customers' first sight, then warm requests over them in rotation with the background
work of a running gateway at about 1,000 req/s (a detection drain every 250 requests, a sweep tick
every 100, a usage flush every 10,000) and, for a freezing design, a freeze step every 1,000
requests (`server.gc.freeze_interval: 1s` at that rate).

    python bench/gc_pauses.py --customers 20000 --warm 100000 --rounds 2 \\
        --variant before=none:50000,50,100 --variant freeze=1000:700,10,10

A variant is NAME=FREEZE_EVERY:T0,T1,T2 (FREEZE_EVERY requests between freezes, `none` for
only after start-up). Each variant runs in its own child process, variants interleaved per round.
Reported: collections per generation during the warm phase (count, longest, total CPU ms), the
longest freeze step, the longest hold of each background batch, CPU per warm request, and the
objects a final full collection of everything (frozen included) found unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory_per_customer import CONFIG, ISSUER, SECRET, LongestHold, tokens  # noqa: E402


class Pauses:
    """Every collection's pause by generation, in CPU time of this thread (steady on a loaded
    machine, unlike wall time): count, p50, p99, max and total."""

    def __init__(self) -> None:
        self.pauses: list[list[float]] = [[], [], []]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.pauses[info["generation"]].append(time.thread_time() - self._started)

    def report(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for generation, pauses in enumerate(self.pauses):
            ms = sorted(p * 1000 for p in pauses)
            if ms:
                out[f"gen{generation}"] = {"count": len(ms), "p50_ms": round(ms[len(ms) // 2], 2),
                                           "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
                                           "max_ms": round(ms[-1], 2), "total_ms": round(sum(ms), 1)}
        return out


async def run(count: int, warm: int, freeze_every: int | None, thresholds: tuple[int, int, int]) -> dict[str, object]:
    from multidict import CIMultiDict, CIMultiDictProxy

    from gateway.config.loader import load_config
    from gateway.server.garbage import collect_everything, freeze_survivors
    from gateway.server.lifecycle import GatewayServer, ServeOptions
    from tests.support.clock import ManualClock

    clock = ManualClock(time.time())
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "gateway.yaml"
        path.write_text(CONFIG.format(issuer=ISSUER, secret=SECRET))
        server = GatewayServer(load_config(path), ServeOptions(str(path), clock=clock))
        state, runtime = server.state, server.runtimes.current
        target = runtime.router.match(None, "/api/items")
        assert target is not None and runtime.limiter is not None and runtime.usage is not None
        bearer = [f"Bearer {token}" for token in tokens(count)]
        headers = CIMultiDictProxy(CIMultiDict({"User-Agent": "bench/1.0", "Accept": "application/json"}))
        gc.collect()
        gc.set_threshold(*thresholds)
        gc.freeze()  # freeze_after_start
        holds: dict[str, float] = {}
        freeze_cpu: list[float] = []
        sweeps: list[float] = []

        async def held(name: str, work) -> None:  # type: ignore[no-untyped-def]
            async with LongestHold() as hold:
                await work
            holds[name] = max(holds.get(name, 0.0), hold.ms)

        async def request(n: int) -> None:
            authorization = bearer[n % count]
            client_ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            identity = await runtime.authenticator.authenticate(authorization, client_ip, required=True, scopes=())
            assert identity is not None and runtime.limiter is not None and runtime.usage is not None
            standing = runtime.enforcement.admit(identity)
            admission = await runtime.limiter.admit(identity, target.route, client_ip, f"r{n}",
                                                    throttle=1.0 if standing is None else 0.5)
            runtime.limiter.finish(admission, 100, 0.001)
            runtime.usage.forwarded(identity.customer, 1, 100, 67, 0.001, identity.licenses)
            runtime.detection.observe_request("api", identity, client_ip, "GET", f"/api/items/{n % 977}", headers,
                                              200, None)

        async def background(n: int) -> None:
            if n % 250 == 249:
                await held("detection_drain", state.detection.drain())
            if n % 100 == 99:
                started = time.thread_time()
                server.sweeper.tick()
                sweeps.append(time.thread_time() - started)
            if n % 10_000 == 9_999:
                await held("usage_flush", state.usage.flush())
            if freeze_every is not None and n % freeze_every == freeze_every - 1:
                started = time.thread_time()
                freeze_survivors()
                freeze_cpu.append(time.thread_time() - started)

        for n in range(count):  # first sight of every customer
            await request(n)
            await background(n)
        await state.detection.drain()
        await state.usage.flush()
        collections = Pauses()
        gc.callbacks.append(collections)
        cpu = time.thread_time()
        for n in range(count, count + warm):
            clock.advance(0.001)
            await request(n)
            await background(n)
        warm_cpu = time.thread_time() - cpu
        gc.callbacks.remove(collections)
        frozen = gc.get_freeze_count()
        started = time.thread_time()
        unreachable = collect_everything()
        return {"gc_warm": collections.report(), "holds_ms": {k: round(v, 2) for k, v in holds.items()},
                "freeze_steps": len(freeze_cpu), "freeze_max_ms": round(max(freeze_cpu, default=0.0) * 1000, 2),
                "sweep_ticks": len(sweeps), "sweep_p99_ms": round(sorted(sweeps)[int(len(sweeps) * 0.99)] * 1000, 2),
                "sweep_max_ms": round(max(sweeps) * 1000, 2),
                "warm_cpu_us_per_request": round(warm_cpu / warm * 1e6, 1), "frozen_objects": frozen,
                "full_collection_unreachable": unreachable,
                "full_collection_ms": round((time.thread_time() - started) * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--warm", type=int, default=100_000, help="warm requests after the first sight of each")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=FREEZE_EVERY:T0,T1,T2")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        every, _, given = args.one.partition(":")
        first, second, third = (int(part) for part in given.split(","))
        result = asyncio.run(run(args.customers, args.warm, None if every == "none" else int(every),
                                 (first, second, third)))
        print(json.dumps(result))
        return
    variants = dict(v.split("=", 1) for v in args.variant)
    for number in range(args.rounds):
        order = list(variants.items()) if number % 2 == 0 else list(reversed(variants.items()))
        for name, spec in order:
            output = subprocess.run([sys.executable, __file__, "--customers", str(args.customers), "--warm",
                                     str(args.warm), "--variant", "x=y", "--one", spec],
                                    check=True, capture_output=True, text=True).stdout
            print(json.dumps({"round": number + 1, "variant": name, "spec": spec, **json.loads(output)}), flush=True)


if __name__ == "__main__":
    main()
