"""One benchmark run: the same wrk load on the upstream directly, nginx as a reverse proxy,
a bare aiohttp server (the framework's own ceiling), a naive aiohttp ClientSession proxy and
fairgate (plain, and with HS256 bearer tokens from a spread of users, authentication off and
on), all answering from the same nginx `return 200` upstream.

    python bench/run.py [--duration 5] [--rounds 3] [--connections 32] [--markdown FILE]

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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE, LOAD_CORE = 0, 1
TOKEN_USERS = 400
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


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    redis_commands_per_request: float | None
    # CPU time the server under test spent per request: steadier than req/s on a shared
    # machine, and the number to compare before and after a hot-path change.
    cpu_us_per_request: float


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per target and round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
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
        upstream_port, proxy_port, hello_port, naive_port = (_free_port() for _ in range(4))
        tokens = _write_tokens(workdir)
        with_tokens = [str(ROOT / "bench" / "bearer.lua"), "--", str(tokens)]
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
            plain = _start_fairgate(workdir / "plain.yaml", upstream_port, authenticated=False)
            processes.append(plain.process)
            authed = _start_fairgate(workdir / "auth.yaml", upstream_port, authenticated=True)
            processes.append(authed.process)
            limited = _start_fairgate(workdir / "limits.yaml", upstream_port, authenticated=True, limits=True)
            processes.append(limited.process)
            redis = _start_redis(workdir)
            shared = None
            if redis is not None:
                processes.append(redis.process)
                shared = _start_fairgate(workdir / "redis.yaml", upstream_port, authenticated=True, limits=True,
                                         state_url=f"redis://127.0.0.1:{redis.port}/0")
                processes.append(shared.process)
            targets = [
                Target("upstream direct (nginx return 200)", upstream_port, upstream.pid),
                Target("nginx reverse proxy, keepalive", proxy_port, proxy.pid),
                Target("aiohttp server alone (no upstream)", hello_port, hello.pid),
                Target("aiohttp server + aiohttp ClientSession proxy", naive_port, naive.pid),
                Target("fairgate, no policies", plain.port, plain.process.pid),
                # Same requests, each with a bearer token: the first pays no auth, the second verifies.
                Target("fairgate, tokens sent, auth off", plain.port, plain.process.pid, with_tokens),
                Target(f"fairgate, HS256 auth ({TOKEN_USERS} users)", authed.port, authed.process.pid, with_tokens),
                Target("fairgate, auth + limits on memory", limited.port, limited.process.pid, with_tokens),
            ]
            if shared is not None:
                targets.append(Target("fairgate, auth + limits on Redis", shared.port, shared.process.pid,
                                      with_tokens, redis_port=redis.port))
            for target in targets:
                _wait_http(f"http://127.0.0.1:{target.port}/healthz")
                _wrk(target, 1, args)  # warm-up: pools, token cache
            rounds: dict[str, list[Result]] = {target.name: [] for target in targets}
            for _ in range(args.rounds):
                for target in targets:
                    rounds[target.name].append(_measure(target, args))
            results = [_median(rounds[target.name]) for target in targets]
        finally:
            for process in processes:
                _stop(process)

    table = _table(results, args)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


def _measure(target: Target, args: argparse.Namespace) -> Result:
    commands_before = _redis_commands(target.redis_port)
    cpu_before = _cpu_seconds(target.pid)
    output = _wrk(target, args.duration, args)
    cpu_used = _cpu_seconds(target.pid) - cpu_before
    commands = _redis_commands(target.redis_port) - commands_before
    total = int(re.search(r"(\d+) requests in", output).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non2xx.group(1)) if non2xx else 0
    cpu_us = cpu_used / total * 1e6 if total else float("nan")
    per_request = commands / total if target.redis_port is not None and total else None
    return Result(target.name, rps, _percentile(output, "50"), _percentile(output, "99"), errors, per_request, cpu_us)


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
    port = _free_port()
    process = _pinned([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", str(workdir)], LOAD_CORE)
    deadline = time.monotonic() + 10
    while _redis_commands(port, quiet=True) < 0:
        if time.monotonic() > deadline:
            raise SystemExit("bench: redis-server did not start")
        time.sleep(0.05)
    return RedisServer(process, port)


def _redis_commands(port: int | None, quiet: bool = False) -> int:
    """Round trips the gateways caused: EVALSHA calls (INFO commandstats also lists the commands
    a script runs inside Redis, which cost no round trip); -1 if unreachable."""
    if port is None:
        return 0
    import redis

    try:
        stats = redis.Redis(port=port, socket_timeout=2).info("commandstats")
    except redis.RedisError:
        if quiet:
            return -1
        raise
    return stats.get("cmdstat_evalsha", {}).get("calls", 0)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _median(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.requests_per_second)[len(results) // 2]


def _wrk(target: Target, duration: int, args: argparse.Namespace) -> str:
    script = ["-s", target.script[0]] if target.script else []
    command = [*_taskset(LOAD_CORE), "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s",
               "--latency", *script, f"http://127.0.0.1:{target.port}/api/v1/bench", *target.script[1:]]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _percentile(output: str, which: str) -> float:
    match = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _table(results: list[Result], args: argparse.Namespace) -> str:
    direct, nginx = results[0], results[1]
    by_name = {result.name: result for result in results}
    auth_off = by_name["fairgate, tokens sent, auth off"]
    auth_on = by_name[f"fairgate, HS256 auth ({TOKEN_USERS} users)"]
    pinning = f"server on core {SERVER_CORE}, wrk and upstream on core {LOAD_CORE}" if _taskset(0) else "unpinned"
    lines = [
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, median of {args.rounds} interleaved rounds, "
        f"one worker each, {os.cpu_count()} cores ({pinning}), upstream: nginx return 200",
        "",
        "| target | req/s | p50 ms | p99 ms | errors | server CPU us/req | EVALSHA/req | vs nginx proxy "
        "| vs direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {result.name} | {result.requests_per_second:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} "
            f"| {result.errors} | {result.cpu_us_per_request:.1f} "
            f"| {'' if result.redis_commands_per_request is None else f'{result.redis_commands_per_request:.2f}'} "
            f"| {result.requests_per_second / nginx.requests_per_second:.2f}x "
            f"| {result.requests_per_second / direct.requests_per_second:.2f}x |"
        )
    lines += [
        "",
        f"Authentication on / off, same requests: {auth_on.requests_per_second / auth_off.requests_per_second:.2f}x "
        f"req/s, {auth_on.cpu_us_per_request - auth_off.cpu_us_per_request:+.1f} us CPU per request.",
    ]
    for name in ("fairgate, auth + limits on memory", "fairgate, auth + limits on Redis"):
        if name in by_name:
            result = by_name[name]
            lines.append(
                f"{name.removeprefix('fairgate, auth + ')} / auth alone: "
                f"{result.requests_per_second / auth_on.requests_per_second:.2f}x req/s, "
                f"{result.cpu_us_per_request - auth_on.cpu_us_per_request:+.1f} us CPU per request."
            )
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


def _pinned(command: list[str], core: int) -> subprocess.Popen:
    return subprocess.Popen([*_taskset(core), *command], cwd=ROOT)


def _taskset(core: int) -> list[str]:
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(core)]


@dataclass
class Gateway:
    process: subprocess.Popen
    port: int


# Never rejects under the bench's load, so every request pays for a full decision.
BENCH_PLANS = """
limits: {default_plan: bench}
plans:
  bench:
    limits:
      - {name: sustained, kind: rate, rate: 100000/s, burst: 100000}
      - {name: daily, kind: quota, metric: requests, period: day, limit: 1000000000000}
