"""Open-loop latency: bench/openloop/openloop.c sends at a constant rate and times each
request from its scheduled send time (no coordinated omission). Built here with gcc when the
binary is missing or older than its source."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.processes import LOAD_CORE, taskset

SOURCE = Path(__file__).resolve().parent / "openloop" / "openloop.c"
BINARY = SOURCE.with_suffix("")


@dataclass(frozen=True)
class OpenLoopResult:
    rate_asked: float
    rate_done: float
    completed: int
    errors: int
    unfinished: int  # still unanswered 5 s after the schedule ended
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


def build() -> Path | None:
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(BINARY), str(SOURCE)], check=True)
    return BINARY


def each_token_once(port: int, path: str, connections: int, tokens: Path) -> OpenLoopResult:
    """Every token once, as fast as `connections` keep-alive connections go: a first-sight
    pass that measures the gateway, not a Python client."""
    return run(port, path, 0, 0, connections, tokens)


def run(port: int, path: str, rate: float, seconds: float, connections: int, tokens: Path | None) -> OpenLoopResult:
    binary = build()
    if binary is None:
        raise SystemExit("bench: the open-loop client needs gcc (apt-get install -y gcc)")
    command = [*taskset(LOAD_CORE), str(binary), "127.0.0.1", str(port), path, f"{rate:.1f}", str(seconds),
               str(connections), *([str(tokens)] if tokens else [])]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(\w+)=([\d.-]+)", output))
    if "p99_us" not in fields:
        raise SystemExit(f"bench: unexpected open-loop output: {output!r}")
    return OpenLoopResult(rate, float(fields["rate"]), int(fields["completed"]), int(fields["errors"]),
                          int(fields["unfinished"]), int(fields["p50_us"]) / 1000, int(fields["p99_us"]) / 1000,
                          int(fields["p999_us"]) / 1000, int(fields["max_us"]) / 1000)
