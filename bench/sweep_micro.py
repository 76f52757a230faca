"""The table sweep's longest tick in CPU time (steady on a loaded machine), in-process: the real
`Sweeper` over one `BoundedTable` of N live entries (none expire, so every entry the sweep looks
at is kept), for a few whole passes. A tick that resizes the table shows as one
tick of O(N) among ticks of O(budget).

    python bench/sweep_micro.py --entries 20000,200000 --passes 3 [--tree DIR ...]

Each --tree is a source checkout to import the gateway from, each count in its own process, trees
interleaved (an A/B of two checkouts in one run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(entries: int, passes: int) -> dict[str, float]:
    from gateway.state.bounded import BoundedTable
    from gateway.state.tables import Sweeper, Tables

    table: BoundedTable[str, float] = BoundedTable(10 * entries, lambda until, now: until <= now)
    for n in range(entries):
        table.put(f"customer-{n}:uses", 1e12)
    tables = Tables()
    tables.add("table", table, lambda: 0.0)
    # No time budget: a tick looks at its whole share, so each tick's CPU is that share's cost.
    sweeper = Sweeper(tables, time_budget=10.0)
    ticks: list[float] = []
    for _ in range(passes * round(60.0 / 0.1)):  # SWEEP_PASS / SWEEP_INTERVAL ticks per pass
        started = time.thread_time()
        sweeper.tick()
        ticks.append(time.thread_time() - started)
    ticks.sort()
    return {"entries": entries, "ticks": len(ticks), "over_2ms": sum(t > 0.002 for t in ticks),
            "p50_ms": ticks[len(ticks) // 2] * 1000, "max_ms": ticks[-1] * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default="20000,200000")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--tree", action="append", metavar="DIR", help="a checkout (default: this one)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.passes)))
        return 0
    for entries in (int(n) for n in args.entries.split(",")):
        for tree in args.tree or [str(ROOT)]:
            output = subprocess.run([sys.executable, __file__, "--child", str(entries), "--passes", str(args.passes)],
                                    cwd=tree, env={"PYTHONPATH": tree}, check=True, capture_output=True, text=True)
            result = json.loads(output.stdout)
            print(f"{tree}: {entries:,} entries, {result['ticks']} ticks: {result['over_2ms']} over 2 ms, "
                  f"p50 {result['p50_ms']:.3f} ms, longest {result['max_ms']:.2f} ms of CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
