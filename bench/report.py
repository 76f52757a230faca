"""The bench's main table (one row per wrk target, the median round) and the paired
comparison lines under it."""

from __future__ import annotations

import argparse
import os
import statistics

from bench import names
from bench.processes import LOAD_CORE, SERVER_CORE, taskset
from bench.wrk import Result


def table(results: list[Result], rounds: dict[str, list[Result]], cold: dict[int, float],
          args: argparse.Namespace) -> str:
    by_name = {result.name: result for result in results}
    direct, nginx = by_name.get(names.DIRECT), by_name.get(names.NGINX)

    def versus(result: Result, reference: Result | None) -> str:
        return f"{result.requests_per_second / reference.requests_per_second:.2f}x" \
            if reference and reference.requests_per_second else ""

    pinning = f"server on core {SERVER_CORE}, wrk and upstream on core {LOAD_CORE}" if taskset(0) else "unpinned"
    lines = [
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, median of {args.rounds} interleaved rounds, "
        f"one worker each, {os.cpu_count()} cores ({pinning}), upstream: nginx return 200",
        "",
        "| target | req/s | p50 ms | p99 ms | errors | server CPU us/req | loop lag max ms | EVALSHA/req "
        "| other Redis cmds/req | vs nginx proxy | vs direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        evalsha = "" if result.redis_commands_per_request is None else f"{result.redis_commands_per_request:.2f}"
        other = "" if result.redis_background_per_request is None else f"{result.redis_background_per_request:.2f}"
        lag = "" if result.lag is None or not result.lag.samples else f"<= {result.lag.max_upper_ms:g}"
        lines.append(
            f"| {result.name} | {result.requests_per_second:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} "
            f"| {result.errors} | {result.cpu_us_per_request:.1f} | {lag} | {evalsha} | {other} "
            f"| {versus(result, nginx)} | {versus(result, direct)} |"
        )
    lines.append("")
    for label, numerator, denominator in (
        ("Authentication on / off (same process, same requests)", names.AUTH_ON, names.AUTH_OFF),
        ("Limits on memory / auth alone (same process)", names.LIMITS_MEMORY, names.AUTH_ON),
        ("Limits on Redis / auth alone (same process)", names.LIMITS_REDIS, names.AUTH_ON_REDIS),
        ("Detectors on / off, memory (same process)", names.DETECT_MEMORY, names.AUTH_ON),
        ("Detectors on / off, Redis (same process)", names.DETECT_REDIS, names.AUTH_ON_REDIS),
        *((f"Every policy, {count:,} customers / 400 users (same process)", names.many_customers(count),
           names.EVERY_POLICY) for count in args.many_customers),
    ):
        if numerator in rounds and denominator in rounds:
            # Paired per round (the two ran back to back), then the median: steadier than a
            # ratio of two medians taken from different moments.
            pairs = [(a, b) for a, b in zip(rounds[numerator], rounds[denominator], strict=True)
                     if b.requests_per_second]  # one result per round each; a round that served nothing has no ratio
            if not pairs:
                continue
            ratios = sorted(a.requests_per_second / b.requests_per_second for a, b in pairs)
            extra = statistics.median(a.cpu_us_per_request - b.cpu_us_per_request for a, b in pairs)
            lines.append(f"{label}: {statistics.median(ratios):.2f}x req/s (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}), "
                         f"{extra:+.1f} us CPU per request (median of {len(pairs)} paired rounds).")
    for count in args.many_customers:
        runs = rounds.get(names.many_customers(count), [])
        if runs:
            lines.append(f"{count:,} customers, over {len(runs)} rounds: "
                         f"{_spread([r.requests_per_second for r in runs], '{:,.0f}')} req/s, "
                         f"p50 {_spread([r.p50_ms for r in runs], '{:.2f}')} ms, "
                         f"p99 {_spread([r.p99_ms for r in runs], '{:.2f}')} ms.")
    for count, rate in cold.items():
        lines.append(f"Warm-up of \"{names.many_customers(count)}\": each token sent once, first sight: "
                     f"{rate:,.0f} req/s ({args.connections} connections, bench/openloop at full speed).")
    return "\n".join(lines)


def _spread(values: list[float], fmt: str) -> str:
    return fmt.format(min(values)) if min(values) == max(values) else \
        f"{fmt.format(min(values))}-{fmt.format(max(values))}"
