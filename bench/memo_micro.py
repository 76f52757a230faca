"""What a memo hit costs: functools.lru_cache against gateway.state.memo.Memo, on the keys the
gateway memoises (an address, a 4-string tuple). Interleaved rounds, CPU time per call.

    python bench/memo_micro.py [--rounds 7] [--calls 200000]
    valgrind --tool=callgrind python bench/memo_micro.py --only memo_network --rounds 1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.state.memo import Memo  # after the path is set

ADDRESSES = [f"10.{i // 256 % 256}.{i % 256}.7" for i in range(1000)]
ANONYMOUS = [(a, "Mozilla/5.0 (X11; Linux x86_64)", "en-GB,en;q=0.9", "gzip, br") for a in ADDRESSES]


def network(address: str) -> str:
    return address.rpartition(".")[0] + ".0/24"


def anonymous(ip: str, agent: str, language: str, encoding: str) -> str:
    return f"{ip}|{agent}|{language}|{encoding}"


def anonymous_key(key: tuple[str, str, str, str]) -> str:
    return anonymous(*key)


def cases() -> dict[str, Callable[[int], None]]:
    lru_network = lru_cache(maxsize=65536)(network)
    memo_network = Memo(network, 65536).__getitem__
    lru_anonymous = lru_cache(maxsize=16384)(anonymous)
    memo_anonymous = Memo(anonymous_key, 16384)

    def run_lru_network(calls: int) -> None:
        keys = ADDRESSES * (calls // len(ADDRESSES))
        for key in keys:
            lru_network(key)

    def run_memo_network(calls: int) -> None:
        keys = ADDRESSES * (calls // len(ADDRESSES))
        for key in keys:
            memo_network(key)

    def run_lru_anonymous(calls: int) -> None:
        keys = ANONYMOUS * (calls // len(ANONYMOUS))
        for ip, agent, language, encoding in keys:
            lru_anonymous(ip, agent, language, encoding)

    def run_memo_anonymous(calls: int) -> None:
        keys = ANONYMOUS * (calls // len(ANONYMOUS))
        for ip, agent, language, encoding in keys:
            memo_anonymous[ip, agent, language, encoding]

    def run_loop_only(calls: int) -> None:
        keys = ADDRESSES * (calls // len(ADDRESSES))
        for _key in keys:
            pass

    for warm in (run_lru_network, run_memo_network, run_lru_anonymous, run_memo_anonymous):
        warm(len(ADDRESSES))
    return {"loop_only": run_loop_only, "lru_network": run_lru_network, "memo_network": run_memo_network,
            "lru_anonymous": run_lru_anonymous, "memo_anonymous": run_memo_anonymous}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--only", default="", help="one case's name")
    args = parser.parse_args()
    runs = cases()
    if args.only:
        runs = {args.only: runs[args.only]}
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            started = time.thread_time()
            run(args.calls)
            results[name].append((time.thread_time() - started) / args.calls * 1e9)
    for name, ns in results.items():
        ns.sort()
        print(f"{name:16} median {ns[len(ns) // 2]:6.1f} ns/call  range {ns[0]:.1f}-{ns[-1]:.1f}")


if __name__ == "__main__":
    main()
