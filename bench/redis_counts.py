"""Which Redis commands a gateway sent, from `INFO commandstats`.

The request path's only Redis call is the limits' EVALSHA: a request waits for it (one call in
flight at a time decides every request that arrived meanwhile). Everything else the gateways
send leaves from background tasks that no request waits for: the detectors' and the ladder's
sightings and the usage flushes as EVAL of their scripts (one call per batch), fleet merges,
notices and write-backs as plain commands. So EVALSHA calls divided by requests are the
synchronous round trips per request; the other commands per request are the batched ones.
INFO commandstats also counts the commands a script runs inside Redis (GET, SET, ZADD, HINCRBYFLOAT...),
which cost no round trip: they are left out while any script ran (a Cluster's pipelines send
some of them as commands of their own; the bench runs one server)."""

from __future__ import annotations

_INSIDE_SCRIPTS = ("cmdstat_get", "cmdstat_set", "cmdstat_time", "cmdstat_zremrangebyscore", "cmdstat_zcard",
                   "cmdstat_zadd", "cmdstat_pexpire", "cmdstat_incrbyfloat", "cmdstat_pexpireat",
                   # lua/sightings.lua and lua/counters.lua
                   "cmdstat_zremrangebyrank", "cmdstat_zrangebyscore", "cmdstat_hincrbyfloat", "cmdstat_sadd")


def command_calls(port: int) -> dict[str, int]:
    """Calls per command name ("evalsha", "zadd", ...) since the server started."""
    import redis

    stats = redis.Redis(port=port, socket_timeout=2).info("commandstats")
    return {name.removeprefix("cmdstat_"): value.get("calls", 0) for name, value in stats.items()}


def redis_commands(port: int | None, quiet: bool = False) -> tuple[int, int]:
    """(EVALSHA calls, every other command except the bench's own INFO); (-1, -1) if unreachable."""
    if port is None:
        return 0, 0
    import redis

    try:
        stats = redis.Redis(port=port, socket_timeout=2).info("commandstats")
    except redis.RedisError:
        if quiet:
            return -1, -1
        raise
    evalsha = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    scripts = evalsha + stats.get("cmdstat_eval", {}).get("calls", 0)
    other = sum(value.get("calls", 0) for name, value in stats.items()
                if name not in ("cmdstat_evalsha", "cmdstat_info") and not (scripts and name in _INSIDE_SCRIPTS))
    return evalsha, other
