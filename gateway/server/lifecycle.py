"""A gateway process from start to drain: listeners, signals, reload, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.proxy.handler import ProxyHandler
from gateway.proxy.runtime import Runtime
from gateway.server.admin import ADMIN_TOKEN_ENV, build_admin_app
from gateway.server.listener import make_proxy_server
from gateway.server.reloader import ConfigTransform, RuntimeHolder

log = logging.getLogger("fairgate.server")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    config_path: str
    transform: ConfigTransform
    reuse_port: bool = False


async def serve(config: GatewayConfig, options: ServeOptions, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop`), then drain; returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    metrics = Metrics()
    holder = RuntimeHolder(options.config_path, Runtime.build(config), metrics, options.transform)
    state = {"ready": False, "draining": False}

    def readiness() -> str | None:
        if state["draining"]:
            return "draining"
        return None if state["ready"] else "starting"

    server = make_proxy_server(
        ProxyHandler(holder, metrics),
        max_line=config.server.max_header_line,
        keepalive_timeout=config.server.keepalive_timeout,
        access_log=config.server.access_log,
    )
    proxy_runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=config.server.drain_timeout)
    admin_app = build_admin_app(metrics, readiness, holder.reload, os.environ.get(ADMIN_TOKEN_ENV) or None)
    admin_runner = web.AppRunner(admin_app, handle_signals=False, access_log=None)
    await proxy_runner.setup()
    await admin_runner.setup()
    try:
        host, port = config.server.listen
        await web.TCPSite(proxy_runner, host, port, reuse_port=options.reuse_port or None).start()
        admin_host, admin_port = config.admin.listen
        await web.TCPSite(admin_runner, admin_host, admin_port, reuse_port=options.reuse_port or None).start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        await proxy_runner.cleanup()
        await admin_runner.cleanup()
        return 1

    def on_reload_signal() -> None:
        loop.create_task(holder.reload())

    loop.add_signal_handler(signal.SIGHUP, on_reload_signal)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    state["ready"] = True
    log.info(
        "fairgate listening",
        extra={"proxy": f"http://{host}:{port}", "admin": f"http://{admin_host}:{admin_port}", "pid": os.getpid()},
    )
    try:
        await stop.wait()
    finally:
        state["draining"] = True
        log.info("draining", extra={"grace_seconds": config.server.drain_timeout})
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        # Stops accepting, closes idle keep-alive connections, waits for in-flight requests.
        await proxy_runner.cleanup()
        await holder.current.close_pools_not_in(None)
        await admin_runner.cleanup()
        log.info("stopped")
    return 0
