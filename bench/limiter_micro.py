"""Limiter decisions per second on the memory store, in one process, no I/O.

    python bench/limiter_micro.py

"one bucket": a request whose plan has one rate limit (one GCRA decision and its write).
"three limits": rate + concurrency + daily quota decided together, all-or-nothing.
Keys cycle over 10,000 customers so the tables are warm but not trivially cached.
"""

from __future__ import annotations

import time

from gateway.state.memory import MemoryStore
from gateway.state.store import CONCURRENCY, QUOTA, RATE, Check

CUSTOMERS = 10_000
ROUNDS = 5
N = 400_000


def measure(batches: list[list[Check]]) -> float:
    best = 0.0
    for _ in range(ROUNDS):
        store = MemoryStore()
        now = 1_800_000_000.0
        started = time.perf_counter()
        for i in range(N):
            store.evaluate_now(batches[i % CUSTOMERS], now + i * 1e-5)
        best = max(best, N / (time.perf_counter() - started))
    return best


def main() -> None:
    one = [[Check(RATE, f"fg:{{c:{n}}}:sustained:{n}", interval=0.01, burst=100)] for n in range(CUSTOMERS)]
    three = [[
        Check(RATE, f"fg:{{c:{n}}}:sustained:{n}", interval=0.01, burst=100),
        Check(CONCURRENCY, f"fg:{{c:{n}}}:parallel:{n}", max=1_000_000, token="t", lease=600),
        Check(QUOTA, f"fg:{{c:{n}}}:daily:{n}:2027-01-15", limit=1e12, cost=1, expires_at=1_800_086_400.0),
    ] for n in range(CUSTOMERS)]
    print("| limiter micro-benchmark (memory store) | decisions/s |")
    print("|---|---:|")
    print(f"| one bucket per request | {measure(one):,.0f} |")
    print(f"| three limits per request (rate + concurrency + quota) | {measure(three):,.0f} |")


if __name__ == "__main__":
    main()
