"""Bearer tokens for the bench: files of HS256 tokens for wrk's Lua scripts, the first-sight
pass that shows the gateway each token once, and PyJWT's own verification rate for the same
tokens (what a first sight cannot beat)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

TOKEN_USERS = 400
TOKEN_CUSTOMERS = 40
TOKEN_ISSUER = "https://login.bench.invalid"
TOKEN_SECRET = "bench-secret-bench-secret-bench-secret!"


def write_tokens(path: Path, customer_prefix: str, users: int = TOKEN_USERS, customers: int = TOKEN_CUSTOMERS) -> Path:
    """HS256 tokens of `users` users spread over `customers` customers, one per line."""
    import jwt

    now = int(time.time())
    lines = [
        jwt.encode({"iss": TOKEN_ISSUER, "aud": "bench", "sub": f"user-{n}@{customer_prefix}-{n % customers}",
                    "org_id": f"{customer_prefix}-{n % customers}", "sid": f"s-{n}", "iat": now,
                    "exp": now + 3600},
                   TOKEN_SECRET, algorithm="HS256")
        for n in range(users)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def jwt_verifications_per_second(tokens: Path, seconds: float = 1.0) -> float:
    """PyJWT decoding the bench's tokens with the checks the gateway asks for (signature,
    issuer, audience, expiry), in this process: the cost a token's first sight cannot avoid."""
    import jwt

    lines = [line for line in tokens.read_text().splitlines() if line][:5000]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for token in lines[:500]:
            jwt.decode(token, TOKEN_SECRET, algorithms=["HS256"], audience="bench", issuer=TOKEN_ISSUER)
        done += min(500, len(lines))
    return done / (time.perf_counter() - started)


def send_each_token_once(url: str, tokens: Path, connections: int, core: int | None) -> float:
    """One request per token (wrk cannot stop after a number of requests), from `core`; the
    requests per second."""
    import aiohttp

    tokens_sent = [line for line in tokens.read_text().splitlines() if line]
    lines = iter(tokens_sent)

    async def send() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
            async def one_connection() -> None:
                for token in lines:  # shared: each token goes out once
                    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
                        await response.read()
            await asyncio.gather(*(one_connection() for _ in range(connections)))

    cores = os.sched_getaffinity(0)
    if core is not None and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {core})
    started = time.monotonic()
    try:
        asyncio.run(send())
    finally:
        os.sched_setaffinity(0, cores)
    return len(tokens_sent) / (time.monotonic() - started)
