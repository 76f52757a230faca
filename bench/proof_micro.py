"""What a browser-proof link costs per HTML page, in one process, no I/O.

    python bench/proof_micro.py

"mint": one token (two HMAC-SHA256 and base64). "mint + plant, whole page": what a page read
whole (up to 64 KiB with a Content-Length) costs: the token, the `</head>` search, the copy with
the tag. "mint + plant, streamed": the same for a page streamed in 4 KiB chunks (the search
resumes where it left off). "verify": one stylesheet fetch credited (and its nonce remembered).
The last rows are for scale: on a loaded machine every figure grows, their ratios less so.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Coroutine

import jwt

from gateway.detect.proof import BrowserProofs
from gateway.metrics import Metrics
from gateway.proxy.html_head import head_end, read_head, with_link
from tests.support.clock import T0, ManualClock

N = 50_000
ROUNDS = 5
HEAD = b"<!doctype html><html><head><title>Tickets</title>" + b'<link rel="stylesheet" href="/a.css">' * 40
PAGE = HEAD + b"</head><body>" + b"<p>row</p>" * 2000 + b"</body></html>"  # ~22 KiB, </head> at ~1.6 KiB
LIMIT = 32768
TOKEN = jwt.encode({"sub": "alice", "org_id": "acme"}, "s" * 32, algorithm="HS256")


def run_inline(coroutine: Coroutine[None, None, None]) -> None:
    """A coroutine that never suspends (its chunks are all there), run without an event loop's overhead."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("suspended")


def best_of(step, n: int = N) -> float:
    """Microseconds per call, the best of ROUNDS."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def main() -> None:
    metrics = Metrics()
    proofs = BrowserProofs(ManualClock(T0), metrics.browser_proofs, metrics.proof_pages)
    proofs.configure(b"bench salt", 600.0)

    def mint() -> str:
        return proofs.mint("user:acme/alice")

    def plant_whole() -> None:
        tag = b'<link rel="stylesheet" href="/.well-known/fairgate/proof/%s.css">' % mint().encode()
        with_link(PAGE, head_end(PAGE, LIMIT), tag)

    chunks = [PAGE[i:i + 4096] for i in range(0, len(PAGE), 4096)]

    async def streamed() -> None:
        source = iter(chunks)

        async def read_chunk() -> bytes:
            return next(source, b"")

        tag = b'<link rel="stylesheet" href="/.well-known/fairgate/proof/%s.css">' % mint().encode()
        read, at = await read_head(read_chunk, LIMIT)
        with_link(read, at, tag)

    tokens = iter([proofs.mint(f"user:acme/u{n % 1000}") for n in range(N * ROUNDS)])
    subjects = iter([f"user:acme/u{n % 1000}" for n in range(N * ROUNDS)])
    rows = [
        ("mint", best_of(lambda: proofs.mint("user:acme/alice"))),
        ("mint + plant, whole page (22 KiB)", best_of(plant_whole)),
        ("mint + plant, streamed (4 KiB chunks)", best_of(lambda: run_inline(streamed()))),
        ("verify (credited)", best_of(lambda: proofs.verify(next(tokens), next(subjects)))),
        ("for scale: one hmac.digest (OpenSSL 3)", best_of(lambda: hmac.digest(b"k" * 32, PAGE[:60], "sha256"))),
        ("for scale: one JWT HS256 verify (PyJWT)", best_of(lambda: jwt.decode(TOKEN, "s" * 32, algorithms=["HS256"]),
                                                            N // 5)),
    ]
    print("| step | µs per page |\n|---|---|")
    for name, micros in rows:
        print(f"| {name} | {micros:.2f} |")


if __name__ == "__main__":
    main()
