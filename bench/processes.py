"""The processes a bench run starts: nginx (upstream and reference proxy), Redis, fairgate
(one process or `--workers N`), each pinned to a core when taskset is there, and what the
bench reads of them (CPU time, RSS, child processes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.tokens import TOKEN_CUSTOMERS, TOKEN_ISSUER, TOKEN_SECRET
from tests.support.ports import CHILD_PORTS, REDIS_PORTS, free_port

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE, LOAD_CORE = 0, 1
UPSTREAM_BODY = '{"id": 42, "status": "open", "title": "A ticket of typical size"}'


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int


def find(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (path for path in (f"/usr/sbin/{tool}", f"/usr/local/sbin/{tool}") if os.access(path, os.X_OK)), None
    )


def taskset(core: int | None) -> list[str]:
    if core is None or (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(core)]


def pinned(command: list[str], core: int | None, quiet: bool = False, tree: Path = ROOT) -> subprocess.Popen[bytes]:
    """`tree`: the source tree the command runs in (`python -m gateway` imports that tree's code)."""
    output = subprocess.DEVNULL if quiet else None
    return subprocess.Popen([*taskset(core), *command], cwd=tree, stdout=output)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def pin_detection_workers(gateway_pid: int, core: int | None, timeout: float = 10.0, nice: int = 0) -> list[int]:
    """The gateway's detection workers (`detection.worker`), pinned to `core` if one is given and
    at `nice`; waits for them when a core is given (a gateway starts its worker just after it listens)."""
    deadline = time.monotonic() + timeout
    found = children(gateway_pid)
    while core is not None and not found and time.monotonic() < deadline:
        time.sleep(0.05)
        found = children(gateway_pid)
    if core is not None:
        if not found:
            raise SystemExit("--detection-worker-core: the gateway started no detection worker "
                             "(set detection.worker: true in --gateway-config)")
        for child in found:
            os.sched_setaffinity(child, {core})
            if nice:
                os.setpriority(os.PRIO_PROCESS, child, nice)
    return found


def bench_port(redis: bool = False) -> int:
    """A free loopback port; BENCH_PORTS=LOW-HIGH keeps a run inside a range (a shared machine)."""
    low_high = os.environ.get("BENCH_PORTS")
    if low_high:
        low, high = (int(part) for part in low_high.split("-"))
        return free_port(range(low, high + 1))
    return free_port(REDIS_PORTS if redis else CHILD_PORTS)


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {url} did not come up within {timeout:.0f}s") from None
            time.sleep(0.1)


def upstream_conf(port: int) -> str:
    return _nginx_conf(f"""
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{UPSTREAM_BODY}'; }}
    """, "")


def proxy_conf(port: int, upstream_port: int) -> str:
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


def start_nginx(prefix: Path, conf: str, core: int) -> subprocess.Popen[bytes]:
    (prefix / "tmp").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(conf)
    # master_process off: the one nginx process is the worker, so pinning it pins the work.
    return pinned([find("nginx") or "nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], core)


def start_redis(workdir: Path) -> RedisServer | None:
    from bench.redis_counts import redis_commands

    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(server, os.X_OK):
        print("bench: redis-server not found; skipping the Redis runs (apt-get install -y redis-server)",
              file=sys.stderr)
        return None
    port = bench_port(redis=True)
    process = pinned([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", str(workdir)], LOAD_CORE, quiet=True)
    deadline = time.monotonic() + 10
    while redis_commands(port, quiet=True)[0] < 0:
        if time.monotonic() > deadline:
            raise SystemExit("bench: redis-server did not start")
        time.sleep(0.05)
    return RedisServer(process, port)


# Customers "customer-N" get the bench plan, whose limits never reject under this load, so every
# request pays for a whole decision; customers "free-N" are on a plan without limits. The shipped
# plans (1 call/s) would answer most of the bench's requests with 429 instead of proxying them.
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


def start_fairgate(config: Path, upstream_port: int, state_url: str, core: int | None = SERVER_CORE,
                   workers: int = 1, extra: Path | None = None, tree: Path = ROOT,
                   module: str = "gateway") -> Gateway:
    """`core=None` leaves the process (or the workers) to the scheduler; `extra` is YAML merged
    over the bench's config (e.g. short idle TTLs, so the idle RSS is read after they pass);
    `tree` the source tree whose gateway runs (an A/B of two checkouts in one run); `module` what
    `python -m` runs (a bench variant of the gateway, e.g. bench.detection_worker_gateway)."""
    port, admin_port = bench_port(), bench_port()
    text = bench_config(port, admin_port, upstream_port, state_url)
    config.write_text(text if extra is None else merged_yaml(text, extra.read_text()))
    process = pinned([sys.executable, "-m", module, "run", "-c", str(config), "--workers", str(workers)], core,
                     tree=tree)
    return Gateway(process, port, admin_port)


def bench_config(port: int, admin_port: int, upstream_port: int, state_url: str) -> str:
    """The bench's gateway config as YAML: every policy on, in front of `upstream_port`."""
    customers = "\n".join(f"  free-{n}: {{plan: unlimited}}" for n in range(TOKEN_CUSTOMERS))
    return BENCH_LIMITS.format(customers=customers, state_url=state_url) + f"""
server: {{listen: "127.0.0.1:{port}", access_log: false}}
admin: {{listen: "127.0.0.1:{admin_port}"}}
logging: {{level: warning}}
auth:
  issuers:
    - {{name: bench, issuer: "{TOKEN_ISSUER}", audiences: [bench], algorithms: [HS256], hmac_secret: "{TOKEN_SECRET}"}}
upstreams:
  bench: {{url: "http://127.0.0.1:{upstream_port}"}}
detection:
  hash_salt: bench-salt-of-16-bytes
  sharing: {{action: flag}}
  scraping: {{actions: {{api: flag}}}}
  seats: {{}}
routes:
  - {{name: health, path_prefix: /healthz, upstream: bench, auth: none, detect: false}}
  - {{name: open, path_prefix: /open/, upstream: bench, auth: none, detect: false}}
  - {{name: detect, path_prefix: /detect/, upstream: bench}}
  - {{name: api, path_prefix: /, upstream: bench, detect: false}}
"""


def merged_yaml(base: str, extra: str) -> str:
    """`extra`'s mappings merged key by key into `base`'s; any other value replaces."""
    import yaml

    def merge(into: dict[str, object], over: dict[str, object]) -> dict[str, object]:
        for key, value in over.items():
            current = into.get(key)
            into[key] = merge(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
        return into

    return yaml.safe_dump(merge(yaml.safe_load(base), yaml.safe_load(extra) or {}), sort_keys=False)
