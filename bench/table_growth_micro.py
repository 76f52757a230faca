"""The longest single write to a `BoundedTable` in CPU time (steady on a loaded machine),
in-process: a table of limit N grown from empty to N entries, then written at its limit (each
new key evicts one), each `put` timed alone; a put that resizes the table's hash table shows as
one call of O(size) among calls of O(1). Also the CPU per get, per rewrite of a present key and
per new key at the limit, and the bytes each entry takes (tracemalloc, keys and values made
beforehand so only the table's own memory counts). The cyclic GC is off while timing: its pauses
are bench/gc_pauses.py's business.

    python bench/table_growth_micro.py --entries 20000,200000 [--tree DIR ...]

Each --tree is a source checkout to import the gateway from, each count in its own process, trees
interleaved (an A/B of two checkouts in one run).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def holds(entries: int) -> dict[str, float]:
    from gateway.state.bounded import BoundedTable

    keys = [f"customer-{n}:uses" for n in range(2 * entries)]
    table: BoundedTable[str, int] = BoundedTable(entries)
    clock = time.thread_time
    grow, full = [], []
    for phase, written in ((grow, keys[:entries]), (full, keys[entries:])):
        for key in written:
            started = clock()
            table.put(key, 1)
            phase.append(clock() - started)
    result: dict[str, float] = {}
    for name, calls in (("grow", grow), ("full", full)):
        calls.sort()
        result |= {f"{name}_max_ms": calls[-1] * 1000, f"{name}_p999_ms": calls[int(len(calls) * 0.999)] * 1000,
                   f"{name}_over_2ms": sum(t > 0.002 for t in calls)}
    return result


def per_op(entries: int, rounds: int = 5) -> dict[str, float]:
    """CPU ns per call, the least of `rounds` (the least disturbed by the other load)."""
    from gateway.state.bounded import BoundedTable

    keys = [f"customer-{n}:uses" for n in range(entries)]
    fresh = [f"other-{n}:uses" for n in range(entries)]
    table: BoundedTable[str, int] = BoundedTable(entries)
    for key in keys:
        table.put(key, 1)
    best = {"get_ns": float("inf"), "rewrite_ns": float("inf"), "evicting_put_ns": float("inf")}
    for _ in range(rounds):
        get, put = table.get, table.put
        started = time.thread_time()
        for key in keys:
            get(key)
        best["get_ns"] = min(best["get_ns"], (time.thread_time() - started) / entries * 1e9)
        started = time.thread_time()
        for key in keys:
            put(key, 2)
        best["rewrite_ns"] = min(best["rewrite_ns"], (time.thread_time() - started) / entries * 1e9)
        started = time.thread_time()
        for key in fresh:  # every one new: evicts the oldest
            put(key, 3)
        best["evicting_put_ns"] = min(best["evicting_put_ns"], (time.thread_time() - started) / entries * 1e9)
        keys, fresh = fresh, keys
    return best


def footprint(entries: int) -> dict[str, float]:
    from gateway.state.bounded import BoundedTable

    keys = [f"customer-{n}:uses" for n in range(entries)]
    tracemalloc.start()
    table: BoundedTable[str, int] = BoundedTable(entries)
    for key in keys:
        table.put(key, 1)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"bytes_per_entry": size / entries}


def measure(entries: int) -> dict[str, float]:
    gc.disable()
    return holds(entries) | per_op(entries) | footprint(entries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default="20000,200000")
    parser.add_argument("--tree", action="append", metavar="DIR", help="a checkout (default: this one)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return 0
    for entries in (int(n) for n in args.entries.split(",")):
        for tree in args.tree or [str(ROOT)]:
            output = subprocess.run([sys.executable, __file__, "--child", str(entries)],
                                    cwd=tree, env={"PYTHONPATH": tree}, check=True, capture_output=True, text=True)
            r = json.loads(output.stdout)
            print(f"{tree}: {entries:,} entries | growing: longest put {r['grow_max_ms']:.2f} ms, "
                  f"p99.9 {r['grow_p999_ms']:.4f} ms, {r['grow_over_2ms']} over 2 ms | at the limit: longest "
                  f"{r['full_max_ms']:.2f} ms, p99.9 {r['full_p999_ms']:.4f} ms, {r['full_over_2ms']} over 2 ms | "
                  f"get {r['get_ns']:.0f} ns, rewrite {r['rewrite_ns']:.0f} ns, evicting put "
                  f"{r['evicting_put_ns']:.0f} ns | {r['bytes_per_entry']:.1f} B/entry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
