"""Several gateways on one Redis: a fleet of two processes with the load split across both
(issue 14, target 5), and `fairgate run --workers N` (target 6), each round measured as one
wrk per gateway running at the same time."""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.processes import LOAD_CORE, children, cpu_seconds, taskset
from bench.redis_counts import command_calls, redis_commands
from bench.wrk import Result, Target, parse


@dataclass(frozen=True)
class FleetRound:
    members: list[Result]  # one per gateway
    requests_per_second: float  # all gateways together
    evalsha_per_request: float
    other_per_request: float
    redis_cpu_us_per_request: float


def measure_fleet(targets: list[Target], redis_port: int, redis_pid: int, args: argparse.Namespace) -> FleetRound:
    """One wrk per target at once, the connections split between them."""
    connections = max(1, args.connections // len(targets))
    outputs: list[str] = [""] * len(targets)

    def load(index: int) -> None:
        target = targets[index]
        script = ["-s", target.script[0]] if target.script else []
        command = [*taskset(LOAD_CORE), "wrk", f"-t{args.threads}", f"-c{connections}", f"-d{args.duration}s",
                   "--latency", *script, f"http://127.0.0.1:{target.port}{target.path}", *target.script[1:]]
        outputs[index] = subprocess.run(command, check=True, capture_output=True, text=True).stdout

    evalsha_before, other_before = redis_commands(redis_port)
    redis_cpu_before = cpu_seconds(redis_pid)
    cpu_before = [cpu_seconds(t.pid) for t in targets]
    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu_used = [cpu_seconds(t.pid) - before for t, before in zip(targets, cpu_before, strict=True)]
    redis_cpu = cpu_seconds(redis_pid) - redis_cpu_before
    evalsha_after, other_after = redis_commands(redis_port)
    members = [parse(t.name, out, cpu, None) for t, out, cpu in zip(targets, outputs, cpu_used, strict=True)]
    total = sum(m.requests for m in members) or 1
    return FleetRound(members, sum(m.requests_per_second for m in members), (evalsha_after - evalsha_before) / total,
                      (other_after - other_before) / total, redis_cpu / total * 1e6)


@dataclass(frozen=True)
class WorkersRound:
    workers: int
    requests_per_second: float
    shares: list[float]  # each worker's part of the workers' CPU time: SO_REUSEPORT spreads connections
    cpu_us_per_request: float  # all workers' CPU over all requests
    redis_cpu_us_per_request: float
    evalsha_per_request: float


def worker_pids(supervisor: int, count: int, timeout: float = 20.0) -> list[int]:
    if count == 1:
        return [supervisor]  # `--workers 1` serves in the process itself
    deadline = time.monotonic() + timeout
    while len(pids := children(supervisor)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: --workers {count} started only {len(pids)} workers")
        time.sleep(0.1)
    return pids


def measure_workers(target: Target, workers: list[int], redis_port: int, redis_pid: int,
                    args: argparse.Namespace) -> WorkersRound:
    from bench.wrk import run_wrk

    evalsha_before, _ = redis_commands(redis_port)
    redis_before = cpu_seconds(redis_pid)
    before = [cpu_seconds(pid) for pid in workers]
    output = run_wrk(target, args.duration, args)
    used = [cpu_seconds(pid) - b for pid, b in zip(workers, before, strict=True)]
    redis_cpu = cpu_seconds(redis_pid) - redis_before
    evalsha_after, _ = redis_commands(redis_port)
    result = parse(target.name, output, sum(used), None)
    total = result.requests or 1
    spent = sum(used) or 1.0
    return WorkersRound(len(workers), result.requests_per_second, [u / spent for u in used],
                        result.cpu_us_per_request, redis_cpu / total * 1e6, (evalsha_after - evalsha_before) / total)


# -- a focused run of target 5: `python -m bench.fleet` ---------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Issue 14's target 5 alone, in interleaved rounds: one memory-store gateway with every
    connection, then each tree's fleet of two on a Redis of its own with half each, same tokens.
    With `--tree NAME=DIR` twice, two checkouts' fleets run in the same rounds (before/after)."""
    import statistics
    import tempfile

    from bench.openloop import each_token_once
    from bench.processes import (
        SERVER_CORE,
        bench_port,
        start_fairgate,
        start_nginx,
        start_redis,
        stop,
        upstream_conf,
        wait_http,
    )
    from bench.tokens import write_tokens
    from bench.wrk import measure, run_wrk

    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=main.__doc__)
    parser.add_argument("--customers", type=int, default=20_000, help="customers' tokens in rotation (default 20000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per round and target (default 5)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tree", action="append", metavar="NAME=DIR", default=[],
                        help="a source tree whose fleet runs (repeatable; default: this checkout)")
    parser.add_argument("--no-memory", action="store_true", help="leave out the memory-store reference gateway")
    parser.add_argument("--gateway-config", type=Path, metavar="FILE",
                        help="YAML merged over every gateway's config (e.g. state: {timeout: 500ms})")
    parser.add_argument("--commands", action="store_true",
                        help="also print each Redis command's calls per request (scripts' inner commands included)")
    parser.add_argument("--hold", type=float, default=0.0, metavar="SECONDS",
                        help="after the warm-up, print the pids and wait (to attach a profiler)")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    trees = [(name, Path(path).resolve()) for name, _, path in (t.partition("=") for t in args.tree)] \
        or [("this", root)]

    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="fairgate-fleet-") as tmp:
        work = Path(tmp)
        try:
            tokens = write_tokens(work / "tokens.txt", "many", args.customers, args.customers)
            rotation = [str(root / "bench" / "rotate.lua"), "--", str(tokens)]
            upstream_port = bench_port()
            upstream = start_nginx(work / "upstream", upstream_conf(upstream_port), LOAD_CORE)
            processes.append(upstream)
            memory: Target | None = None
            if not args.no_memory:
                gateway = start_fairgate(work / "memory.yaml", upstream_port, "memory://", tree=trees[0][1],
                                         extra=args.gateway_config)
                processes.append(gateway.process)
                memory = Target("memory store, 1 gateway", gateway.port, gateway.process.pid, rotation,
                                path="/detect/bench", warm_up=tokens, admin_port=gateway.admin_port)
            fleets: list[tuple[str, list[Target], int, int]] = []
            for name, tree in trees:
                redis = start_redis(work)
                if redis is None:
                    return 1
                processes.append(redis.process)
                members = []
                for n in range(2):
                    gateway = start_fairgate(work / f"fleet-{name}-{n}.yaml", upstream_port,
                                             f"redis://127.0.0.1:{redis.port}/0", SERVER_CORE, tree=tree,
                                             extra=args.gateway_config)
                    processes.append(gateway.process)
                    members.append(Target(f"{name} member {n + 1}", gateway.port, gateway.process.pid, rotation,
                                          redis.port, "/detect/bench", tokens, gateway.admin_port))
                fleets.append((name, members, redis.port, redis.process.pid))
            everyone = ([memory] if memory else []) + [m for _, members, _, _ in fleets for m in members]
            for target in everyone:
                wait_http(f"http://127.0.0.1:{target.port}/healthz")
                sent = each_token_once(target.port, target.path, args.connections, tokens)
                print(f"warm-up {target.name} (pid {target.pid}): {sent.rate_done:,.0f} req/s first sight, "
                      f"{sent.errors} errors", flush=True)
                run_wrk(target, 1, args)
            if args.hold:
                print(f"holding {args.hold:.0f} s", flush=True)
                time.sleep(args.hold)
            reference: list[float] = []
            reference_cpu: list[float] = []
            results: dict[str, list[FleetRound]] = {name: [] for name, _, _, _ in fleets}
            for number in range(args.rounds):
                order: list[str | None] = [None, *results] if memory else [*results]
                for which in order if number % 2 == 0 else reversed(order):
                    if which is None and memory is not None:
                        single = measure(memory, args)
                        reference.append(single.requests_per_second)
                        reference_cpu.append(single.cpu_us_per_request)
                        print(f"round {number + 1} memory: {single.requests_per_second:,.0f} req/s, "
                              f"{single.cpu_us_per_request:.0f} us CPU/req", flush=True)
                        continue
                    name, members, port, pid = next(f for f in fleets if f[0] == which)
                    calls_before = command_calls(port)
                    fallbacks_before = [_fallbacks(m.admin_port) for m in members]
                    fleet = measure_fleet(members, port, pid, args)
                    fallbacks = sum(_fallbacks(m.admin_port) - before
                                    for m, before in zip(members, fallbacks_before, strict=True))
                    if args.commands:
                        served = sum(m.requests for m in fleet.members) or 1
                        moved = {c: (n - calls_before.get(c, 0)) / served for c, n in command_calls(port).items()}
                        print(f"round {number + 1} fleet {name}, calls per request: " + ", ".join(
                            f"{c} {n:.2f}" for c, n in sorted(moved.items(), key=lambda item: -item[1]) if n))
                    results[name].append(fleet)
                    each = ", ".join(f"{m.cpu_us_per_request:.0f}" for m in fleet.members)
                    print(f"round {number + 1} fleet {name}: {fleet.requests_per_second:,.0f} req/s, CPU us/req "
                          f"{each}, EVALSHA {fleet.evalsha_per_request:.3f}/req, batched "
                          f"{fleet.other_per_request:.2f}/req, Redis {fleet.redis_cpu_us_per_request:.0f} us/req, "
                          f"errors {sum(m.errors for m in fleet.members)}, decided without Redis "
                          f"{fallbacks / (sum(m.requests for m in fleet.members) or 1):.1%}", flush=True)
            print()
            for name, rounds in results.items():
                cpu = [statistics.mean(m.cpu_us_per_request for m in f.members) for f in rounds]
                line = (f"fleet {name}: {statistics.median(f.requests_per_second for f in rounds):,.0f} req/s, "
                        f"member CPU {statistics.median(cpu):.0f} us/req ({min(cpu):.0f}-{max(cpu):.0f}), "
                        f"EVALSHA {statistics.median(f.evalsha_per_request for f in rounds):.3f}/req, batched "
                        f"{statistics.median(f.other_per_request for f in rounds):.2f}/req")
                if reference:
                    ratios = [f.requests_per_second / r for f, r in zip(rounds, reference, strict=False)]
                    by_cpu = [r / c for r, c in zip(reference_cpu, cpu, strict=False)]
                    line += (f"; / memory req/s {statistics.median(ratios):.2f}x ({min(ratios):.2f}-"
                             f"{max(ratios):.2f}); memory CPU / member CPU {statistics.median(by_cpu):.2f}x "
                             f"({min(by_cpu):.2f}-{max(by_cpu):.2f})")
                print(line)
            if reference:
                print(f"memory: {statistics.median(reference):,.0f} req/s, "
                      f"{statistics.median(reference_cpu):.0f} us CPU/req")
        finally:
            for process in reversed(processes):
                stop(process)
    return 0


def _fallbacks(admin_port: int | None) -> float:
    """Limit decisions a gateway made without Redis so far (its circuit open or a call timed out)."""
    from bench.looplag import scrape

    return sum(float(line.rsplit(" ", 1)[1]) for line in (scrape(admin_port) or "").splitlines()
               if line.startswith("fairgate_state_store_fallbacks_total"))


if __name__ == "__main__":
    raise SystemExit(main())
