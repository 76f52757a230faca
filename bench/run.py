"""One benchmark run: the same wrk load on the upstream directly, nginx as a reverse proxy,
a bare aiohttp server (the framework's own ceiling), a naive aiohttp ClientSession proxy and
fairgate (plain, and with HS256 bearer tokens from a spread of users, authentication off and
on), all answering from the same nginx `return 200` upstream. With every policy on, fairgate
also serves many customers (2,000, 20,000 and 200,000 distinct customers' tokens in rotation,
each sent once before the rounds, so the rounds measure warm tokens). Then, in the same run:
open-loop latency at half of fairgate's measured maximum, RSS per customer and after an idle
period, a fleet of two gateways on one Redis, and `--workers 1` against `--workers 2`; last,
issue 14's targets table.

    python bench/run.py [--duration 5] [--rounds 5] [--connections 32] [--markdown FILE] [--json FILE]
                        [--many-customers 2000,20000,200000] [--idle 60] [--skip open-loop,fleet,workers,memory]
    python bench/run.py --quick [--baseline FILE]     # make bench-quick: before/after a hot-path change

Targets are measured in interleaved rounds and the median round is reported, so a noisy
neighbour on the machine skews every target alike. With taskset available, the server under
test gets core 0 and the load generator and upstream share core 1.

Needs wrk (load) and nginx (upstream and reference proxy): `apt-get install -y wrk nginx`;
gcc for the open-loop client (bench/openloop/openloop.c, built on first use).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `bench` and the tests' port allocator are packages of ROOT

from bench import compare, fleet, looplag, names, openloop, report, targets  # noqa: E402
from bench.processes import (  # noqa: E402
    LOAD_CORE,
    SERVER_CORE,
    RedisServer,
    bench_port,
    cpu_seconds,
    find,
    pin_detection_workers,
    pinned,
    proxy_conf,
    rss_bytes,
    start_fairgate,
    start_nginx,
    start_redis,
    stop,
    upstream_conf,
    wait_http,
)
from bench.tokens import jwt_verifications_per_second, send_each_token_once, write_tokens  # noqa: E402
from bench.wrk import Result, Target, measure, median, run_wrk  # noqa: E402

MANY_CUSTOMERS = (2_000, 20_000, 200_000)
EXTRAS = ("open-loop", "memory", "fleet", "workers")
EXTRA_ROUNDS = 3  # rounds of the fleet, the workers and the open loop: each costs a gateway's warm-up or more


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per target and round (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables as markdown")
    parser.add_argument("--json", metavar="FILE", help="also write each target's medians as JSON (for --baseline)")
    parser.add_argument("--baseline", metavar="FILE", help="print the deltas against an earlier --json FILE")
    parser.add_argument("--only", metavar="TEXT", action="append",
                        help="measure only targets whose name contains TEXT (repeatable; for quick A/B runs); "
                             "the fleet and workers runs only when TEXT names them (--only fleet)")
    parser.add_argument("--many-customers", metavar="N,N", type=_counts, default=MANY_CUSTOMERS,
                        help="customer counts of the many-customer targets (default 2000,20000,200000; 0 for none)")
    parser.add_argument("--idle", type=float, default=60.0, metavar="SECONDS",
                        help="idle time of the memory-store gateway before its RSS is read again (default 60)")
    parser.add_argument("--gateway-config", type=Path, metavar="FILE",
                        help="YAML merged over every bench gateway's config (e.g. shorter idle TTLs for --idle)")
    parser.add_argument("--gateway-module", default="gateway", metavar="MODULE",
                        help="what `python -m` runs as the memory-store gateway (default gateway; "
                             "bench.detection_worker_gateway: the detection-in-a-worker prototype)")
    parser.add_argument("--detection-worker-core", type=int, metavar="CORE",
                        help="with a --gateway-config that sets detection.worker: pin the memory-store gateway's "
                             "worker process to CORE (it inherits the gateway's otherwise), and report its CPU")
    parser.add_argument("--detection-worker-nice", type=int, default=0, metavar="N",
                        help="with --detection-worker-core: run the worker at this nice value")
    parser.add_argument("--skip", type=_extras, default=(), metavar="NAME,NAME",
                        help=f"leave out some of the runs after the rounds: {','.join(EXTRAS)}")
    parser.add_argument("--quick", action="store_true",
                        help="make bench-quick: aiohttp bare, fairgate no policies and every policy at 20,000 warm "
                             "customers, 2 rounds x 5 s, nothing else (under 2 minutes)")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        # Defaults, so `--quick --rounds 1 --duration 1` still checks the quick path in seconds.
        parser.set_defaults(rounds=2, duration=5, many_customers=(20_000,), skip=EXTRAS)
    args = parser.parse_args(argv)
    if args.quick and not args.only:
        args.only = [names.BARE, names.PLAIN, *(names.many_customers(count) for count in args.many_customers)]
    if args.only:
        # A focused run leaves out the fleet and the workers unless an --only names them.
        args.skip = (*args.skip, *(extra for extra in ("fleet", "workers")
                                   if extra not in args.skip and not any(extra in text for text in args.only)))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    for tool in ("wrk", "nginx"):
        if not find(tool):
            print(f"bench: {tool} is not installed (nginx serves as upstream and reference proxy).\n"
                  f"Install it with: apt-get update && apt-get install -y {tool}", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="fairgate-bench-") as tmp:
        processes: list = []
        try:
            output = _run(args, Path(tmp), processes)
        finally:
            for process in reversed(processes):
                stop(process)
    output += f"\n\nbench/run.py took {time.monotonic() - started:.0f} s of wall time."
    print(output)
    if args.markdown:
        Path(args.markdown).write_text(output + "\n")
    return 0


def _run(args: argparse.Namespace, workdir: Path, processes: list) -> str:
    wanted = _wanted(args)
    upstream_port, proxy_port, hello_port, naive_port = (bench_port() for _ in range(4))
    limited_tokens = write_tokens(workdir / "limited.txt", "customer")
    unlimited_tokens = write_tokens(workdir / "unlimited.txt", "free")
    # One user per customer, none listed in the config: each has the default plan's limits. The
    # counts share their first customers, so after the largest warm-up that many are tracked.
    many_tokens = {count: write_tokens(workdir / f"many-{count}.txt", "many", count, count)
                   for count in sorted(args.many_customers)}

    def bearer(tokens: Path) -> list[str]:
        return [str(ROOT / "bench" / "bearer.lua"), "--", str(tokens)]

    def rotation(tokens: Path) -> list[str]:
        return [str(ROOT / "bench" / "rotate.lua"), "--", str(tokens)]

    upstream = start_nginx(workdir / "upstream", upstream_conf(upstream_port), LOAD_CORE)
    processes.append(upstream)
    targets_: list[Target] = [Target(names.DIRECT, upstream_port, upstream.pid)]
    if wanted(names.NGINX):
        proxy = start_nginx(workdir / "proxy", proxy_conf(proxy_port, upstream_port), SERVER_CORE)
        processes.append(proxy)
        targets_.append(Target(names.NGINX, proxy_port, proxy.pid))
    hello = pinned([sys.executable, str(ROOT / "bench" / "aiohttp_hello.py"), str(hello_port)], SERVER_CORE)
    processes.append(hello)
    targets_.append(Target(names.BARE, hello_port, hello.pid))
    if wanted(names.NAIVE):
        naive = pinned([sys.executable, str(ROOT / "bench" / "aiohttp_client_proxy.py"),
                        str(naive_port), str(upstream_port)], SERVER_CORE)
        processes.append(naive)
        targets_.append(Target(names.NAIVE, naive_port, naive.pid))
    # Each fairgate process serves every variant, so a comparison is never between two
    # processes (which alone differ by several microseconds per request here).
    memory = start_fairgate(workdir / "memory.yaml", upstream_port, "memory://", extra=args.gateway_config,
                            module=args.gateway_module)
    processes.append(memory.process)
    on_memory = {"pid": memory.process.pid, "admin_port": memory.admin_port}
    targets_ += [
        Target(names.PLAIN, memory.port, path="/open/bench", **on_memory),
        Target(names.AUTH_OFF, memory.port, script=bearer(limited_tokens), path="/open/bench", **on_memory),
        Target(names.AUTH_ON, memory.port, script=bearer(unlimited_tokens), **on_memory),
        Target(names.LIMITS_MEMORY, memory.port, script=bearer(limited_tokens), **on_memory),
        Target(names.DETECT_MEMORY, memory.port, script=bearer(unlimited_tokens), path="/detect/bench", **on_memory),
        Target(names.EVERY_POLICY, memory.port, script=bearer(limited_tokens), path="/detect/bench", **on_memory),
    ]
    targets_ += [Target(names.many_customers(count), memory.port, script=rotation(tokens), path="/detect/bench",
                        warm_up=tokens, **on_memory)
                 for count, tokens in many_tokens.items()]
    redis_wanted = any(wanted(n) for n in (names.AUTH_ON_REDIS, names.LIMITS_REDIS, names.DETECT_REDIS))
    if redis_wanted and (redis := start_redis(workdir)) is not None:
        processes.append(redis.process)
        shared = start_fairgate(workdir / "redis.yaml", upstream_port, f"redis://127.0.0.1:{redis.port}/0",
                                extra=args.gateway_config)
        processes.append(shared.process)
        on_redis = {"pid": shared.process.pid, "admin_port": shared.admin_port, "redis_port": redis.port}
        targets_ += [
            Target(names.AUTH_ON_REDIS, shared.port, script=bearer(unlimited_tokens), **on_redis),
            Target(names.LIMITS_REDIS, shared.port, script=bearer(limited_tokens), **on_redis),
            Target(names.DETECT_REDIS, shared.port, script=bearer(unlimited_tokens), path="/detect/bench",
                   **on_redis),
        ]
    targets_ = [t for t in targets_ if wanted(t.name)]
    fleet_targets: list[Target] = []
    workers: dict[int, tuple[Target, list[int], RedisServer]] = {}
    twenty = many_tokens.get(20_000) or (many_tokens[min(many_tokens)] if many_tokens else None)
    # The fleet and the workers each get a Redis of their own: INFO commandstats counts a whole
    # server, and idle gateways on it (fleet merges, notices) would add to another run's counts.
    fleet_redis = start_redis(workdir) if "fleet" not in args.skip and twenty is not None else None
    if fleet_redis is not None and twenty is not None:
        processes.append(fleet_redis.process)
        members = []
        for n in range(2):
            # Both on the server core: the fleet's total is what one core gives.
            member = start_fairgate(workdir / f"fleet-{n}.yaml", upstream_port,
                                    f"redis://127.0.0.1:{fleet_redis.port}/0", extra=args.gateway_config)
            processes.append(member.process)
            members.append(member)
        fleet_targets = [Target(f"fleet member {n + 1}", g.port, g.process.pid, rotation(twenty), fleet_redis.port,
                                "/detect/bench", twenty, g.admin_port) for n, g in enumerate(members)]
    for count in (1, 2) if "workers" not in args.skip else ():
        if (own := start_redis(workdir)) is None:
            break
        processes.append(own.process)
        # Left to the scheduler: on 2 cores, 2 workers need both (wrk and the upstream share them).
        supervised = start_fairgate(workdir / f"workers-{count}.yaml", upstream_port,
                                    f"redis://127.0.0.1:{own.port}/0", core=None, workers=count,
                                    extra=args.gateway_config)
        processes.append(supervised.process)
        workers[count] = (Target(f"--workers {count}", supervised.port, supervised.process.pid,
                                 bearer(limited_tokens), own.port, "/detect/bench"), [], own)

    # Warm-up: pools and token caches, the 400-user targets first so the RSS before the
    # many-customer pass is that of a gateway that has served a little of everything.
    for target in targets_:
        wait_http(f"http://127.0.0.1:{target.port}/healthz")
        if target.warm_up is None:
            run_wrk(target, 1, args)
    detection_workers = pin_detection_workers(memory.process.pid, args.detection_worker_core,
                                              nice=args.detection_worker_nice)
    base_rss = rss_bytes(memory.process.pid)
    cold: dict[int, float] = {}
    for count, tokens in many_tokens.items():
        name = names.many_customers(count)
        target = next((t for t in targets_ if t.name == name), None)
        if target is not None:
            cold[count] = _first_sight(target, tokens, args.connections)
            run_wrk(target, 1, args)
    full_rss = rss_bytes(memory.process.pid)
    jwt_rate = _pinned_here(lambda: jwt_verifications_per_second(limited_tokens)) if cold else None

    batches_before = looplag.parse_batches(looplag.scrape(memory.admin_port) or "")
    rounds: dict[str, list[Result]] = {target.name: [] for target in targets_}
    cpu_before = [cpu_seconds(pid) for pid in (memory.process.pid, *detection_workers)]
    for number in range(args.rounds):
        # Every other round runs backwards, so a drift of the machine during a round
        # favours neither side of a comparison.
        for target in targets_ if number % 2 == 0 else reversed(targets_):
            rounds[target.name].append(measure(target, args))
    if detection_workers:
        gateway_cpu, *worker_cpu = (cpu_seconds(pid) - before for pid, before in
                                    zip((memory.process.pid, *detection_workers), cpu_before, strict=True))
        print(f"detection worker: {sum(worker_cpu):.1f} s CPU over the rounds, the memory-store gateway "
              f"{gateway_cpu:.1f} s; RSS worker {sum(map(rss_bytes, detection_workers)) / 2**20:.0f} MiB, "
              f"gateway {rss_bytes(memory.process.pid) / 2**20:.0f} MiB", file=sys.stderr)

    m = targets.Measurements(rounds, names.BARE, names.PLAIN, names.EVERY_POLICY,
                             {count: names.many_customers(count) for count in many_tokens}, cold, jwt_rate)
    extra_rounds = min(args.rounds, EXTRA_ROUNDS)
    open_loop_name = names.many_customers(20_000 if 20_000 in many_tokens else max(many_tokens, default=0))
    if "open-loop" not in args.skip and rounds.get(open_loop_name):
        # Half of what wrk got through in this run: "half load" of this build on this machine.
        rate = statistics.median(r.requests_per_second for r in rounds[open_loop_name]) / 2
        target = next(t for t in targets_ if t.name == open_loop_name)
        m.open_loop_customers = 20_000 if 20_000 in many_tokens else max(many_tokens)
        references = [t for t in targets_ if t.name in (names.NGINX, names.BARE)]
        for _ in range(extra_rounds):
            before = looplag.read(target.admin_port)
            m.open_loop.append(openloop.run(target.port, target.path, rate, args.duration, args.connections,
                                            target.warm_up))
            m.open_loop_lags.append(looplag.during(before, looplag.read(target.admin_port)))
            for reference in references:  # interleaved: the machine's own tail at this rate
                m.open_loop_references.setdefault(reference.name, []).append(
                    openloop.run(reference.port, reference.path, rate, args.duration, args.connections, None))
    idle_since = time.monotonic()  # the memory-store gateway gets no more requests
    memory_metrics = looplag.scrape(memory.admin_port) or ""
    batches_after = looplag.parse_batches(memory_metrics)
    collections = looplag.gc_pauses(memory_metrics)
    m.batches = {batch: looplag.during(batches_before.get(batch, {}), after) for batch, after in batches_after.items()}

    if fleet_targets and fleet_redis is not None:
        for target in fleet_targets:
            wait_http(f"http://127.0.0.1:{target.port}/healthz")
            assert target.warm_up is not None
            _first_sight(target, target.warm_up, args.connections)
        m.fleet = [fleet.measure_fleet(fleet_targets, fleet_redis.port, fleet_redis.process.pid, args)
                   for _ in range(extra_rounds)]
        m.fleet_reference = names.many_customers(next(c for c, t in many_tokens.items() if t == twenty))
    if len(workers) == 2:
        for count, (target, pids, _) in workers.items():
            wait_http(f"http://127.0.0.1:{target.port}/healthz")
            pids += fleet.worker_pids(target.pid, count)
            run_wrk(target, 1, args)
        for number in range(extra_rounds):
            for count in (1, 2) if number % 2 == 0 else (2, 1):
                target, pids, own = workers[count]
                m.workers.setdefault(count, []).append(
                    fleet.measure_workers(target, pids, own.port, own.process.pid, args))

    largest = max(many_tokens, default=0)
    if "memory" not in args.skip and largest in cold:
        idle_rss = None
        if args.idle > 0:
            time.sleep(max(0.0, args.idle - (time.monotonic() - idle_since)))
            idle_rss = rss_bytes(memory.process.pid)
        m.memory = targets.Memory(largest, base_rss, full_rss, idle_rss, args.idle)

    results = [median(rounds[target.name]) for target in targets_]
    try:
        judged = targets.markdown(m)
    except Exception:  # a run of 11 minutes still prints its main table
        import traceback

        judged = "The targets table failed:\n" + traceback.format_exc()
    parts = [report.table(results, rounds, cold, args), "", judged]
    lag = looplag.worst([r.lag for r in results])
    if lag is not None:
        parts.append(f"Event-loop lag (fairgate_event_loop_lag_seconds, median rounds): worst {lag.text()}.")
    if collections is not None:
        parts.append(f"Garbage collection (fairgate_gc_pause_seconds, memory-store gateway, since its start, "
                     f"warm-ups included): {collections}.")
    if args.json:
        compare.save(Path(args.json), rounds)
    if args.baseline:
        parts += ["", compare.deltas(Path(args.baseline), rounds)]
    return "\n".join(parts)


def _first_sight(target: Target, tokens: Path, connections: int) -> float:
    """Each token sent once (the rounds then see warm tokens); the req/s of that pass."""
    if openloop.build() is not None:
        result = openloop.each_token_once(target.port, target.path, connections, tokens)
        if result.errors or result.unfinished:
            print(f"bench: first sight of {tokens.name}: {result.errors} errors, {result.unfinished} unanswered",
                  file=sys.stderr)
        return result.rate_done
    print("bench: no gcc, the first-sight pass uses a Python client (which may be its limit)", file=sys.stderr)
    return send_each_token_once(f"http://127.0.0.1:{target.port}{target.path}", tokens, connections, LOAD_CORE)


def _wanted(args: argparse.Namespace) -> Callable[[str], bool]:
    def wanted(name: str) -> bool:
        return not args.only or any(text in name for text in args.only)
    return wanted


def _pinned_here(work: Callable[[], float]) -> float:
    """Run `work` in this process on the load core (where the clients run), then restore."""
    cores = os.sched_getaffinity(0)
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOAD_CORE})
    try:
        return work()
    finally:
        os.sched_setaffinity(0, cores)


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected customer counts such as 20000,200000, got {text!r}") from None
    if any(count < 0 for count in counts):
        raise argparse.ArgumentTypeError("customer counts cannot be negative")
    return tuple(count for count in counts if count)


def _extras(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in EXTRAS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown --skip {', '.join(unknown)}; choose from {', '.join(EXTRAS)}")
    return chosen


if __name__ == "__main__":
    sys.exit(main())
