"""Instructions per proxied request, counted by callgrind: steady on a loaded machine, where CPU
time per request is not.

The gateway runs under `valgrind --tool=callgrind --instr-atstart=no` in front of an nginx
`return 200` upstream. After a warm-up, collection is switched on for an idle period (the
background tasks' own rate, subtracted) and then for N requests over one keep-alive
connection. Prints k instructions per request for each scenario asked for.

    .venv/bin/python bench/callgrind_request.py --port-base 23100 [--scenario plain --scenario policy]
    .venv/bin/python bench/callgrind_request.py --port-base 23100 --scenario policy --customers 20000

With `--customers N` the policy scenario rotates over N customers' tokens (one user each, as
bench/run.py's many-customer targets), each sent once before the idle period over
`--warm-connections` connections so every token is warm when counting starts.

`--state-url redis://127.0.0.1:PORT/0` counts a gateway on Redis state instead (a Redis of your
own: the bench writes under its default key prefix), `--gateway-config` merges YAML over the
config (under valgrind a gateway is about 50x slower: give `state.timeout` room).

Set PYTHONPATH to another checkout to count its code with this venv (the editable install's
finder comes after sys.path).

On a loaded machine the idle subtraction fails (the background tasks' rate while busy under
valgrind is not their idle rate); `--no-background` counts the plain scenario with those tasks
stopped (bench/request_path_gateway.py), nothing to subtract.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import bench_config, find, merged_yaml, stop, upstream_conf, wait_http  # noqa: E402
from bench.tokens import write_tokens  # noqa: E402

PATHS = {"plain": "/open/bench", "policy": "/detect/bench"}


def send(port: int, path: str, count: int, tokens: list[str], connections: int = 1, start: int = 0) -> None:
    """`count` requests over `connections` keep-alive connections at once: with several, the
    gateway never waits for the client, so background tasks add less per request. Tokens are
    taken in rotation from `start`, each connection its own consecutive run of them."""
    if connections > 1:
        share = [count // connections + (n < count % connections) for n in range(connections)]
        starts = [start + sum(share[:n]) for n in range(connections)]
        with ThreadPoolExecutor(connections) as pool:
            list(pool.map(lambda n: send(port, path, share[n], tokens, 1, starts[n]), range(connections)))
        return
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    for n in range(start, start + count):
        headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"} if tokens else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"status {response.status} for {path}")
    connection.close()


def events(outfile: str) -> dict[str, int]:
    """The dump's totals by event: Ir (instructions); with --cache-sim also D1mr, DLmr, ... (misses)."""
    text = Path(outfile).read_text()
    names = re.search(r"^events:\s+(.+)$", text, re.M)
    match = re.search(r"^summary:\s+(.+)$", text, re.M) or re.search(r"^totals:\s+(.+)$", text, re.M)
    assert names and match, outfile
    return dict(zip(names.group(1).split(), (int(value) for value in match.group(1).split()), strict=False))


def dump(pid: int, workdir: Path, label: str) -> dict[str, int]:
    before = set(glob.glob(str(workdir / "callgrind.out.*")))
    subprocess.run(["callgrind_control", "-d", label, str(pid)], check=True, capture_output=True)
    for _ in range(600):
        new = set(glob.glob(str(workdir / "callgrind.out.*"))) - before
        if new:
            time.sleep(0.5)  # let the file be written whole
            return events(new.pop())
        time.sleep(0.1)
    raise SystemExit("no callgrind dump appeared")


