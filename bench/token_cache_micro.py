"""The longest single `TokenCache.put` while 200,000 tokens are seen for the first time, in CPU
time of this thread: a put that grows one big OrderedDict resizes it in one C call of O(len).
Then the same tokens in rotation, pass after pass: the mean CPU per `get`, which shows whether a
hit stays O(1) once the protected segment is full and every promotion demotes its oldest.

    .venv/bin/python bench/token_cache_micro.py [--tokens 200000] [--rounds 2] [--passes 4]

Set PYTHONPATH to another checkout to measure its code (before/after).
"""

from __future__ import annotations

import argparse
import time

from gateway.auth.identity import Identity
from gateway.auth.token_cache import TokenCache


def one_round(tokens: int, capacity: int, passes: int) -> tuple[float, float, float, list[float]]:
    """(longest put ms, 5th longest ms, mean put us, mean get us of each rotation pass)."""
    cache = TokenCache(capacity)
    took: list[float] = []
    clock = time.thread_time
    names = []
    for n in range(tokens):
        identity = Identity(customer=f"c{n}", user=f"u{n}", session=None, email=None, plan=None, issuer="bench",
                            token_id=None, scopes=frozenset(), issued_at=0.0, expires_at=3600.0)
        token = f"eyJhbGciOiJIUzI1NiJ9.{n:012d}.signature-of-a-realistic-length-{n}"
        names.append(token)
        started = clock()
        cache.put(token, identity, 3600.0)
        took.append(clock() - started)
    took.sort()
    rotation = []
    for _ in range(passes):
        started = clock()
        for token in names:
            cache.get(token, 1.0)
        rotation.append((clock() - started) / tokens * 1e6)
    return took[-1] * 1e3, took[-5] * 1e3, sum(took) / tokens * 1e6, rotation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--capacity", type=int, default=250_000, help="auth.token_cache_size (default 250000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--passes", type=int, default=4, help="rotation passes after the first sightings")
    args = parser.parse_args()
    for _ in range(args.rounds):
        longest, fifth, mean, rotation = one_round(args.tokens, args.capacity, args.passes)
        print(f"{args.tokens} first sightings: longest put {longest:.2f} ms, 5th longest {fifth:.2f} ms, "
              f"mean {mean:.2f} us; in rotation, mean get per pass: {', '.join(f'{us:.2f}' for us in rotation)} us")


if __name__ == "__main__":
    main()
