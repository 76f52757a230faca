"""Bytes per customer, per component: the real gateway state built in-process (the bench's
every-policy config), N customers fed once each through the request path's stages (auth,
enforcement, limits, usage, detection), their background batches run, then measured.

    python bench/memory_per_customer.py --customers 20000,200000
    python bench/memory_per_customer.py --customers 200000 --tracemalloc   # by component (slower)
    python bench/memory_per_customer.py --customers 20000 --gc freeze+thresholds=50000,50,100
    python bench/memory_per_customer.py --customers 20000 --idle-report --tracemalloc --lines 30

RSS is read from /proc (the number an SRE sees); with --tracemalloc the live Python
allocations are grouped by gateway package (auth, limits, state, usage, detect, enforce, ...).
After feeding, the clock is moved past every idle TTL, the background sweeps run, and RSS is
read again: "released" is what came back to the OS.

`gc_during_feed` counts the garbage collections from start-up to the end of the usage flush, by
generation, with their longest and total pause; `--gc` applies a variant first.

Each customer count runs in its own child process, so one count's heap does not skew the next.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.state.tables import SWEEP_INTERVAL, SWEEP_PASS  # noqa: E402  # after the path is set

if TYPE_CHECKING:
    from gateway.server.lifecycle import GatewayServer

SECRET = "bench-memory-secret-0123456789abcdef"
ISSUER = "https://issuer.bench"
# Moved forward after feeding: past every idle TTL, the tokens' expiry and the day's quota period.
IDLE = 25 * 3600.0
# The idle sweep runs at most this many passes' worth of ticks (see sweep_all).
MAX_PASSES = 20

CONFIG = """
server: {{listen: "127.0.0.1:0", access_log: false}}
admin: {{listen: "127.0.0.1:0"}}
logging: {{level: warning}}
auth:
  issuers:
    - {{name: bench, issuer: "{issuer}", audiences: [bench], algorithms: [HS256], hmac_secret: "{secret}"}}
upstreams:
  bench: {{url: "http://127.0.0.1:9"}}
limits: {{default_plan: bench}}
plans:
  bench:
    limits:
      - {{name: sustained, kind: rate, rate: 100000/s, burst: 100000}}
      - {{name: daily, kind: quota, metric: requests, period: day, limit: 1000000000000}}
detection:
  hash_salt: bench-salt-of-16-bytes
  sharing: {{action: flag}}
  scraping: {{actions: {{api: flag}}}}
  seats: {{}}
enforcement: {{mode: enforce, policy: "https://example.com/fair-use"}}
routes:
  - {{name: detect, path_prefix: /, upstream: bench}}
"""


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def component(filename: str) -> str:
    """gateway/auth/token_cache.py -> auth; anything outside gateway/ by its top package."""
    path = Path(filename)
    parts = path.parts
    if "gateway" in parts:
        rest = parts[parts.index("gateway") + 1:]
        return "gateway/" + (rest[0] if len(rest) > 1 else rest[0].removesuffix(".py"))
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    return path.name


def by_component(snapshot: tracemalloc.Snapshot) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for stat in snapshot.statistics("filename"):
        name = component(stat.traceback[0].filename)
        sizes[name] = sizes.get(name, 0) + stat.size
    return sizes


def tokens(count: int) -> list[str]:
    import jwt

    now = int(time.time())
    return [jwt.encode({"iss": ISSUER, "aud": "bench", "sub": f"user-{n}@m-{n}", "org_id": f"m-{n}",
                        "sid": f"s-{n}", "iat": now, "exp": now + 6 * 3600}, SECRET, algorithm="HS256")
            for n in range(count)]


class LongestHold:
    """The longest the event loop went without running a probe that only yields: how long the
    batch awaited inside this block held the loop at a time. In CPU time of this thread, so a
    busy machine that takes the core away (load 12 on 2 cores while this was written) does
    not count as holding."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _probe(self) -> None:
        while True:
            started = time.thread_time()
            await asyncio.sleep(0)
            self.longest = max(self.longest, time.thread_time() - started)

    async def __aenter__(self) -> LongestHold:
        self._task = asyncio.get_running_loop().create_task(self._probe())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0)
        assert self._task is not None
        self._task.cancel()

    @property
    def ms(self) -> float:
        return round(self.longest * 1000, 1)


