"""The longest single `TokenCache.put` while 200,000 tokens are seen for the first time, in CPU
time of this thread: a put that grows one big OrderedDict resizes it in one C call of O(len).

    .venv/bin/python bench/token_cache_micro.py [--tokens 200000] [--rounds 2]

Set PYTHONPATH to another checkout to measure its code (before/after).
"""

from __future__ import annotations

import argparse
import time

from gateway.auth.identity import Identity
from gateway.auth.token_cache import TokenCache


def one_round(tokens: int, capacity: int) -> tuple[float, float, float]:
    """(longest put ms, 5th longest ms, mean put us)."""
    cache = TokenCache(capacity)
    took: list[float] = []
    clock = time.thread_time
    for n in range(tokens):
        identity = Identity(customer=f"c{n}", user=f"u{n}", session=None, email=None, plan=None, issuer="bench",
                            token_id=None, scopes=frozenset(), issued_at=0.0, expires_at=3600.0)
        token = f"eyJhbGciOiJIUzI1NiJ9.{n:012d}.signature-of-a-realistic-length-{n}"
        started = clock()
        cache.put(token, identity, 3600.0)
        took.append(clock() - started)
    took.sort()
    return took[-1] * 1e3, took[-5] * 1e3, sum(took) / tokens * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--capacity", type=int, default=250_000, help="auth.token_cache_size (default 250000)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.rounds):
        longest, fifth, mean = one_round(args.tokens, args.capacity)
        print(f"{args.tokens} first sightings: longest put {longest:.2f} ms, 5th longest {fifth:.2f} ms, "
              f"mean {mean:.2f} us")


if __name__ == "__main__":
    main()