def measure(args: argparse.Namespace, workdir: Path, scenario: str, tokens: list[str]) -> dict[str, float]:
    """Per request, in thousands, by event (Ir alone unless --cache-sim)."""
    port, admin_port, upstream_port = args.port_base, args.port_base + 1, args.port_base + 2
    config = workdir / "gateway.yaml"
    text = bench_config(port, admin_port, upstream_port, args.state_url)
    if args.gateway_config is not None:
        text = merged_yaml(text, args.gateway_config.read_text())
    config.write_text(text)
    prefix = workdir / "upstream"
    if not prefix.exists():
        (prefix / "tmp").mkdir(parents=True)
        (prefix / "nginx.conf").write_text(upstream_conf(upstream_port))
    upstream = subprocess.Popen([find("nginx") or "nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
    gateway = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={workdir}/callgrind.out.%p",
         *(["--cache-sim=yes"] if args.cache_sim else []),
         sys.executable, *([str(ROOT / "bench" / "request_path_gateway.py")] if args.no_background
                           else ["-m", "gateway"]), "run", "-c", str(config)],
        cwd=workdir, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/open/bench", timeout=600)
        path = PATHS[scenario]
        if tokens and args.customers:
            # Every customer once (warm), then the usual warm-up; the counted requests go on
            # round the rotation from where it stopped, as wrk's rotate.lua does.
            started = time.monotonic()
            send(port, path, len(tokens), tokens, args.warm_connections)
            print(f"{scenario}: {len(tokens)} tokens warmed in {time.monotonic() - started:.0f} s", flush=True)
        send(port, path, args.warmup, tokens)
        rotation = args.warmup  # where the counted requests take up the tokens
        time.sleep(args.settle)  # the warm-up's deferred work (detection batches) is not the idle rate
        subprocess.run(["callgrind_control", "-i", "on", str(gateway.pid)], check=True, capture_output=True)
        dump(gateway.pid, workdir, "reset")
        started = time.monotonic()
        time.sleep(args.idle)
        idle = dump(gateway.pid, workdir, "idle")
        idle_seconds = time.monotonic() - started
        started = time.monotonic()
        send(port, path, args.requests, tokens, args.connections, rotation)
        time.sleep(args.drain)  # work the requests left for background batches is theirs
        busy = dump(gateway.pid, workdir, "busy")
        elapsed = time.monotonic() - started
        print(f"{scenario}: raw {busy['Ir'] / args.requests / 1000:.1f} k/request over {elapsed:.0f} s, "
              f"idle {idle['Ir'] / idle_seconds / 1e6:.2f} M/s subtracted", flush=True)
        return {event: (count - idle.get(event, 0) / idle_seconds * elapsed) / args.requests / 1000
                for event, count in busy.items()}
    finally:
        stop(gateway)
        stop(upstream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-base", type=int, required=True, help="three loopback ports from here")
    parser.add_argument("--scenario", action="append", choices=sorted(PATHS), help="repeatable; default both")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=0.0, help="seconds after the warm-up, not counted")
    parser.add_argument("--drain", type=float, default=0.0, help="seconds after the requests, counted with them")
    parser.add_argument("--connections", type=int, default=1, help="keep-alive connections at once")
    parser.add_argument("--no-background", action="store_true",
                        help="stop the gateway's background tasks once it listens (bench/request_path_gateway.py): "
                             "the request path's own count, steady on a loaded machine; plain scenario only")
    parser.add_argument("--state-url", default="memory://", help="the gateway's state.url (default memory://)")
    parser.add_argument("--gateway-config", type=Path, metavar="FILE", help="YAML merged over the gateway's config")
    parser.add_argument("--customers", type=int, default=0,
                        help="policy scenario: N customers' tokens in rotation, each warm (default: 400 users of 40)")
    parser.add_argument("--warm-connections", type=int, default=8, help="connections of the --customers warm pass")
    parser.add_argument("--cache-sim", action="store_true",
                        help="also simulate the caches: D1/LL misses per request (reads mr, writes mw)")
    parser.add_argument("--keep", type=Path, help="write the callgrind files here (for callgrind_annotate)")
    args = parser.parse_args()
    if args.no_background and args.scenario != ["plain"]:
        parser.error("--no-background counts the plain scenario only (the policy one leaves work for background tasks)")
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        workdir = Path(tmp) if args.keep is None else args.keep
        workdir.mkdir(parents=True, exist_ok=True)
        written = (write_tokens(workdir / "tokens.txt", "many", args.customers, args.customers) if args.customers
                   else write_tokens(workdir / "tokens.txt", "customer"))
        tokens = [line for line in written.read_text().splitlines() if line]
        for scenario in args.scenario or ["plain", "policy"]:
            used = tokens if scenario == "policy" else []
            per_request = measure(args, workdir, scenario, used)
            print(f"{scenario}: {per_request.pop('Ir'):.1f} k instructions/request"
                  + "".join(f", {event} {value:.2f} k" for event, value in per_request.items()), flush=True)


if __name__ == "__main__":
    main()
