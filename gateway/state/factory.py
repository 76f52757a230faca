"""Open the state store a config (or `--state` / FAIRGATE_STATE) names."""

from __future__ import annotations

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import GatewayConfig
from gateway.config.state_url import Backend
from gateway.metrics import Metrics
from gateway.state.memory import MemoryStore
from gateway.state.store import StateStore


def open_store(config: GatewayConfig, clock: Clock = SYSTEM_CLOCK, metrics: Metrics | None = None) -> StateStore:
    settings = config.state
    if settings.parsed_url.backend is Backend.MEMORY:
        return MemoryStore(settings.max_memory_keys, settings.idle_ttl, config.sighting_keys)
    from gateway.state.redis_guard import StoreMetrics
    from gateway.state.redis_store import RedisStore

    store_metrics = None
    if metrics is not None:
        store_metrics = StoreMetrics(metrics.state_latency, metrics.state_errors, metrics.state_circuit,
                                     metrics.state_fallbacks)
    return RedisStore.from_settings(settings, clock, store_metrics)
