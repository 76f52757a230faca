"""State store URLs: which backend a URL names, parsed in one place for the config, the CLI and
the store factory."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Backend(StrEnum):
    MEMORY = "memory"
    REDIS = "redis"
    REDIS_TLS = "rediss"
    CLUSTER = "redis+cluster"
    SENTINEL = "redis+sentinel"


@dataclass(frozen=True, slots=True)
class StateUrl:
    backend: Backend
    rest: str  # what follows "SCHEME://"

    @property
    def shared(self) -> bool:
        """Whether the state lives outside this process (so a fleet or several workers share it)."""
        return self.backend is not Backend.MEMORY


def parse_state_url(url: str) -> StateUrl:
    """The backend a state URL names; ValueError naming the accepted schemes otherwise."""
    scheme, separator, rest = url.partition("://")
    try:
        backend = Backend(scheme)
    except ValueError:
        backend = None
    if not separator or backend is None:
        raise ValueError(f"expected {', '.join(f'{b.value}://' for b in Backend)}, got {url!r}")
    return StateUrl(backend, rest)
