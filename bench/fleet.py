"""Several gateways on one Redis: a fleet of two processes with the load split across both
(issue 14, target 5), and `fairgate run --workers N` (target 6), each round measured as one
wrk per gateway running at the same time."""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from dataclasses import dataclass

from bench.processes import LOAD_CORE, children, cpu_seconds, taskset
from bench.redis_counts import redis_commands
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
