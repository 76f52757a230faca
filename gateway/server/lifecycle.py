"""A gateway process from start to drain: listeners, signals, reload, graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.proxy.handler import ProxyHandler
from gateway.server.admin import ADMIN_TOKEN_ENV, build_admin_app
from gateway.server.assembly import Assembly, assemble_state
from gateway.server.garbage import GenerationalFreeze, PauseTimer, tune_collector
from gateway.server.holds import start_from_env as find_holds
from gateway.server.listener import make_proxy_server
from gateway.server.loop_lag import probe_loop_lag
from gateway.server.reloader import ConfigTransform, ReloadResult, RuntimeHolder
from gateway.server.workers import announce_ready
from gateway.state.factory import open_store
from gateway.state.tables import Sweeper, Swept

log = logging.getLogger("fairgate.server")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    config_path: str
    transform: ConfigTransform = lambda config: config
    reuse_port: bool = False
    admin_token: str | None = None
    clock: Clock = SYSTEM_CLOCK
    # How delay-mode limits hold a request; tests record instead of waiting.
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    audit_suffix: str = ""  # added to the audit file's name (workers each write their own)


class GatewayServer:
    """The proxy and admin listeners of one process, started and drained together."""

    def __init__(self, config: GatewayConfig, options: ServeOptions) -> None:
        self.config = config
        self.metrics = Metrics()
        self.state = assemble_state(open_store(config, options.clock, self.metrics), self.metrics,
                                    options.clock, options.audit_suffix)
        self.metrics.watch_detection(self.state.detection)
        self.metrics.watch_token_cache(self.state.token_cache_counts)
        self.metrics.registry.register(self.state.limit_stats)
        self.runtimes = RuntimeHolder(
            options.config_path, Assembly.build(config, self.state).apply(self.state), self.state, self.metrics,
            options.transform,
        )
        self.metrics.watch_upstreams(self.runtimes)
        self._watch_tables(options.clock)
        self.sweeper = Sweeper(self.state.tables, observe=self.metrics.batch_seconds.labels("table_sweep").observe)
        self._options = options
        self._ready = False
        self._draining = False
        self._background: list[asyncio.Task[None]] = []
        self._gc_pauses = PauseTimer(self.metrics.gc_pauses)
        server = make_proxy_server(
            ProxyHandler(self.runtimes, self.metrics, sleep=options.sleep),
            max_line=config.server.max_header_line,
            keepalive_timeout=config.server.keepalive_timeout,
            header_read_timeout=config.server.header_read_timeout,
            access_log=config.server.access_log,
        )
        self._proxy = web.ServerRunner(server, handle_signals=False, shutdown_timeout=config.server.drain_timeout)
        admin_app = build_admin_app(self.metrics, self._readiness, self.runtimes, options.admin_token)
        self._admin = web.AppRunner(admin_app, handle_signals=False, access_log=None)

    def _watch_tables(self, clock: Clock) -> None:
        """The tables a reload replaces are reached through the current Runtime."""
        tables, runtimes = self.state.tables, self.runtimes

        def templates() -> Swept | None:
            limiter = runtimes.current.limiter
            return limiter.templates if limiter is not None else None

        tables.follow("token_cache", lambda: runtimes.current.authenticator.cache, clock.time)
        tables.follow("limit_templates", templates, clock.time)
        tables.follow("memo_trusted_peers", lambda: runtimes.current.client_addresses.verdicts, clock.time)
        self.metrics.watch_tables(tables)

    def _readiness(self) -> str | None:
        if self._draining:
            return "draining"
        if not self._ready:
            return "starting"
        return self.runtimes.current.not_ready_reason()

    @property
    def proxy_address(self) -> tuple[str, int]:
        return _bound_address(self._proxy)

    @property
    def admin_address(self) -> tuple[str, int]:
        return _bound_address(self._admin)

    async def start(self) -> None:
        """Bind both listeners; raises OSError if an address is taken."""
        self.runtimes.current.start()
        await self._proxy.setup()
        await self._admin.setup()
        reuse_port = self._options.reuse_port or None
        try:
            host, port = self.config.server.listen
            await web.TCPSite(self._proxy, host, port, reuse_port=reuse_port).start()
            admin_host, admin_port = self.config.admin.listen
            await web.TCPSite(self._admin, admin_host, admin_port, reuse_port=reuse_port).start()
        except BaseException:
            await self._proxy.cleanup()
            await self._admin.cleanup()
            raise
        self._ready = True
        self._gc_pauses.install()
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(task) for task in (
            self.state.fleet.run(), self.state.detection.run(),
            self.state.enforcement.run(), self.state.audit.run(), self.state.usage.run(),
            self.sweeper.run(), probe_loop_lag(self.metrics.loop_lag))]
        host, port = self.proxy_address
        admin_host, admin_port = self.admin_address
        log.info("fairgate listening", extra={
            "proxy": f"http://{host}:{port}", "admin": f"http://{admin_host}:{admin_port}", "pid": os.getpid(),
        })

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, close."""
        self._draining = True
        for task in self._background:
            task.cancel()
        log.info("draining", extra={"grace_seconds": self.config.server.drain_timeout})
        # aiohttp closes idle keep-alive connections and waits for running handlers.
        await self._proxy.cleanup()
        # Findings of the last requests are not lost; a hung worker does not hold the stop for long.
        self.state.detection.finishing(max(1.0, self.config.server.drain_timeout))
        await self.state.detection.drain()
        await self.state.detection.close()  # its worker process, if any, answered the last batch
        await self.state.enforcement.drain()
        await self.state.fleet.drain()  # what the last decisions share
        runtime = self.runtimes.current
        if runtime.limiter is not None:
            await runtime.limiter.drain()
        await runtime.close_unused(None)
        await self.state.usage.flush()
        await self.state.audit.drain()  # after everything that records events
        await self.state.alerts.close(grace=min(5.0, self.state.alerts.settings.timeout))
        await self.state.store.close()
        await self._admin.cleanup()
        self._gc_pauses.remove()
        log.info("stopped")


