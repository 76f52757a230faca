"""What holds the event loop of a real gateway, by cause: the bench's gateway (every policy,
memory store) runs with its hold finder on (gateway/server/holds.py, FAIRGATE_HOLD_LOG), sees
each of N customers' tokens once (first sight, saturated), then an open-loop load at a constant
rate over the same tokens (half load). Each hold over the threshold is named by the loop
thread's stack, the collections in it, or "descheduled" when the loop thread had little CPU
in it (another process on the core, the VM).

    python bench/stalls.py --customers 20000,200000 --rate 800 --seconds 30 --rounds 2 \\
        [--tree before=/tmp/stall-before --tree after=.]

Each --tree is a source checkout whose gateway runs (it needs gateway/server/holds.py); the
runs go tree by tree within each round and customer count, every other round backwards, so a
drift of the machine favours no tree. Reported per tree, count and phase: holds over 2 / 10 /
50 ms per minute, the longest, and the same by cause.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import openloop  # noqa: E402
from bench.processes import (  # noqa: E402
    LOAD_CORE,
    bench_port,
    pin_detection_workers,
    start_fairgate,
    start_nginx,
    stop,
    upstream_conf,
    wait_http,
)
from bench.tokens import write_tokens  # noqa: E402

HOLD_LOG_ENV, HOLD_MS_ENV = "FAIRGATE_HOLD_LOG", "FAIRGATE_HOLD_MS"  # gateway/server/holds.py's
BOUNDS_MS = (2, 10, 50)
Hold = dict[str, Any]  # one line of the gateway's hold log
PATH = "/detect/bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", default="20000", help="customer counts, comma-separated (default 20000)")
    parser.add_argument("--rate", type=float, default=800.0, help="open-loop req/s (default 800: half load)")
    parser.add_argument("--seconds", type=float, default=30.0, help="open-loop seconds per run (default 30)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threshold-ms", type=float, default=2.0, help="holds logged past this (default 2)")
    parser.add_argument("--tree", action="append", metavar="NAME=DIR",
                        help="a checkout to run (repeatable; default: this one, as 'here')")
    parser.add_argument("--json", metavar="FILE", help="also write every hold, by run, as JSON")
    parser.add_argument("--gateway-config", type=Path, metavar="FILE",
                        help="YAML merged over the gateway's config (e.g. detection.worker: true)")
    parser.add_argument("--detection-worker-core", type=int, metavar="CORE",
                        help="with detection.worker: pin the gateway's worker process to CORE")
    return parser.parse_args(argv)


def run_once(tree: Path, customers: int, tokens: Path, args: argparse.Namespace, workdir: Path,
             upstream_port: int) -> dict[str, Any]:
    log = workdir / f"holds-{time.monotonic_ns()}.jsonl"
    os.environ[HOLD_LOG_ENV], os.environ[HOLD_MS_ENV] = str(log), str(args.threshold_ms)
    try:
        gateway = start_fairgate(workdir / "gateway.yaml", upstream_port, "memory://", tree=tree,
                                 extra=args.gateway_config)
    finally:
        del os.environ[HOLD_LOG_ENV], os.environ[HOLD_MS_ENV]
    try:
        wait_http(f"http://127.0.0.1:{gateway.port}/healthz")
        pin_detection_workers(gateway.process.pid, args.detection_worker_core)
        first_at = time.perf_counter()
        openloop.each_token_once(gateway.port, PATH, args.connections, tokens)
        open_at = time.perf_counter()
        result = openloop.run(gateway.port, PATH, args.rate, args.seconds, args.connections, tokens)
        done_at = time.perf_counter()
    finally:
        stop(gateway.process)
    holds = [json.loads(line) for line in log.read_text().splitlines() if line]
    # perf_counter is CLOCK_MONOTONIC: the gateway's clock and this one are the same.
    return {"first_sight": [h for h in holds if first_at <= h["at"] < open_at],
            "open_loop": [h for h in holds if open_at <= h["at"] <= done_at],
            "first_sight_seconds": open_at - first_at, "open_loop_seconds": done_at - open_at,
            "open_loop_p99_ms": result.p99_ms, "open_loop_max_ms": result.max_ms}


def summary(holds: list[Hold], seconds: float) -> str:
    per_minute = 60.0 / seconds if seconds else 0.0
    lates = [float(h["late_ms"]) for h in holds]
    counts = " / ".join(f"{sum(late > b for late in lates) * per_minute:.0f}" for b in BOUNDS_MS)
    return f"{counts} per min, longest {max(lates, default=0):.1f} ms"


def by_cause(holds: list[Hold], seconds: float) -> list[str]:
    groups: dict[str, list[Hold]] = defaultdict(list)
    for hold in holds:
        groups[str(hold["cause"])].append(hold)
    lines = []
    for cause, group in sorted(groups.items(), key=lambda item: -sum(float(h["late_ms"]) for h in item[1])):
        cpu = sum(float(h["cpu_ms"]) for h in group) / max(1e-9, sum(float(h["since_beat_ms"]) for h in group))
        most_cpu = max(float(h["cpu_ms"]) for h in group)
        lines.append(f"    {cause}: {len(group)} holds, {summary(group, seconds)}, "
                     f"loop thread CPU {cpu:.0%} of the wall time, at most {most_cpu:.1f} ms in one")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM ends the run through the `finally`s, which stop the gateway and the upstream.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    trees = [(name, Path(path).resolve()) for name, path in (t.split("=", 1) for t in args.tree or [])] \
        or [("here", ROOT)]
    counts = [int(c) for c in args.customers.split(",")]
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="fairgate-stalls-") as tmp:
        workdir = Path(tmp)
        upstream_port = bench_port()
        upstream = start_nginx(workdir / "upstream", upstream_conf(upstream_port), LOAD_CORE)
        try:
            tokens = {c: write_tokens(workdir / f"many-{c}.txt", "many", c, c) for c in counts}
            for number in range(args.rounds):
                for count in counts:
                    for name, tree in trees if number % 2 == 0 else list(reversed(trees)):
                        try:
                            run = run_once(tree, count, tokens[count], args, workdir, upstream_port)
                        except subprocess.CalledProcessError as exc:  # the load client died: say so, go on
                            print(f"round {number + 1}, {name}, {count:,} customers: failed: {exc}", flush=True)
                            continue
                        results[f"{name} {count}"].append(run)
                        if args.json:  # after every run: a long batch cut short keeps what it measured
                            Path(args.json).write_text(json.dumps(results, indent=1))
                        print(f"round {number + 1}, {name}, {count:,} customers: open loop "
                              f"p99 {run['open_loop_p99_ms']} ms, max {run['open_loop_max_ms']} ms; holds "
                              f"> {'/'.join(map(str, BOUNDS_MS))} ms: first sight "
                              f"{summary(run['first_sight'], run['first_sight_seconds'])}; open loop "
                              f"{summary(run['open_loop'], run['open_loop_seconds'])}", flush=True)
                        print("\n".join(by_cause(run["open_loop"], run["open_loop_seconds"])), flush=True)
        finally:
            stop(upstream)
    print(f"\nHolds over {'/'.join(map(str, BOUNDS_MS))} ms per minute, by cause, all rounds together:")
    for key, runs in results.items():
        for phase in ("first_sight", "open_loop"):
            holds = [h for run in runs for h in run[phase]]
            seconds = sum(float(run[f"{phase}_seconds"]) for run in runs)
            print(f"  {key}, {phase.replace('_', ' ')} ({seconds:.0f} s): {summary(holds, seconds)}")
            print("\n".join(by_cause(holds, seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
