"""Open the state store a config (or `--state` / FAIRGATE_STATE) names."""

from __future__ import annotations

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.limits import StateSettings
from gateway.state.memory import MemoryStore
from gateway.state.store import StateStore


def open_store(settings: StateSettings, clock: Clock = SYSTEM_CLOCK) -> StateStore:
    if settings.url.startswith("memory://"):
        return MemoryStore(settings.max_memory_keys)
    from gateway.state.redis_store import RedisStore

    return RedisStore.from_settings(settings, clock)
