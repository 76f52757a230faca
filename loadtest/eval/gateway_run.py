"""A real gateway for the evaluation: `python -m gateway.demo` and `fairgate run` as subprocesses
on the shipped config, with only the listen addresses and the upstream URL overridden (as
`make run` does), in a scratch directory so the audit trail and logs leave nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "gateway.yaml"
# The values `make run` uses; the harness mints tokens with the same secret.
ENV = {"FAIRGATE_ADMIN_TOKEN": "demo-admin-token",
       "FAIRGATE_DEMO_SECRET": "fairgate-demo-secret-for-make-run-only",
       "FAIRGATE_HASH_SALT": "fairgate-demo-salt-for-make-run-only"}


class HarnessError(RuntimeError):
    """The evaluation could not run (exit status 2), as opposed to the detectors failing it."""


@dataclass(frozen=True)
class RunningGateway:
    url: str
    admin_url: str
    admin_token: str
    upstream_url: str
    logs: Path


def free_port(ports: range | None) -> int:
    """A free loopback port, from `ports` when given (the caller's own range), else any."""
    candidates = list(ports) if ports else [0]
    random.SystemRandom().shuffle(candidates)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = probe.getsockname()[1]
            return found
    raise HarnessError(f"no free port in {ports}")


def _tail(logs: Path, lines: int = 15) -> str:
    try:
        return "\n".join(logs.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _executable(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


async def _wait_ready(url: str, processes: list[subprocess.Popen[bytes]], logs: Path, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while loop.time() < deadline:
            for process in processes:
                if process.poll() is not None:
                    raise HarnessError(f"{process.args!r} exited with {process.returncode}:\n{_tail(logs)}")
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)  # polling a server we started for its readiness, not a stand-in for sync
    raise HarnessError(f"{url} not ready within {timeout:.0f} s:\n{_tail(logs)}")


@contextlib.asynccontextmanager
async def running_gateway(config: Path = CONFIG, ports: range | None = None,
                          keep_logs: Path | None = None) -> AsyncIterator[RunningGateway]:
    """The demo upstream and a gateway in front of it, stopped (and their scratch dir removed) after."""
    upstream_port, port, admin_port = free_port(ports), free_port(ports), free_port(ports)
    while len({upstream_port, port, admin_port}) < 3:
        port, admin_port = free_port(ports), free_port(ports)
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    env = {**os.environ, **ENV, "FAIRGATE_UPSTREAM_URL": upstream_url, "FAIRGATE_STATE": "memory://"}
    with tempfile.TemporaryDirectory(prefix="fairgate-eval-") as scratch:
        logs = keep_logs or Path(scratch) / "gateway.log"
        processes: list[subprocess.Popen[bytes]] = []
        with open(logs, "ab") as log:
            try:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "gateway.demo", "--listen", f"127.0.0.1:{upstream_port}"],
                    cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT))
                processes.append(subprocess.Popen(
                    [_executable("fairgate"), "run", "-c", str(config), "--listen", f"127.0.0.1:{port}",
                     "--admin-listen", f"127.0.0.1:{admin_port}"],
                    cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT))
                admin_url = f"http://127.0.0.1:{admin_port}"
                await _wait_ready(f"{upstream_url}/healthz", processes, logs)
                await _wait_ready(f"{admin_url}/readyz", processes, logs)
                yield RunningGateway(f"http://127.0.0.1:{port}", admin_url, ENV["FAIRGATE_ADMIN_TOKEN"],
                                     upstream_url, logs)
            finally:
                for process in reversed(processes):
                    process.terminate()
                for process in reversed(processes):
                    try:
                        process.wait(timeout=40)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()


async def findings(gateway: RunningGateway) -> list[dict[str, Any]]:
    """Every finding the gateway recorded, from its admin API."""
    auth = {"Authorization": f"Bearer {gateway.admin_token}"}
    async with aiohttp.ClientSession() as session, \
            session.get(f"{gateway.admin_url}/admin/findings", headers=auth) as response:
        if response.status != 200:
            raise HarnessError(f"/admin/findings answered {response.status}")
        found: list[dict[str, Any]] = (await response.json())["findings"]
        return found