def _bound_address(runner: web.BaseRunner) -> tuple[str, int]:
    host: str
    port: int
    # aiohttp types addresses as Any: each is a socket's getsockname(), (host, port[, flowinfo, scope_id]).
    host, port = runner.addresses[0][:2]
    return host, port


async def serve(config: GatewayConfig, options: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT, then drain; SIGHUP reloads. Returns the exit code."""
    loop = asyncio.get_running_loop()
    try:
        gateway = GatewayServer(config, options)
    except OSError as exc:  # the audit file became unusable after the config was checked
        log.error("cannot start: enforcement.audit.path: cannot open %s: %s", exc.filename, exc.strerror)
        return 1
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    # The process's own, not GatewayServer's: tests run several gateways in one interpreter.
    frozen = tune_collector(config.server.gc)
    log.info("garbage collector tuned", extra={"frozen_objects": frozen, "thresholds": list(gc.get_threshold())})
    freezing = _start_freezing(config, gateway.metrics, loop)
    holds = find_holds(loop)  # bench/stalls.py only: None unless its env var is set
    announce_ready()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[ReloadResult]] = set()

    def on_hangup() -> None:
        task = loop.create_task(gateway.runtimes.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await stop.wait()
    finally:
        if freezing is not None:
            freezing.cancel()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await gateway.drain()
        if holds is not None:
            holds.stop()
    return 0


def admin_token_from_env() -> str | None:
    return os.environ.get(ADMIN_TOKEN_ENV) or None


def _start_freezing(config: GatewayConfig, metrics: Metrics,
                    loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
    """The process's generational freeze and full collections (server.gc), if on; like the tuning, once per process."""
    settings = config.server.gc
    if settings.freeze_interval is None and settings.full_collection_interval is None:
        return None
    freezing = GenerationalFreeze(
        settings.freeze_interval, settings.full_collection_interval,
        observe_freeze=None if settings.freeze_interval is None else metrics.batch_seconds.labels("gc_freeze").observe,
        observe_full=None if settings.full_collection_interval is None
        else metrics.batch_seconds.labels("gc_full_collection").observe)
    return loop.create_task(freezing.run())
