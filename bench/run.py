"""One benchmark run: the same wrk load on the upstream directly, nginx as a reverse proxy,
a bare aiohttp server (the framework's own ceiling), a naive aiohttp ClientSession proxy and
fairgate (plain, and with HS256 bearer tokens from a spread of users, authentication off and
on), all answering from the same nginx `return 200` upstream. With every policy on, fairgate
also serves many customers: 20,000 and 200,000 distinct customers' tokens in rotation, each
sent once to the gateway before the rounds (so the rounds measure warm tokens), against the
same policies with 400 users.

    python bench/run.py [--duration 5] [--rounds 5] [--connections 32] [--markdown FILE]
                        [--many-customers 20000,200000]

Targets are measured in interleaved rounds and the median round is reported, so a noisy
neighbour on the machine skews every target alike. With taskset available, the server under
test gets core 0 and the load generator and upstream share core 1.

Needs wrk (load) and nginx (upstream and reference proxy): `apt-get install -y wrk nginx`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the ports come from the tests' allocator

from tests.support.ports import REDIS_PORTS, free_port  # noqa: E402

SERVER_CORE, LOAD_CORE = 0, 1
TOKEN_USERS = 400
TOKEN_CUSTOMERS = 40
MANY_CUSTOMERS = (20_000, 200_000)
TOKEN_ISSUER = "https://login.bench.invalid"
TOKEN_SECRET = "bench-secret-bench-secret-bench-secret!"
UPSTREAM_BODY = '{"id": 42, "status": "open", "title": "A ticket of typical size"}'


@dataclass
class Target:
    name: str
    port: int
    pid: int
    # wrk Lua script and its arguments, when the requests need more than a GET.
    script: list[str] = field(default_factory=list)
    # A Redis whose commands per request are counted (INFO commandstats) during the run.
    redis_port: int | None = None
    path: str = "/api/v1/bench"
    # Tokens to show the gateway once each before the rounds, when one second of load is not enough.
    warm_up: Path | None = None


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    redis_commands_per_request: float | None  # EVALSHA: the request path's round trips
    redis_background_per_request: float | None  # every other command (detectors' batched pipelines, usage)
    # CPU time the server under test spent per request: steadier than req/s on a shared
    # machine, and the number to compare before and after a hot-path change.
    cpu_us_per_request: float


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per target and round (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    parser.add_argument("--only", metavar="TEXT", action="append",
                        help="measure only targets whose name contains TEXT (repeatable; for quick A/B runs)")
    parser.add_argument("--many-customers", metavar="N,N", type=_counts, default=MANY_CUSTOMERS,
                        help="customer counts of the many-customer targets (default 20000,200000; 0 for none)")
    args = parser.parse_args()

    missing = [tool for tool in ("wrk", "nginx") if not _find(tool)]
    if "wrk" in missing:
        print("bench: wrk is not installed. Install it with: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 1
    if "nginx" in missing:
        print("bench: nginx is not installed (it serves as upstream and reference proxy).\n"
              "Install it with: apt-get update && apt-get install -y nginx", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="fairgate-bench-") as tmp:
        workdir = Path(tmp)
        upstream_port, proxy_port, hello_port, naive_port = (free_port() for _ in range(4))
        limited_tokens = _write_tokens(workdir / "limited.txt", "customer")
        unlimited_tokens = _write_tokens(workdir / "unlimited.txt", "free")
        # One user per customer, none listed in the config: each has the default plan's limits.
        many_tokens = {count: _write_tokens(workdir / f"many-{count}.txt", "many", count, count)
                       for count in args.many_customers}

        def bearer(tokens: Path) -> list[str]:
            return [str(ROOT / "bench" / "bearer.lua"), "--", str(tokens)]

        def rotation(tokens: Path) -> list[str]:
            return [str(ROOT / "bench" / "rotate.lua"), "--", str(tokens)]

        processes = []
        try:
            upstream = _start_nginx(workdir / "upstream", _upstream_conf(upstream_port), LOAD_CORE)
            processes.append(upstream)
            proxy = _start_nginx(workdir / "proxy", _proxy_conf(proxy_port, upstream_port), SERVER_CORE)
            processes.append(proxy)
            hello = _pinned([sys.executable, str(ROOT / "bench" / "aiohttp_hello.py"), str(hello_port)], SERVER_CORE)
            processes.append(hello)
            naive = _pinned([sys.executable, str(ROOT / "bench" / "aiohttp_client_proxy.py"),
                             str(naive_port), str(upstream_port)], SERVER_CORE)
            processes.append(naive)
            # Each fairgate process serves every variant, so a comparison is never between two
            # processes (which alone differ by several microseconds per request here).
            memory = _start_fairgate(workdir / "memory.yaml", upstream_port, "memory://")
            processes.append(memory.process)
            redis = _start_redis(workdir)
            shared = None
            if redis is not None:
                processes.append(redis.process)
                shared = _start_fairgate(workdir / "redis.yaml", upstream_port, f"redis://127.0.0.1:{redis.port}/0")
                processes.append(shared.process)
            targets = [
                Target(DIRECT, upstream_port, upstream.pid),
                Target(NGINX, proxy_port, proxy.pid),
                Target("aiohttp server alone (no upstream)", hello_port, hello.pid),
                Target("aiohttp server + aiohttp ClientSession proxy", naive_port, naive.pid),
                Target(PLAIN, memory.port, memory.process.pid, path="/open/bench"),
                Target(AUTH_OFF, memory.port, memory.process.pid, bearer(limited_tokens), path="/open/bench"),
                Target(AUTH_ON, memory.port, memory.process.pid, bearer(unlimited_tokens)),
                Target(LIMITS_MEMORY, memory.port, memory.process.pid, bearer(limited_tokens)),
                Target(DETECT_MEMORY, memory.port, memory.process.pid, bearer(unlimited_tokens), path="/detect/bench"),
                Target(EVERY_POLICY, memory.port, memory.process.pid, bearer(limited_tokens), path="/detect/bench"),
            ]
            targets += [
                Target(many_customers(count), memory.port, memory.process.pid, rotation(tokens), path="/detect/bench",
                       warm_up=tokens)
                for count, tokens in many_tokens.items()
            ]
            if shared is not None:
                targets += [
                    Target(AUTH_ON_REDIS, shared.port, shared.process.pid, bearer(unlimited_tokens),
                           redis_port=redis.port),
                    Target(LIMITS_REDIS, shared.port, shared.process.pid, bearer(limited_tokens),
                           redis_port=redis.port),
                    Target(DETECT_REDIS, shared.port, shared.process.pid, bearer(unlimited_tokens),
                           redis_port=redis.port, path="/detect/bench"),
                ]
            if args.only:
                targets = [t for t in targets if any(text in t.name for text in args.only)]
            cold: dict[str, float] = {}  # target -> requests per second of the warm-up (tokens never seen)
            for target in targets:
                _wait_http(f"http://127.0.0.1:{target.port}/healthz")
                if target.warm_up is not None:
                    cold[target.name] = _send_each_token_once(target, target.warm_up, args.connections)
                _wrk(target, 1, args)  # warm-up: pools, token cache
            rounds: dict[str, list[Result]] = {target.name: [] for target in targets}
            for number in range(args.rounds):
                # Every other round runs backwards, so a drift of the machine during a round
                # favours neither side of a comparison.
                for target in targets if number % 2 == 0 else reversed(targets):
                    rounds[target.name].append(_measure(target, args))
            results = [_median(rounds[target.name]) for target in targets]
        finally:
            for process in processes:
                _stop(process)

    table = _table(results, rounds, cold, args)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


def _measure(target: Target, args: argparse.Namespace) -> Result:
    evalsha_before, other_before = _redis_commands(target.redis_port)
    cpu_before = _cpu_seconds(target.pid)
    output = _wrk(target, args.duration, args)
    cpu_used = _cpu_seconds(target.pid) - cpu_before
    evalsha_after, other_after = _redis_commands(target.redis_port)
    commands, other = evalsha_after - evalsha_before, other_after - other_before
    total = int(re.search(r"(\d+) requests in", output).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non2xx.group(1)) if non2xx else 0
    cpu_us = cpu_used / total * 1e6 if total else float("nan")
    per_request = commands / total if target.redis_port is not None and total else None
    background = other / total if target.redis_port is not None and total else None
    return Result(target.name, rps, _percentile(output, "50"), _percentile(output, "99"), errors, per_request,
                  background, cpu_us)


@dataclass
class RedisServer:
    process: subprocess.Popen
    port: int


def _start_redis(workdir: Path) -> RedisServer | None:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(server, os.X_OK):
        print("bench: redis-server not found; skipping the Redis run (apt-get install -y redis-server)",
              file=sys.stderr)
        return None
    port = free_port(REDIS_PORTS)
    process = _pinned([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", str(workdir)], LOAD_CORE, quiet=True)
    deadline = time.monotonic() + 10
    while _redis_commands(port, quiet=True)[0] < 0:
        if time.monotonic() > deadline:
            raise SystemExit("bench: redis-server did not start")
        time.sleep(0.05)
    return RedisServer(process, port)


def _redis_commands(port: int | None, quiet: bool = False) -> tuple[int, int]:
    """EVALSHA calls (the request path's round trips: INFO commandstats also lists the commands a
    script runs inside Redis, which cost none), and every other command except the bench's own
    INFO; (-1, -1) if unreachable."""
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
    inside_scripts = ("cmdstat_get", "cmdstat_set", "cmdstat_time", "cmdstat_zremrangebyscore", "cmdstat_zcard",
                      "cmdstat_zadd", "cmdstat_pexpire", "cmdstat_incrbyfloat", "cmdstat_pexpireat")
    other = sum(value.get("calls", 0) for name, value in stats.items()
                if name not in ("cmdstat_evalsha", "cmdstat_info") and not (evalsha and name in inside_scripts))
    return evalsha, other


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _median(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.requests_per_second)[len(results) // 2]


def _wrk(target: Target, duration: int, args: argparse.Namespace) -> str:
    script = ["-s", target.script[0]] if target.script else []
    command = [*_taskset(LOAD_CORE), "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s",
               "--latency", *script, f"http://127.0.0.1:{target.port}{target.path}", *target.script[1:]]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _send_each_token_once(target: Target, tokens: Path, connections: int) -> float:
    """One request per token (wrk cannot stop after a number of requests), from the load core;
    the requests per second."""
    import asyncio

    import aiohttp

    tokens_sent = [line for line in tokens.read_text().splitlines() if line]
    lines = iter(tokens_sent)
    url = f"http://127.0.0.1:{target.port}{target.path}"

    async def send() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
            async def one_connection() -> None:
                for token in lines:  # shared: each token goes out once
                    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
                        await response.read()
            await asyncio.gather(*(one_connection() for _ in range(connections)))

    cores = os.sched_getaffinity(0)
    if _taskset(LOAD_CORE):
        os.sched_setaffinity(0, {LOAD_CORE})
    started = time.monotonic()
    try:
        asyncio.run(send())
    finally:
        os.sched_setaffinity(0, cores)
    return len(tokens_sent) / (time.monotonic() - started)


def _percentile(output: str, which: str) -> float:
    match = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _table(results: list[Result], rounds: dict[str, list[Result]], cold: dict[str, float],
           args: argparse.Namespace) -> str:
    by_name = {result.name: result for result in results}
    direct = by_name.get(DIRECT, results[0])
    nginx = by_name.get(NGINX, results[0])
    pinning = f"server on core {SERVER_CORE}, wrk and upstream on core {LOAD_CORE}" if _taskset(0) else "unpinned"
    lines = [
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, median of {args.rounds} interleaved rounds, "
        f"one worker each, {os.cpu_count()} cores ({pinning}), upstream: nginx return 200",
        "",
        "| target | req/s | p50 ms | p99 ms | errors | server CPU us/req | EVALSHA/req | other Redis cmds/req "
        "| vs nginx proxy | vs direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        evalsha = "" if result.redis_commands_per_request is None else f"{result.redis_commands_per_request:.2f}"
        other = "" if result.redis_background_per_request is None else f"{result.redis_background_per_request:.2f}"
        lines.append(
            f"| {result.name} | {result.requests_per_second:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} "
            f"| {result.errors} | {result.cpu_us_per_request:.1f} | {evalsha} | {other} "
            f"| {result.requests_per_second / nginx.requests_per_second:.2f}x "
            f"| {result.requests_per_second / direct.requests_per_second:.2f}x |"
        )
    lines.append("")
    for label, numerator, denominator in (
        ("Authentication on / off (same process, same requests)", AUTH_ON, AUTH_OFF),
        ("Limits on memory / auth alone (same process)", LIMITS_MEMORY, AUTH_ON),
        ("Limits on Redis / auth alone (same process)", LIMITS_REDIS, AUTH_ON_REDIS),
        ("Detectors on / off, memory (same process)", DETECT_MEMORY, AUTH_ON),
        ("Detectors on / off, Redis (same process)", DETECT_REDIS, AUTH_ON_REDIS),
        *((f"Every policy, {count:,} customers / 400 users (same process)", many_customers(count), EVERY_POLICY)
          for count in args.many_customers),
    ):
        if numerator in rounds and denominator in rounds:
            # Paired per round (the two ran back to back), then the median: steadier than a
            # ratio of two medians taken from different moments.
            pairs = list(zip(rounds[numerator], rounds[denominator], strict=True))  # one result per round each
            ratios = sorted(a.requests_per_second / b.requests_per_second for a, b in pairs)
            extra = statistics.median(a.cpu_us_per_request - b.cpu_us_per_request for a, b in pairs)
            lines.append(f"{label}: {statistics.median(ratios):.2f}x req/s (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}), "
                         f"{extra:+.1f} us CPU per request (median of {len(pairs)} paired rounds).")
    for name, rate in cold.items():
        lines.append(f"Warm-up of \"{name}\": each token sent once, first sight: {rate:,.0f} req/s "
                     f"({args.connections} connections from a Python aiohttp client, which may be the limit).")
    return "\n".join(lines)


def _upstream_conf(port: int) -> str:
    return _nginx_conf(f"""
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{UPSTREAM_BODY}'; }}
    """, "")


def _proxy_conf(port: int, upstream_port: int) -> str:
    return _nginx_conf(f"""
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    """, f"upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}")


def _nginx_conf(server: str, http_extra: str) -> str:
    return f"""
