"""Gateways under test: what the fixtures hand out, and `fairgate run` in a child process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.server.lifecycle import GatewayServer
from tests.support.configs import gateway_config
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.upstream_app import UpstreamState
from tests.support.waiting import block_until


@dataclass
class Upstream:
    url: str
    port: int
    state: UpstreamState


@dataclass
class RunningGateway:
    server: GatewayServer
    config_path: Path
    url: str
    admin_url: str


StartGateway = Callable[..., Awaitable[RunningGateway]]


class GatewayProcess:
    """`fairgate run` in a child process, for signals, exit codes and memory."""

    def __init__(self, config_path: Path, *extra_args: str, env: dict | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config_path), *extra_args],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,  # e.g. resource limits of the child
            start_new_session=True,  # its own process group: stop() reaches the workers of --workers too
        )

    def wait_ready(self, admin_url: str, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{admin_url}/readyz", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        block_until(ready, timeout, "gateway did not become ready")

    def output(self) -> str:
        if self.process.poll() is None:
            return ""
        return self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""

    def stop(self) -> None:
        """Kill the gateway and every process it started (a supervisor killed alone would
        leave its workers holding their ports after the test)."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(ProcessLookupError):  # no group of its own: nothing more to kill
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def write_process_config(tmp_path: Path, name: str, config: dict) -> tuple[Path, str, str]:
    """`config` as tmp_path/NAME.yaml for a child process, on ports of its own: (path, url, admin url)."""
    port, admin_port = free_port(), free_port()
    config = {**config, "server": {**config["server"], "listen": f"127.0.0.1:{port}"},
              "admin": {"listen": f"127.0.0.1:{admin_port}"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"


def write_config(tmp_path: Path, upstream_url: str, routes: list[dict] | None = None,
                 **server) -> tuple[Path, str, str]:
    """A minimal gateway in front of `upstream_url` as tmp_path/gateway.yaml, for a child process."""
    return write_process_config(tmp_path, "gateway", gateway_config(upstream_url, routes=routes, **server))
