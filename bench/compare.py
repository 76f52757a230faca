"""A run's medians as JSON (`--json FILE`), and the deltas against an earlier file
(`--baseline FILE`): the before/after of a hot-path change, CPU per request first because it
is the steadier number on a shared machine."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.wrk import Result


def save(path: Path, rounds: dict[str, list[Result]]) -> None:
    document = {
        name: {
            "requests_per_second": statistics.median(r.requests_per_second for r in results),
            "cpu_us_per_request": statistics.median(r.cpu_us_per_request for r in results),
            "p50_ms": statistics.median(r.p50_ms for r in results),
            "p99_ms": statistics.median(r.p99_ms for r in results),
            "rounds": len(results),
        }
        for name, results in rounds.items() if results
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def deltas(baseline: Path, rounds: dict[str, list[Result]]) -> str:
    before = json.loads(baseline.read_text())
    lines = [f"Against {baseline}:", "",
             "| target | CPU us/req before -> now | req/s before -> now | p99 ms before -> now |",
             "|---|---:|---:|---:|"]
    for name, results in rounds.items():
        if name not in before or not results:
            lines.append(f"| {name} | (not in the baseline) | | |")
            continue
        old = before[name]
        cpu = statistics.median(r.cpu_us_per_request for r in results)
        rps = statistics.median(r.requests_per_second for r in results)
        p99 = statistics.median(r.p99_ms for r in results)
        lines.append(
            f"| {name} | {old['cpu_us_per_request']:.1f} -> {cpu:.1f} ({cpu - old['cpu_us_per_request']:+.1f}) "
            f"| {old['requests_per_second']:,.0f} -> {rps:,.0f} ({rps / old['requests_per_second'] - 1:+.1%}) "
            f"| {old['p99_ms']:.2f} -> {p99:.2f} |"
        )
    return "\n".join(lines)
