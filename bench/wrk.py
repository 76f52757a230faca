"""Closed-loop load with wrk on one target, and what one round of it measured: req/s,
latency quantiles, errors, the server's CPU per request, Redis commands per request and the
event loop's lag while it ran."""

from __future__ import annotations

import argparse
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench import looplag
from bench.processes import LOAD_CORE, cpu_seconds, taskset
from bench.redis_counts import redis_commands


@dataclass
class Target:
    name: str
    port: int
    pid: int
    # wrk Lua script and its arguments, when the requests need more than a GET.
    script: list[str] = field(default_factory=list)
    # A Redis whose commands per request are counted (INFO commandstats) during the run.
    redis_port: int | None = None
    path: str = "/api/v1/bench"
    # Tokens to show the gateway once each before the rounds, when one second of load is not enough.
    warm_up: Path | None = None
    # A fairgate's admin listener: its loop-lag histogram is read around each round.
    admin_port: int | None = None


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    redis_commands_per_request: float | None  # EVALSHA: the request path's round trips
    redis_background_per_request: float | None  # every other command (detectors' batched pipelines, usage)
    # CPU time the server under test spent per request: steadier than req/s on a shared
    # machine, and the number to compare before and after a hot-path change.
    cpu_us_per_request: float
    requests: int = 0
    lag: looplag.Lag | None = None


def run_wrk(target: Target, duration: float, args: argparse.Namespace, connections: int | None = None) -> str:
    script = ["-s", target.script[0]] if target.script else []
    command = [*taskset(LOAD_CORE), "wrk", f"-t{args.threads}", f"-c{connections or args.connections}",
               f"-d{duration}s", "--latency", *script, f"http://127.0.0.1:{target.port}{target.path}",
               *target.script[1:]]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def measure(target: Target, args: argparse.Namespace) -> Result:
    lag_before = looplag.read(target.admin_port)
    evalsha_before, other_before = redis_commands(target.redis_port)
    cpu_before = cpu_seconds(target.pid)
    output = run_wrk(target, args.duration, args)
    cpu_used = cpu_seconds(target.pid) - cpu_before
    evalsha_after, other_after = redis_commands(target.redis_port)
    lag = looplag.during(lag_before, looplag.read(target.admin_port))
    return parse(target.name, output, cpu_used, (evalsha_after - evalsha_before, other_after - other_before)
                 if target.redis_port is not None else None, lag)


def parse(name: str, output: str, cpu_used: float, redis: tuple[int, int] | None,
          lag: looplag.Lag | None = None) -> Result:
    total_match = re.search(r"(\d+) requests in", output)
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not total_match or not rps_match:
        raise SystemExit(f"bench: unexpected wrk output for {name}:\n{output}")
    total, rps = int(total_match.group(1)), float(rps_match.group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non2xx.group(1)) if non2xx else 0
    cpu_us = cpu_used / total * 1e6 if total else float("nan")
    per_request = redis[0] / total if redis is not None and total else None
    background = redis[1] / total if redis is not None and total else None
    return Result(name, rps, percentile(output, "50"), percentile(output, "99"), errors, per_request,
                  background, cpu_us, total, lag)


def percentile(output: str, which: str) -> float:
    match = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def median(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.requests_per_second)[len(results) // 2]