"""


def _start_fairgate(config: Path, upstream_port: int, authenticated: bool, limits: bool = False,
                    state_url: str = "memory://") -> Gateway:
    port, admin_port = _free_port(), _free_port()
    plans = BENCH_PLANS + f"state: {{url: '{state_url}', timeout: 200ms}}\n" if limits else ""
    config.write_text(plans + f"""
server: {{listen: "127.0.0.1:{port}", access_log: false}}
admin: {{listen: "127.0.0.1:{admin_port}"}}
logging: {{level: warning}}
auth:
  issuers:
    - {{name: bench, issuer: "{TOKEN_ISSUER}", audiences: [bench], algorithms: [HS256], hmac_secret: "{TOKEN_SECRET}"}}
upstreams:
  bench: {{url: "http://127.0.0.1:{upstream_port}"}}
routes:
  - {{name: health, path_prefix: /healthz, upstream: bench, auth: none}}
  - {{name: api, path_prefix: /, upstream: bench, auth: {"required" if authenticated else "none"}}}
""")
    process = _pinned([sys.executable, "-m", "gateway", "run", "-c", str(config)], SERVER_CORE)
    return Gateway(process, port)


def _write_tokens(workdir: Path) -> Path:
    """HS256 tokens for TOKEN_USERS users spread over a few dozen customers, one per line."""
    import jwt

    now = int(time.time())
    lines = [
        jwt.encode({"iss": TOKEN_ISSUER, "aud": "bench", "sub": f"user-{n}@customer-{n % 40}.example",
                    "org_id": f"customer-{n % 40}", "sid": f"s-{n}", "iat": now, "exp": now + 3600},
                   TOKEN_SECRET, algorithm="HS256")
        for n in range(TOKEN_USERS)
    ]
    path = workdir / "tokens.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _find(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (path for path in (f"/usr/sbin/{tool}", f"/usr/local/sbin/{tool}") if os.access(path, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {url} did not come up within {timeout:.0f}s")
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
