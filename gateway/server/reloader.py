"""The current Runtime, and atomic reloads that keep the last good config on error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.metrics import Metrics
from gateway.proxy.runtime import GatewayState, Runtime
from gateway.server.assembly import Assembly

log = logging.getLogger("fairgate.reload")

ConfigTransform = Callable[[GatewayConfig], GatewayConfig]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    errors: tuple[str, ...] = ()


class RuntimeHolder:
    """Holds the one Runtime requests read; a reload swaps it whole."""

    def __init__(
        self,
        path: str | Path,
        runtime: Runtime,
        state: GatewayState,
        metrics: Metrics,
        transform: ConfigTransform = lambda c: c,
    ) -> None:
        self.path = str(path)
        self.current = runtime
        self.state = state
        self._metrics = metrics
        self._transform = transform
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadResult:
        async with self._lock:
            try:
                config = self._transform(load_config(self.path))
            except ConfigError as exc:
                return self._rejected(tuple(exc.lines()))
            previous = self.current
            if (config.server, config.admin, config.state, config.sighting_keys) != (
                    previous.config.server, previous.config.admin, previous.config.state,
                    previous.config.sighting_keys):
                # The sightings bound too (it follows detection.max_tracked): a table of 800k
                # keys re-spread over new shards would hold the loop for seconds.
                log.warning("server, admin and state settings (and the sightings bound) take effect only on restart")
            try:
                # Built in full before anything changes: the old Runtime and state settings stay
                # in force unless both of the new ones could be built.
                assembly = Assembly.build(config, self.state, previous)
            except OSError as exc:  # the audit file became unusable after the config was checked
                return self._rejected((f"{self.path}: enforcement.audit.path: cannot open {exc.filename}: "
                                       f"{exc.strerror}",))
            except Exception as exc:  # a config that skipped validation (a transform), never a crash
                return self._rejected((f"{self.path}: cannot apply: {type(exc).__name__}: {exc}",))
            successor = assembly.apply(self.state)
            successor.start()
            self.current = successor
            await previous.close_unused(successor)
            self._metrics.config_reloads.labels("success").inc()
            self._metrics.config_last_reload_success.set(1)
            log.info("config reloaded", extra={"path": self.path})
            return ReloadResult(True)

    def _rejected(self, errors: tuple[str, ...]) -> ReloadResult:
        self._metrics.config_reloads.labels("failure").inc()
        self._metrics.config_last_reload_success.set(0)
        log.error("config reload rejected; the previous config stays in force", extra={"errors": list(errors)})
        return ReloadResult(False, errors)