async def measure(count: int, trace: bool, unchunked: bool = False, gc_variant: str = "default",
                  lines: int = 0, idle_report: bool = False) -> dict[str, object]:
    from multidict import CIMultiDict, CIMultiDictProxy

    from gateway.config.loader import load_config
    from gateway.server.lifecycle import GatewayServer, ServeOptions
    from tests.support.clock import ManualClock

    clock = ManualClock(time.time())
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "gateway.yaml"
        path.write_text(CONFIG.format(issuer=ISSUER, secret=SECRET))
        config = load_config(path)
        server = GatewayServer(config, ServeOptions(str(path), clock=clock))
        state = server.state
        runtime = server.runtimes.current
        target = runtime.router.match(None, "/api/items")
        assert target is not None
        bearer = [f"Bearer {token}" for token in tokens(count)]
        headers = CIMultiDictProxy(CIMultiDict({"User-Agent": "bench/1.0", "Accept": "application/json"}))

        holds: dict[str, float] = {}
        gc.collect()
        tune_gc(gc_variant)
        frozen = gc.get_freeze_count()
        collections = Collections()
        gc.callbacks.append(collections)
        before_rss = rss_bytes()
        before_types = object_types() if idle_report else {}
        before_blocks = sys.getallocatedblocks()
        before_arenas = pymalloc_arenas() if idle_report else {}
        cpu_start = time.thread_time()
        if trace:
            tracemalloc.start(1)
            before = tracemalloc.take_snapshot()
        start = time.perf_counter()
        for n, authorization in enumerate(bearer):
            client_ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            identity = await runtime.authenticator.authenticate(authorization, client_ip, required=True, scopes=())
            standing = runtime.enforcement.admit(identity)
            assert identity is not None and runtime.limiter is not None and runtime.usage is not None
            admission = await runtime.limiter.admit(identity, target.route, client_ip, f"r{n}",
                                                    throttle=1.0 if standing is None else 0.5)
            runtime.limiter.finish(admission, 100, 0.001)
            runtime.usage.forwarded(identity.customer, 1, 100, 67, 0.001, identity.licenses)
            runtime.detection.observe_request("api", identity, client_ip, "GET", f"/api/items/{n}", headers, 200,
                                              None)
            if n == 0:
                # A running gateway's usage flush (every flush interval) has run before the sweep
                # reaches the usage counters, so they are stamped with the sweep's clock; without
                # this, whether the background flush ran during the feed decided whether the idle
                # sweep could pack them, from run to run.
                await state.usage.flush()
                server.sweeper.tick()
            if n % 1000 == 999:
                server.sweeper.tick()  # as a running gateway's, every 100 ms (nothing is idle yet)
                async with LongestHold() as held:
                    await state.detection.drain()
                holds["detection_drain_1000"] = max(holds.get("detection_drain_1000", 0.0), held.ms)
        await state.detection.drain()
        async with LongestHold() as held:
            await state.enforcement.drain()
        holds["enforcement_drain"] = held.ms
        if runtime.limiter is not None:
            await runtime.limiter.drain()
        if unchunked:
            import gateway.usage.meter

            gateway.usage.meter._CHUNK = 10**9  # what the flush held before it was chunked
        async with LongestHold() as held:
            await state.usage.flush()
        holds["usage_flush_all_customers"] = held.ms
        server.sweeper.tick()  # the gateway's next tick, 100 ms after the flush
        fed = time.perf_counter() - start
        fed_cpu = time.thread_time() - cpu_start
        gc.callbacks.remove(collections)
        del bearer
        fed_entries = entries(server)
        gc.collect()
        after_rss = rss_bytes()
        result: dict[str, object] = {
            "customers": count, "feed_seconds": round(fed, 1),
            "rss_before_mb": round(before_rss / 2**20, 1), "rss_after_mb": round(after_rss / 2**20, 1),
            "rss_bytes_per_customer": round((after_rss - before_rss) / count),
            "longest_loop_hold_ms": holds, "gc_variant": gc_variant, "frozen_objects": frozen,
            "gc_during_feed": collections.report(),
            "feed_cpu_us_per_customer": round(fed_cpu / count * 1e6, 1),
            "objects_after_feed": len(gc.get_objects()),
        }
        if trace:
            after = tracemalloc.take_snapshot()
            grown = by_component(after)
            base = by_component(before)
            result["traced_bytes_per_customer"] = {
                name: round((size - base.get(name, 0)) / count)
                for name, size in sorted(grown.items(), key=lambda item: -(item[1] - base.get(item[0], 0)))
                if abs(size - base.get(name, 0)) / count >= 5
            }
            result["traced_total_per_customer"] = round(
                (sum(grown.values()) - sum(base.values())) / count)
            if lines:
                result["traced_lines_per_customer"] = {
                    f"{stat.traceback[0].filename.rpartition('gateway/')[2]}:{stat.traceback[0].lineno}":
                        round(stat.size_diff / count)
                    for stat in after.compare_to(before, "lineno")[:lines] if abs(stat.size_diff) / count >= 5}
        # Idle: every entry's last use is now long ago; the background sweeps get their ticks.
        clock.advance(IDLE)
        swept = await sweep_all(server)
        gc.collect()
        result["sweep"] = swept
        result["entries_before_idle"] = fed_entries
        idle_rss = rss_bytes()
        result["rss_after_idle_mb"] = round(idle_rss / 2**20, 1)
        # Issue 14 target 4: at most 25% of the feed's growth kept once idle.
        result["idle_kept_share_of_growth"] = round((idle_rss - before_rss) / max(1, after_rss - before_rss), 3)
        # glibc's malloc_trim, measured (not adopted: see docs/performance.md).
        started = time.perf_counter()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        result["malloc_trim_ms"] = round((time.perf_counter() - started) * 1000, 1)
        result["rss_after_trim_mb"] = round(rss_bytes() / 2**20, 1)
        result["entries_after_idle"] = entries(server)
        if idle_report:
            result["idle_report"] = idle_diagnosis(count, before_types, before_blocks, before_arenas,
                                                   before if trace else None, lines or 20)
        return result