worker_processes 1;
master_process off;
daemon off;
pid nginx.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
    {http_extra}
    server {{ {server} }}
}}
"""


def _start_nginx(prefix: Path, conf: str, core: int) -> subprocess.Popen:
    (prefix / "tmp").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(conf)
    # master_process off: the one nginx process is the worker, so pinning it pins the work.
    return _pinned([_find("nginx"), "-p", str(prefix), "-c", str(prefix / "nginx.conf")], core)


def _pinned(command: list[str], core: int, quiet: bool = False) -> subprocess.Popen:
    output = subprocess.DEVNULL if quiet else None
    return subprocess.Popen([*_taskset(core), *command], cwd=ROOT, stdout=output)


def _taskset(core: int) -> list[str]:
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(core)]


@dataclass
class Gateway:
    process: subprocess.Popen
    port: int


DIRECT = "upstream direct (nginx return 200)"
NGINX = "nginx reverse proxy, keepalive"
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

# Customers "customer-N" get the bench plan, whose limits never reject under this load, so every
# request pays for a whole decision; customers "free-N" are on a plan without limits.
BENCH_LIMITS = """
limits: {{default_plan: bench}}
plans:
  bench:
    limits:
      - {{name: sustained, kind: rate, rate: 100000/s, burst: 100000}}
      - {{name: daily, kind: quota, metric: requests, period: day, limit: 1000000000000}}
  unlimited: {{seats: 100000}}
