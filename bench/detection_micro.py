"""Detection's own cost, in-process: realistic observations through the real Detection with every
detector on (config/gateway.yaml: sharing, scraping with portal: block and api: flag, seats), on
the memory sightings store and an injected clock.

    python bench/detection_micro.py --customers 20000 --passes 4
    python bench/detection_micro.py --customers 20000 --passes 4 --tracemalloc
    python bench/detection_micro.py --customers 5000 --passes 4 --profile 30
    python bench/detection_micro.py --customers 5000 --passes 3 --bytecodes   # load-insensitive

Each customer is one login or client: 60% API logins (an HTTP library reading records), 30%
portal page loads of a logged-in browser (browser headers, a proof link offered and fetched),
10% anonymous portal page loads (a browser from an address of its own, its proof link fetched).
A pass sends one request per customer, one second of virtual time for all of them (20,000
customers at the policy's 1 call/s), drained every `--batch` observations as the gateway's
100 ms flush would. Reported, per pass and in all:

- CPU us per observation: `time.thread_time` around the drains (only the analysis);
- the longest hold of the event loop by a drain (CPU time between two wake-ups of a task
  that does nothing but yield), with the garbage collector on (as a gateway runs) and the
  number of collections it made;
- after the passes, two `gc.collect()`: GC-tracked objects per customer (`len(gc.get_objects())`
  against before the feed; by type with --census), and with --tracemalloc the live bytes per customer allocated by
  gateway/detect and gateway/state (the sightings the detectors write).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from multidict import CIMultiDict, CIMultiDictProxy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.audit.trail import AuditTrail  # noqa: E402  # after the path is set
from gateway.auth.identity import Identity  # noqa: E402
from gateway.config.loader import load_config  # noqa: E402
from gateway.detect.engine import Detection  # noqa: E402
from gateway.detect.findings import FindingLog  # noqa: E402
from gateway.detect.observation import subject_of  # noqa: E402
from gateway.fleet.grants import Grants  # noqa: E402
from gateway.fleet.sharing import Fleet  # noqa: E402
from gateway.state.memory import MemoryStore  # noqa: E402
from gateway.state.sightings import MemorySightings  # noqa: E402

T0 = 1_800_000_000.0
ENV = {"FAIRGATE_DEMO_SECRET": "fairgate-demo-secret-for-make-run-only",
       "FAIRGATE_HASH_SALT": "fairgate-demo-salt-for-make-run-only", "FAIRGATE_ADMIN_TOKEN": "bench"}
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


class Clock:
    def __init__(self) -> None:
        self.wall = T0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.wall - T0


def headers(pairs: dict[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))  # what aiohttp's request.headers is


API = headers({"Host": "api.example", "User-Agent": "python-requests/2.32.3", "Accept": "*/*",
               "Accept-Encoding": "gzip, deflate", "Authorization": "Bearer x"})
BROWSERS = [headers({"Host": "portal.example", "User-Agent": agent,
                     "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
                     "Accept-Language": "en-GB,en;q=0.9", "Accept-Encoding": "gzip, deflate, br",
                     "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document",
                     "Cookie": "fg_session=eyJ0eXAi.x.y"}) for agent in (FIREFOX, CHROME)]


def address(c: int) -> str:
    return f"{11 + (c >> 16)}.{c >> 8 & 255}.{c & 255}.7"  # a network (/24) of its own


def feed_pass(engine: Detection, clock: Clock, customers: int, step: int, batch: int,
              identities: list[Identity | None]) -> Iterator[None]:
    """One request per customer over one virtual second, yielding after each `batch` requests
    (the caller drains there, as the gateway's flush would)."""
    tick = 1.0 / customers
    for c in range(customers):
        clock.wall = T0 + step + c * tick
        identity = identities[c]
        kind = c % 10
        record = (c * 7 + step * 3) % 500
        if kind < 6:
            engine.observe_request("api", identity, address(c), "GET", f"/api/v1/tickets/{record}", API, 200, None)
        elif kind < 9:
            engine.observe_request("portal", identity, address(c), "GET", f"/portal/tickets/{record}",
                                   BROWSERS[c & 1], 200, None, True)
            if identity is not None:  # the browser fetched the page's proof link
                engine.observe_proof(f"user:{identity.customer}/{identity.user}")
        else:
            engine.observe_request("portal", None, address(c), "GET", f"/portal/tickets/{record}",
                                   BROWSERS[c & 1], 200, None, True)
            engine.observe_proof(subject_of(None, None, address(c), BROWSERS[c & 1]))
        if (c + 1) % batch == 0 or c + 1 == customers:
            yield


class Holds:
    """The longest CPU time a drain held the loop: from its start or a wake-up of a task that
    only yields to the next wake-up or the drain's end. Also the longest garbage collection."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_gc = 0.0
        self.running = True
        self._active = False
        self._last = 0.0
        self._gc_started = 0.0

    def start(self) -> None:
        self._active, self._last = True, time.thread_time()

    def stop(self) -> None:
        self.longest = max(self.longest, time.thread_time() - self._last)
        self._active = False

    async def watch(self) -> None:
        while self.running:
            await asyncio.sleep(0)
            if self._active:
                now = time.thread_time()
                self.longest = max(self.longest, now - self._last)
                self._last = now

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
        else:
            self.longest_gc = max(self.longest_gc, time.thread_time() - self._gc_started)


class Bytecodes:
    """Python bytecodes executed by the drains (`sys.settrace` with opcode events): a count that
    does not move with the machine's load, though blind to work done in C."""

    def __init__(self) -> None:
        self.count = 0

    def trace(self, frame: FrameType, event: str, arg: object) -> Callable[..., object]:
        frame.f_trace_opcodes = True
        return self._opcode

    def _opcode(self, frame: FrameType, event: str, arg: object) -> Callable[..., object]:
        if event == "opcode":
            self.count += 1
        return self._opcode


async def run(args: argparse.Namespace) -> dict[str, object]:
    config = load_config(ROOT / "config" / "gateway.yaml", ENV)
    clock = Clock()
    engine = Detection(MemorySightings(config.sighting_keys), FindingLog(None), clock,
                       Fleet(MemoryStore(), AuditTrail(clock), clock), Grants())
    engine.configure(config)
    customers = args.customers
    identities: list[Identity | None] = [
        None if c % 10 == 9 else
        Identity(sys.intern(f"cust{c}"), f"user{c}@cust{c}.example", f"s{c}", None, None, "demo", None, frozenset(),
                 T0 - 60, T0 + 86400)
        for c in range(customers)]
    gc.collect()
    types_before = Counter(type(o).__name__ for o in gc.get_objects()) if args.census else None
    if args.tracemalloc:
        tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0] if args.tracemalloc else 0
    objects_before = len(gc.get_objects())
    profile = cProfile.Profile() if args.profile else None
    bytecodes = Bytecodes()
    passes = []
    collections_before = sum(stat["collections"] for stat in gc.get_stats())
    for step in range(args.passes):
        holds = Holds()
        gc.callbacks.append(holds.on_gc)
        watcher = asyncio.create_task(holds.watch())
        await asyncio.sleep(0)
        cpu, observations = 0.0, 0
        counted = bytecodes.count
        for _ in feed_pass(engine, clock, customers, step, args.batch, identities):
            observations += engine.backlog
            started = time.thread_time()
            if profile is not None:
                profile.enable()
            holds.start()
            if args.bytecodes:
                sys.settrace(bytecodes.trace)
            await engine.drain()
            sys.settrace(None)
            holds.stop()
            if profile is not None:
                profile.disable()
            cpu += time.thread_time() - started
        holds.running = False
        await watcher
        gc.callbacks.remove(holds.on_gc)
        passes.append({"pass": step + 1, "observations": observations,
                       "cpu_us_per_observation": round(cpu / observations * 1e6, 1),
                       "longest_hold_ms": round(holds.longest * 1e3, 2),
                       "longest_gc_ms": round(holds.longest_gc * 1e3, 2),
                       **({"bytecodes_per_observation": round((bytecodes.count - counted) / observations)}
                          if args.bytecodes else {})})
    collections = sum(stat["collections"] for stat in gc.get_stats()) - collections_before
    gc.collect()
    first_collect = len(gc.get_objects()) - objects_before
    gc.collect()  # a tuple holding a tuple is untracked once the inner one is: by the second at the latest
    result: dict[str, object] = {
        "customers": customers, "passes": passes, "gc_collections_during_feed": collections,
        "findings": sorted({signal for finding in engine.findings.recent() for signal in finding.signals}),
        "tracked": engine.tracked,
        "gc_objects_per_customer": round((len(gc.get_objects()) - objects_before) / customers, 2),
        "gc_objects_per_customer_after_one_collection": round(first_collect / customers, 2),
    }
    if types_before is not None:
        grown = Counter(type(o).__name__ for o in gc.get_objects())
        grown.subtract(types_before)
        result["gc_objects_per_customer_by_type"] = {name: round(count / customers, 2)
                                                     for name, count in grown.most_common(12)}
    if args.tracemalloc:
        snapshot = tracemalloc.take_snapshot()
        by: dict[str, int] = {}
        for stat in snapshot.statistics("filename"):
            name = stat.traceback[0].filename
            part = "detect" if "/gateway/detect/" in name else "state" if "/gateway/state/" in name else "other"
            by[part] = by.get(part, 0) + stat.size
        result["traced_bytes_per_customer"] = round((tracemalloc.get_traced_memory()[0] - traced_before) / customers)
        result["traced_by_package_per_customer"] = {k: round(v / customers) for k, v in sorted(by.items())}
        if args.lines:
            result["top_lines"] = [f"{stat.traceback[0].filename.rpartition('/gateway/')[2]}:"
                                   f"{stat.traceback[0].lineno} {round(stat.size / customers)} B"
                                   for stat in snapshot.statistics("lineno")[:args.lines]]
        tracemalloc.stop()
    if profile is not None:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.profile)
        result["profile"] = out.getvalue()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000, help="observations per drain (a 100 ms flush's worth)")
    parser.add_argument("--tracemalloc", action="store_true", help="live bytes per customer (slower)")
    parser.add_argument("--lines", type=int, default=0, help="with --tracemalloc: the N lines that allocated most")
    parser.add_argument("--profile", type=int, default=0, help="cProfile the drains; print the N top functions")
    parser.add_argument("--census", action="store_true", help="GC-tracked objects per customer by type")
    parser.add_argument("--bytecodes", action="store_true", help="Python bytecodes per observation (slow)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # The gateway's own collector settings (server.gc's defaults), frozen after start-up.
    gc.set_threshold(50_000, 50, 100)
    gc.collect()
    gc.freeze()
    result = asyncio.run(run(args))
    profile = result.pop("profile", None)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=1))
    if profile:
        print(profile)
    os._exit(0)  # skip tearing down a heap of millions of objects


if __name__ == "__main__":
    main()
