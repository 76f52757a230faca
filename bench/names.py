"""The bench's target names: the rows of its table, and the keys of a `--json` file that
`--baseline` compares (so a rename breaks comparisons with older files)."""

from __future__ import annotations

from bench.tokens import TOKEN_USERS

DIRECT = "upstream direct (nginx return 200)"
NGINX = "nginx reverse proxy, keepalive"
BARE = "aiohttp server alone (no upstream)"
NAIVE = "aiohttp server + aiohttp ClientSession proxy"
PLAIN = "fairgate, no policies"
AUTH_OFF = "fairgate, bearer tokens sent, auth off"
AUTH_ON = f"fairgate, HS256 auth ({TOKEN_USERS} users), plan without limits"
LIMITS_MEMORY = "fairgate, auth + limits, memory store"
AUTH_ON_REDIS = "fairgate (Redis process), auth, plan without limits"
LIMITS_REDIS = "fairgate (Redis process), auth + limits, Redis store"
DETECT_MEMORY = "fairgate, auth + detectors (sharing, scraping, seats)"
DETECT_REDIS = "fairgate (Redis process), auth + detectors, Redis store"
EVERY_POLICY = f"fairgate, every policy (auth, limits, detectors), {TOKEN_USERS} users"


def many_customers(count: int) -> str:
    return f"fairgate, every policy, {count:,} customers' tokens in rotation (warm)"
