"""evaluate.lua and its arguments: the one layout of a batch of checks, its RESP encoding, and
the answers read back in the order the script wrote them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from gateway.state.store import CONCURRENCY, RATE, Check, Outcome

SCRIPT = (Path(__file__).parent / "lua" / "evaluate.lua").read_text()

# The script's number for each kind (evaluate.lua names them RATE, CONCURRENCY, QUOTA too).
LUA_RATE, LUA_CONCURRENCY, LUA_QUOTA = 0, 1, 2


class CheckArguments(NamedTuple):
    """One check's ARGV, in the script's order: kind, shadow, then four values by kind."""

    kind: int
    shadow: str
    a: object
    b: object
    c: object
    d: object


# Each request's ARGV before its checks': the gateway's time and its check count.
REQUEST_ARGUMENTS = 2
ARGUMENTS_PER_CHECK = len(CheckArguments._fields)


def check_arguments(check: Check) -> CheckArguments:
    shadow = "1" if check.shadow else "0"
    if check.kind == RATE:
        return CheckArguments(LUA_RATE, shadow, repr(check.interval), check.burst, repr(check.cost),
                              repr(check.max_delay))
    if check.kind == CONCURRENCY:
        return CheckArguments(LUA_CONCURRENCY, shadow, check.max, check.token, repr(check.lease), 0)
    return CheckArguments(LUA_QUOTA, shadow, repr(check.cost), repr(check.limit), "1" if check.flag_only else "0",
                          repr(check.expires_at))


class Request(Protocol):
    """One request's part of a script call."""

    now: str  # the gateway's time in seconds (repr)
    checks: list[Check]


def _encoded(check: Check) -> tuple[bytes, bytes]:
    """A check's key and arguments in RESP, kept with the check (templates reuse checks)."""
    if check.encoded is None:
        check.encoded = (_bulk(check.key.encode()),
                         b"".join(_bulk(str(value).encode()) for value in check_arguments(check)))
    return check.encoded


def evalsha_command(sha: bytes, clock: bytes, requests: Sequence[Request]) -> bytes:
    """One EVALSHA deciding every request, in RESP (`sha` and `clock` already bulk strings):
    KEYS are every check's key, ARGV the clock, then per request its time, its check count and
    its checks' arguments."""
    keys, args = [], [clock]
    for request in requests:
        args.append(_bulk(request.now.encode()))
        args.append(_bulk(b"%d" % len(request.checks)))
        for check in request.checks:
            key, values = _encoded(check)
            keys.append(key)
            args.append(values)
    count = len(keys)
    # EVALSHA, its sha, the key count, the keys, the clock, then the requests' arguments
    length = 3 + count + 1 + REQUEST_ARGUMENTS * len(requests) + ARGUMENTS_PER_CHECK * count
    return b"".join((b"*%d\r\n$7\r\nEVALSHA\r\n" % length, sha, _bulk(b"%d" % count), *keys, *args))


def evalsha_arguments(clock: str, requests: Sequence[Request]) -> tuple[list[str], list[object]]:
    """The same call as `evalsha_command`, as KEYS and ARGV for redis-py to encode (a Cluster)."""
    keys = [check.key for request in requests for check in request.checks]
    args: list[object] = [clock]
    for request in requests:
        args += (request.now, len(request.checks))
        for check in request.checks:
            args += check_arguments(check)
    return keys, args


def answers(reply: bytes | str) -> list[str]:
    """The script's reply split per request, in the order the requests were given."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    return text.split("|")


def outcomes(answer: str) -> list[Outcome]:
    """One request's answer: an outcome per check, in the order of its checks."""
    result = []
    for item in answer.split(";"):
        allowed, remaining, reset, retry_after, delay, over = item.split(",")
        result.append(Outcome(allowed == "1", float(remaining), float(reset), float(retry_after), float(delay),
                              over == "1"))
    return result


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def bulk(value: str) -> bytes:
    return _bulk(value.encode())