async def sweep_all(server: GatewayServer) -> dict[str, float]:
    """The background sweep, tick by tick as the running gateway does them, for two full passes
    and then on until a whole pass's worth of ticks forgets nothing (most MAX_PASSES passes);
    how long ticks held the loop, apart from those a garbage collection ran in.

    Why not two passes alone: a tick stops after SWEEP_TIME of work, so on a loaded machine two
    passes' worth of ticks at 200,000 customers left 40-85% of the entries unswept (a running
    gateway keeps ticking: they go a few minutes later), and "kept after idle" measured the
    sweep's progress rather than what memory comes back."""
    collected = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    gc.callbacks.append(on_gc)
    per_pass = round(SWEEP_PASS / SWEEP_INTERVAL)
    clean: list[float] = []
    with_gc: list[float] = []
    ticks = forgotten_this_pass = 0
    while ticks < MAX_PASSES * per_pass:
        collected.clear()
        started = time.thread_time()  # CPU time: see LongestHold
        forgotten_this_pass += server.sweeper.tick()
        (with_gc if collected else clean).append(time.thread_time() - started)
        ticks += 1
        await asyncio.sleep(0)
        if ticks % per_pass == 0:
            if ticks >= 2 * per_pass and not forgotten_this_pass:
                break
            forgotten_this_pass = 0
    gc.callbacks.remove(on_gc)
    clean.sort()
    return {"ticks": ticks, "passes": round(ticks / per_pass, 1),
            "p50_tick_ms": round(clean[len(clean) // 2] * 1000, 3), "max_tick_ms": round(clean[-1] * 1000, 2),
            "ticks_with_gc": len(with_gc),
            "max_tick_with_gc_ms": round(max(with_gc, default=0.0) * 1000, 2)}


class Collections:
    """Every garbage collection while installed, by generation: how many, the longest and the
    total pause (CPU time of this thread, as LongestHold; wall time beside it)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self.total = [0.0, 0.0, 0.0]
        self.wall_total = 0.0
        self._started = (0.0, 0.0)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = (time.thread_time(), time.perf_counter())
            return
        cpu, wall = time.thread_time() - self._started[0], time.perf_counter() - self._started[1]
        generation = info["generation"]
        self.count[generation] += 1
        self.longest[generation] = max(self.longest[generation], cpu)
        self.total[generation] += cpu
        self.wall_total += wall

    def report(self) -> dict[str, object]:
        return {f"gen{n}": {"count": self.count[n], "max_ms": round(self.longest[n] * 1000, 1),
                            "total_ms": round(self.total[n] * 1000, 1)} for n in range(3)} | {
            "all_total_wall_ms": round(self.wall_total * 1000, 1)}


def tune_gc(variant: str) -> None:
    """The variants measured for issue 14 (docs/performance.md, "Garbage collection"): default,
    freeze, thresholds (50000,50,100), freeze+thresholds, or thresholds=A,B,C and
    freeze+thresholds=A,B,C for others."""
    if "thresholds" in variant:
        _, _, given = variant.partition("=")
        first, second, third = (int(part) for part in given.split(",")) if given else (50_000, 50, 100)
        gc.set_threshold(first, second, third)
    if "freeze" in variant:
        gc.collect()
        gc.freeze()


def object_types() -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] = counts.get(name, 0) + 1
    return counts


def idle_diagnosis(count: int, before_types: dict[str, int], before_blocks: int, before_arenas: dict[str, float],
                   before: tracemalloc.Snapshot | None, lines: int) -> dict[str, object]:
    """What is still held after the idle sweep emptied every table: GC-tracked objects by type
    and pymalloc blocks against before the feed, tracemalloc's lines that still hold most
    (with --tracemalloc), and pymalloc's arenas."""
    now_types = object_types()
    grown = sorted(((name, now_types.get(name, 0) - before_types.get(name, 0))
                    for name in set(now_types) | set(before_types)), key=lambda item: -abs(item[1]))
    report: dict[str, object] = {
        "gc_objects_kept_per_customer": round((sum(now_types.values()) - sum(before_types.values())) / count, 3),
        "gc_objects_kept_by_type": {name: delta for name, delta in grown[:lines] if delta},
        "allocated_blocks_kept_per_customer": round((sys.getallocatedblocks() - before_blocks) / count, 3),
    }
    if before is not None:
        now = tracemalloc.take_snapshot()
        report["traced_kept_per_customer"] = round(
            sum(stat.size_diff for stat in now.compare_to(before, "filename")) / count)
        report["traced_kept_lines_per_customer"] = {
            f"{stat.traceback[0].filename.rpartition('site-packages/')[2].rpartition('gateway/')[2]}:"
            f"{stat.traceback[0].lineno}": round(stat.size_diff / count, 1)
            for stat in now.compare_to(before, "lineno")[:lines]}
    report["pymalloc_before_feed"] = before_arenas
    report["pymalloc_after_idle"] = pymalloc_arenas()
    return report


def pymalloc_arenas() -> dict[str, float]:
    """pymalloc's 1 MiB arenas in use and how full they are, from `sys._debugmallocstats()`
    (which writes to the C stderr, so it is caught through a file descriptor). An arena goes
    back to the OS only when every block in it is free. Empty without pymalloc (tracemalloc on
    replaces the allocator)."""
    with tempfile.TemporaryFile() as caught:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        text = caught.read().decode()
    wanted = {"arenas allocated current": "arenas", "bytes in allocated blocks": "allocated_mb",
              "bytes in available blocks": "free_in_used_pools_mb", "unused pools": "unused_pools_mb"}
    found: dict[str, float] = {}
    for line in text.splitlines():
        for label, name in wanted.items():
            if label in line and "=" in line:
                value = int(line.rpartition("=")[2].replace(",", ""))
                found[name] = value if name == "arenas" else round(value / 2**20, 1)
    return found


def entries(server: GatewayServer) -> dict[str, int]:
    return {name: len(table) for name, table in server.state.tables.counts()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", default="20000,200000", help="customer counts, comma-separated")
    parser.add_argument("--tracemalloc", action="store_true", help="also group live allocations by component")
    parser.add_argument("--unchunked", action="store_true", help="measure the usage flush in one piece")
    parser.add_argument("--gc", default="default", help=tune_gc.__doc__)
    parser.add_argument("--lines", type=int, default=0,
                        help="with --tracemalloc, also the N source lines that allocated most")
    parser.add_argument("--idle-report", action="store_true",
                        help="after the idle sweep: what is still held (objects by type, pymalloc blocks and "
                             "arenas, with --tracemalloc the lines)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process's count
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(asyncio.run(measure(args.one, args.tracemalloc, args.unchunked, args.gc, args.lines,
                                                  args.idle_report))))
        return
    for count in (int(part) for part in args.customers.split(",") if part.strip()):
        command = [sys.executable, __file__, "--one", str(count), *(["--tracemalloc"] if args.tracemalloc else []),
                   *(["--unchunked"] if args.unchunked else []),
                   *(["--idle-report"] if args.idle_report else []), "--gc", args.gc, "--lines", str(args.lines)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        print(json.dumps(json.loads(output.splitlines()[-1]), indent=2))


if __name__ == "__main__":
    main()
