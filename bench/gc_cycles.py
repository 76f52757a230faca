"""Cyclic garbage per request kind: the real gateway (the bench's every-policy config, memory
store, enforcement on) built in this process, a raw upstream and a client each in a child
process (so every object the collector finds here is the gateway's), one kind of request at a
time.

    python bench/gc_cycles.py --requests 500
    python bench/gc_cycles.py --requests 200 --kinds down,gone --trace --examples 2

Per kind: `gc.collect()`, then `gc.DEBUG_SAVEALL` while the client sends N requests and the
background batches settle, then one more collection; every object the collector found
unreachable is kept in `gc.garbage` and counted by type and, with --trace, by the line of code
that allocated it (tracemalloc, innermost frame under gateway/ first). "idle" sends nothing for
a second: what the background tasks alone leave. Why it matters: under the
generational freeze (gateway/server/garbage.py) an object frozen while in use that later
becomes cyclic garbage is never freed, so every cycle a request makes is a leak at production
rates.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import http.client
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.processes import bench_config, bench_port, merged_yaml  # noqa: E402
from bench.tokens import TOKEN_ISSUER, TOKEN_SECRET  # noqa: E402

KINDS = ("idle", "ok", "fresh", "portal", "stream", "limited", "unauth", "error", "down", "timeout", "reset",
         "gone")
JSON_BODY = b'{"id": 42, "status": "open", "title": "A ticket of typical size"}'
HTML_BODY = (b"<!doctype html><html><head><title>Ticket</title></head><body><p>A ticket of typical size</p>"
             b"</body></html>")
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
           "Accept": "text/html", "Accept-Language": "en", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
_PROOF_LINK = re.compile(rb'href="([^"]+)"')


# -- the upstream (child process): a raw HTTP/1.1 server, no framework of its own to collect --

class RawUpstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1]
            self.answer(path)

    def answer(self, path: bytes) -> None:
        assert self.transport is not None
        if path.startswith(b"/slow"):
            return  # never answers: the gateway's read timeout (504) closes the connection
        if path.startswith(b"/reset"):
            self.transport.close()
            return
        if path.startswith(b"/big"):  # 4 MB, chunked: the client leaves after its first bytes
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
            for _ in range(64):
                self.transport.write(chunk)
            self.transport.write(b"0\r\n\r\n")
            return
        status, kind, body = b"200 OK", b"application/json", JSON_BODY
        if path.startswith(b"/portal/"):
            kind, body = b"text/html; charset=utf-8", HTML_BODY
        elif path.startswith(b"/fail"):
            status = b"500 Internal Server Error"
        elif path.startswith(b"/stream"):  # past the gateway's 64 KiB buffer: the streaming path
            body = b"y" * 100_000
        self.transport.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, kind, len(body), body))


def serve_upstream(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(RawUpstream, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the client (child process) ---------------------------------------------------------------

def token(customer: str, user: str) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"iss": TOKEN_ISSUER, "aud": "bench", "sub": user, "org_id": customer, "sid": f"s-{user}",
                       "iat": now, "exp": now + 3600}, TOKEN_SECRET, algorithm="HS256")


def send(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def run_client(kind: str, port: int, count: int) -> None:
    if kind == "idle":  # nothing sent for a second: the background tasks' own garbage
        time.sleep(1)
        print("{}")
        return
    tokens = [token(f"cyc-{n}", f"user-{n}@cyc-{n}") for n in range(min(count, 200) or 1)]
    tight = token("tight-0", "user@tight-0")
    statuses: collections.Counter[int] = collections.Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for n in range(count):
        auth = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
        if kind == "ok":
            status, _ = send(conn, f"/detect/items/{n}", auth)
        elif kind == "fresh":  # a new connection for each request
            status, _ = send(conn, f"/detect/items/{n}", {**auth, "Connection": "close"})
            conn.close()
        elif kind == "portal":  # an HTML page with a proof link, and the browser fetching it
            status, body = send(conn, f"/portal/page{n}", {**auth, **BROWSER})
            link = _PROOF_LINK.search(body)
            if link is not None:
                statuses[send(conn, link.group(1).decode(), {**auth, **BROWSER, "Accept": "text/css",
                                                               "Sec-Fetch-Dest": "style"})[0]] += 1
        elif kind == "stream":
            status, _ = send(conn, f"/stream/{n}", auth)
        elif kind == "limited":
            status, _ = send(conn, f"/detect/items/{n}", {"Authorization": f"Bearer {tight}"})
        elif kind == "unauth":
            status, _ = send(conn, f"/detect/items/{n}",
                             {} if n % 2 else {"Authorization": f"Bearer {tokens[0]}x"})
        elif kind == "error":
            status, _ = send(conn, f"/fail/{n}", auth)
        elif kind == "down":
            status, _ = send(conn, f"/down/{n}", auth)
        elif kind == "timeout":
            status, _ = send(conn, f"/slow/{n}", auth)
        elif kind == "reset":
            status, _ = send(conn, f"/reset/{n}", auth)
        elif kind == "gone":  # the client leaves after the head and a little of the body
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(f"GET /big/{n} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth['Authorization']}"
                            f"\r\n\r\n".encode())
                first = raw.recv(4096)
                status = int(first.split(b" ", 2)[1]) if first.startswith(b"HTTP/1.1 ") else 0
        else:
            raise SystemExit(f"unknown kind {kind}")
        statuses[status] += 1
    print(json.dumps({str(status): seen for status, seen in sorted(statuses.items())}))


# -- the gateway (this process) ---------------------------------------------------------------

def gateway_config(port: int, admin_port: int, upstream_port: int, down_port: int, work: Path,
                   access_log: bool) -> str:
    extra = {
        "server": {"listen": f"127.0.0.1:{port}", "access_log": access_log},
        "upstreams": {"bench": {"url": f"http://127.0.0.1:{upstream_port}", "read_timeout": "300ms"},
                      "down": {"url": f"http://127.0.0.1:{down_port}", "connect_timeout": "300ms"}},
        "plans": {"tight": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/min", "burst": 1}]}},
        "customers": {"tight-0": {"plan": "tight"}},
        # The unauth kind's failures would otherwise block the client's address for the kinds after it.
        "auth": {"failed_logins": {"max_failures": 1_000_000}},
        "enforcement": {"mode": "enforce", "audit": {"path": str(work / "audit.jsonl")}},
        "detection": {"scraping": {"actions": {"api": "flag", "portal": "flag"}}},
        "routes": [
            {"name": "health", "path_prefix": "/healthz", "upstream": "bench", "auth": "none", "detect": False},
            {"name": "portal", "path_prefix": "/portal/", "upstream": "bench", "auth": "optional",
             "class": "portal"},
            {"name": "down", "path_prefix": "/down/", "upstream": "down"},
            {"name": "detect", "path_prefix": "/", "upstream": "bench"},
        ],
    }
    return merged_yaml(bench_config(port, admin_port, upstream_port, "memory://"), json.dumps(extra))


def site_of(obj: object) -> str:
    """The line that allocated `obj`: the innermost frame in gateway/, else the innermost."""
    trace = tracemalloc.get_object_traceback(obj)
    if trace is None:
        return "?"
    frames = list(trace)  # most recent last
    ours = [frame for frame in frames if "/gateway/" in frame.filename]
    frame = (ours or frames)[-1]
    tail = frames[-1]
    where = f"{_short(frame.filename)}:{frame.lineno}"
    return where if frame is tail else f"{where} -> {_short(tail.filename)}:{tail.lineno}"


def _short(filename: str) -> str:
    for marker in ("/gateway/", "/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename[filename.index(marker) + 1:]
    return filename


def type_name(obj: object) -> str:
    kind = type(obj)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(obj, type(sys._getframe())):
        name += f"({obj.f_code.co_name})"
    elif hasattr(obj, "__qualname__") and callable(obj) and not isinstance(obj, type):
        name += f"({getattr(obj, '__qualname__', '?')})"
    return name


def census(garbage: list[object], trace: bool, examples: int) -> dict[str, Any]:
    by_type = collections.Counter(type_name(obj) for obj in garbage)
    out: dict[str, Any] = {"objects": len(garbage), "by_type": dict(by_type.most_common(25))}
    if trace:
        out["by_site"] = dict(collections.Counter(site_of(obj) for obj in garbage).most_common(25))
    if examples:
        inside = {id(obj) for obj in garbage}
        shown: list[str] = []
        for name, _ in by_type.most_common(examples):
            obj = next(o for o in garbage if type_name(o) == name)
            referents = [type_name(r) for r in gc.get_referents(obj) if id(r) in inside]
            referrers = [type_name(r) for r in gc.get_referrers(obj) if id(r) in inside]
            shown.append(f"{name}: refers to {referents[:8]}; referred by {referrers[:8]}")
        out["examples"] = shown
    return out


async def settle(server: Any) -> None:
    """Let the background batches of the requests run (detection, judging, audit, usage)."""
    await asyncio.sleep(0.3)
    await server.state.detection.drain()
    await server.state.enforcement.drain()
    await server.state.usage.flush()
    await asyncio.sleep(0.3)


async def run_kind(server: Any, port: int, kind: str, count: int, trace: bool, examples: int) -> dict[str, Any]:
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        started = time.monotonic()
        # Popen and polling, not asyncio's subprocess machinery: its transports are not what is measured.
        client = subprocess.Popen([sys.executable, __file__, "--client", kind, str(port), str(count)],
                                  stdout=subprocess.PIPE, text=True)
        while client.poll() is None:
            await asyncio.sleep(0.02)
        statuses = json.loads(client.stdout.read() if client.stdout else "{}")
        await settle(server)
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    report = {"kind": kind, "requests": count if kind != "idle" else 0, "statuses": statuses,
              "seconds": round(time.monotonic() - started, 1),
              "per_1000": round(len(garbage) * 1000 / count, 1) if count and kind != "idle" else None,
              **census(garbage, trace, examples)}
    garbage.clear()
    return report


async def run_gateway(args: argparse.Namespace) -> list[dict[str, Any]]:
    from gateway.config import load_config
    from gateway.server.lifecycle import GatewayServer, ServeOptions

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fairgate-gccycles-") as tmp:
        work = Path(tmp)
        upstream_port, down_port = bench_port(), bench_port()  # nothing ever listens on down_port
        upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(upstream_port)])
        try:
            port, admin_port = bench_port(), bench_port()
            path = work / "gateway.yaml"
            path.write_text(gateway_config(port, admin_port, upstream_port, down_port, work, args.access_log))
            if args.access_log:
                import logging

                access = logging.getLogger("fairgate.access")
                access.addHandler(logging.FileHandler(work / "access.log"))
                access.propagate = False
            server = GatewayServer(load_config(path), ServeOptions(str(path), admin_token="gc-cycles-admin"))
            await server.start()
            try:
                await _until_listening(upstream_port)
                await run_kind(server, port, "ok", 20, False, 0)  # warm-up: first sights, pools, imports
                for round_ in range(args.rounds):
                    for kind in args.kinds:
                        row = {"round": round_, **await run_kind(server, port, kind, args.requests, args.trace,
                                                                  args.examples)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            finally:
                await server.drain()
        finally:
            upstream.terminate()
            upstream.wait(10)
    return rows


async def _until_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the upstream did not start") from None
            await asyncio.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="requests per kind")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--trace", action="store_true", help="tracemalloc: where each garbage object was made")
    parser.add_argument("--examples", type=int, default=0, help="show the in-garbage referents of the N top types")
    parser.add_argument("--access-log", action="store_true", help="server.access_log on (to a file)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the gateway's event loop (default: uvloop, as `fairgate run`)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, metavar=("KIND", "PORT", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    if args.client:
        kind, port, count = args.client
        run_client(kind, int(port), int(count))
        return 0
    args.kinds = [kind for kind in args.kinds.split(",") if kind]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if args.trace:
        tracemalloc.start(30)
    loop_factory = None
    if args.loop == "uvloop":  # what `fairgate run` uses when it is installed (gateway/cli.py)
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        rows = runner.run(run_gateway(args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
