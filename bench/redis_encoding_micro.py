"""The RESP a fleet member encodes for its background writes, in CPU µs per request: one
detection exchange (`redis_sightings._call`: the bench's four keys a request, each written and
queried) and one usage flush (`redis_counters._call`: seven fields a customer), no I/O.

    python bench/redis_encoding_micro.py [--requests 40] [--rounds 7]

`PYTHONPATH=/some/other/tree` measures that tree's gateway package with this script (A/B: run
both, alternating). Process CPU time, so it holds up on a loaded machine; compare ranges.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from gateway.state import redis_counters, redis_sightings
from gateway.state.sightings import Query, Sighting

T0 = 1_764_650_000.123456
BATCHES = 50


def exchange(number: int, requests: int) -> tuple[list[tuple[str, list[Sighting]]], list[Query]]:
    """One detection batch's sightings grouped by key, and its queries, as the detectors make them
    for the bench's route (sharing: uses and devices; scraping: paths and agents)."""
    by_key: dict[str, list[Sighting]] = defaultdict(list)
    queries: list[Query] = []
    for n in range(requests):
        subject = f"fg:d:{{many-{number * requests + n}}}"
        at = T0 + n * 0.0031
        for kind, member, window, cap in (("uses", f"s-{n}", 300.0, 64), ("devices", "d8f0a1b2c3", 86400.0, 64),
                                          ("paths", "/detect/bench", 60.0, 400), ("agents", "a1b2c3d4", 3600.0, 40)):
            by_key[f"{subject}:{kind}"].append(Sighting(f"{subject}:{kind}", member, at, window, cap))
            queries.append(Query(f"{subject}:{kind}", at - window))
    return list(by_key.items()), queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="requests per exchange and customers per flush")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    batches = [exchange(number, args.requests) for number in range(BATCHES)]
    counters = {f"many-{n}": {f"02:requests:{k}": 1.0 for k in range(7)} for n in range(args.requests)}
    requests = BATCHES * args.requests
    size = len(redis_sightings._call(*batches[0])) / args.requests
    print(f"sightings: {size:.0f} bytes per request")
    for _ in range(args.rounds):
        started = time.process_time()
        for written, queries in batches:
            redis_sightings._call(written, queries)
        sightings = (time.process_time() - started) / requests * 1e6
        started = time.process_time()
        for _ in range(BATCHES):
            redis_counters._call("fg:u:{2026-12}", counters, 86_400_000)
        flush = (time.process_time() - started) / requests * 1e6
        print(f"sightings exchange {sightings:.1f} us/request, usage flush {flush:.1f} us/request")


if __name__ == "__main__":
    main()
