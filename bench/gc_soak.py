"""Garbage-collector designs side by side under churn: one gateway per `server.gc` variant (every
policy, memory store), all given the same open-loop load in interleaved rounds, with customers
coming and going: round k sends the tokens of customers k*H .. k*H+2H-1 (H = rate x seconds / 2),
so half of each round's customers are new and half were seen in the round before; tokens expire
after --token-life, so their state ends and is swept.

    python bench/gc_soak.py --rate 200 --seconds 15 --cycles 6 \\
        --variant 'before={"freeze_interval": null, "thresholds": [50000, 50, 100]}' \\
        --variant 'freeze={"freeze_interval": "1s", "thresholds": [700, 10, 10]}'

Per round and variant: the open loop's p50/p99/max, the collections of each generation during the
round (count, total, the bucket of the longest), the worst loop-lag probe, the longest step of each
background batch, RSS and frozen objects. `--full-after D` sets every variant's
`server.gc.full_collection_interval`, so a full collection of everything (frozen objects
included) runs D after start: the unreachable objects it finds are the cyclic garbage the
variant's automatic collections had not freed (what freezing leaks).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import looplag, openloop  # noqa: E402
from bench.processes import LOAD_CORE, bench_port, start_fairgate, start_nginx, stop, upstream_conf, wait_http  # noqa: E402
from bench.tokens import TOKEN_ISSUER, TOKEN_SECRET  # noqa: E402

_HIST = re.compile(r'^(\w+)_bucket\{([^}]*)\} ([\d.e+]+)$', re.MULTILINE)
_SAMPLE = re.compile(r'^(\w+)(\{[^}]*\})? ([\d.e+-]+)$', re.MULTILINE)

Buckets = dict[float, float]


def histograms(text: str, name: str, label: str) -> dict[str, Buckets]:
    """`name`'s cumulative buckets by the value of `label`."""
    found: dict[str, Buckets] = {}
    for metric, labels, count in _HIST.findall(text):
        if metric != name:
            continue
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        found.setdefault(pairs.get(label, ""), {})[float(pairs["le"])] = float(count)
    return found


def sample(text: str, name: str, labels: str = "") -> float:
    for metric, found_labels, value in _SAMPLE.findall(text):
        if metric == name and (found_labels or "") == labels:
            return float(value)
    return float("nan")


def write_tokens(path: Path, first: int, count: int, life: float) -> Path:
    import jwt

    now = int(time.time())
    path.write_text("".join(
        jwt.encode({"iss": TOKEN_ISSUER, "aud": "bench", "sub": f"user@soak-{n}", "org_id": f"soak-{n}",
                    "sid": f"s-{n}", "iat": now, "exp": now + int(life)}, TOKEN_SECRET, algorithm="HS256") + "\n"
        for n in range(first, first + count)))
    return path


def worst(before: dict[str, Buckets], after: dict[str, Buckets]) -> dict[str, str]:
    out = {}
    for key, buckets in after.items():
        lag = looplag.during(before.get(key, {}), buckets)
        if lag is not None and lag.samples:
            out[key] = f"{lag.samples}x, max {lag.max_lower_ms:g}-{lag.max_upper_ms:g} ms"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=JSON",
                        help="a server.gc mapping as JSON, named (repeatable)")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--token-life", type=float, default=120.0)
    parser.add_argument("--full-after", metavar="DURATION", help="server.gc.full_collection_interval of every variant")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant)
    half = int(args.rate * args.seconds / 2)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="fairgate-gcsoak-") as tmp:
        work = Path(tmp)
        processes = []
        try:
            upstream_port = bench_port()
            upstream = start_nginx(work / "upstream", upstream_conf(upstream_port), LOAD_CORE)
            processes.append(upstream)
            gateways = {}
            for name, gc_json in variants.items():
                settings = json.loads(gc_json)
                if args.full_after:
                    settings["full_collection_interval"] = args.full_after
                extra = work / f"{name}.extra.yaml"
                extra.write_text(json.dumps({"server": {"gc": settings}}))
                gateway = start_fairgate(work / f"{name}.yaml", upstream_port, "memory://", extra=extra)
                processes.append(gateway.process)
                gateways[name] = gateway
            for gateway in gateways.values():
                wait_http(f"http://127.0.0.1:{gateway.port}/healthz")
            started = time.monotonic()
            for cycle in range(args.cycles):
                tokens = write_tokens(work / f"round-{cycle}.txt", cycle * half, 2 * half, args.token_life)
                order = list(gateways.items()) if cycle % 2 == 0 else list(reversed(gateways.items()))
                for name, gateway in order:
                    before = looplag.scrape(gateway.admin_port) or ""
                    result = openloop.run(gateway.port, "/detect/bench", args.rate, args.seconds, args.connections,
                                          tokens)
                    after = looplag.scrape(gateway.admin_port) or ""
                    row = {
                        "cycle": cycle, "variant": name, "at_s": round(time.monotonic() - started),
                        "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "max_ms": result.max_ms,
                        "errors": result.errors + result.unfinished,
                        "gc": worst(histograms(before, "fairgate_gc_pause_seconds", "generation"),
                                    histograms(after, "fairgate_gc_pause_seconds", "generation")),
                        "lag": worst({"": looplag.parse(before)}, {"": looplag.parse(after)}).get("", "-"),
                        "batches": worst(looplag.parse_batches(before), looplag.parse_batches(after)),
                        "rss_mb": round(sample(after, "process_resident_memory_bytes") / 2**20),
                        "frozen": int(sample(after, "fairgate_gc_frozen_objects")),
                        "collected_gen2": int(sample(after, "python_gc_objects_collected_total",
                                                     '{generation="2"}')),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            for process in reversed(processes):
                stop(process)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