customers:
{customers}
state: {{url: "{state_url}", timeout: 200ms}}
"""


def _start_fairgate(config: Path, upstream_port: int, state_url: str) -> Gateway:
    port, admin_port = free_port(), free_port()
    customers = "\n".join(f"  free-{n}: {{plan: unlimited}}" for n in range(TOKEN_CUSTOMERS))
    config.write_text(BENCH_LIMITS.format(customers=customers, state_url=state_url) + f"""
server: {{listen: "127.0.0.1:{port}", access_log: false}}
admin: {{listen: "127.0.0.1:{admin_port}"}}
logging: {{level: warning}}
auth:
  issuers:
    - {{name: bench, issuer: "{TOKEN_ISSUER}", audiences: [bench], algorithms: [HS256], hmac_secret: "{TOKEN_SECRET}"}}
upstreams:
  bench: {{url: "http://127.0.0.1:{upstream_port}"}}
detection:
  hash_salt: bench-salt
  sharing: {{action: flag}}
  scraping: {{actions: {{api: flag}}}}
  seats: {{}}
routes:
  - {{name: health, path_prefix: /healthz, upstream: bench, auth: none, detect: false}}
  - {{name: open, path_prefix: /open/, upstream: bench, auth: none, detect: false}}
  - {{name: detect, path_prefix: /detect/, upstream: bench}}
  - {{name: api, path_prefix: /, upstream: bench, detect: false}}
""")
    process = _pinned([sys.executable, "-m", "gateway", "run", "-c", str(config)], SERVER_CORE)
    return Gateway(process, port)


def _write_tokens(path: Path, customer_prefix: str, users: int = TOKEN_USERS, customers: int = TOKEN_CUSTOMERS) -> Path:
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


def _find(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (path for path in (f"/usr/sbin/{tool}", f"/usr/local/sbin/{tool}") if os.access(path, os.X_OK)), None
    )


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected customer counts such as 20000,200000, got {text!r}") from None
    if any(count < 0 for count in counts):
        raise argparse.ArgumentTypeError("customer counts cannot be negative")
    return tuple(count for count in counts if count)


def _wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {url} did not come up within {timeout:.0f}s") from None
            time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    sys.exit(main())
