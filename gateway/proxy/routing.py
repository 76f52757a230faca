"""Route matching: exact host first, then the longest path prefix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Router(Generic[T]):
    """Maps (host, path) to a target; built once per config."""

    __slots__ = ("_by_host", "_any_host")

    def __init__(self, entries: Sequence[tuple[str | None, str, T]]) -> None:
        by_host: dict[str, list[tuple[str, T]]] = {}
        any_host: list[tuple[str, T]] = []
        for host, prefix, target in entries:
            (by_host.setdefault(host.lower(), []) if host else any_host).append((prefix, target))
        self._by_host = {host: _longest_first(items) for host, items in by_host.items()}
        self._any_host = _longest_first(any_host)

    @property
    def by_host(self) -> bool:
        """Whether any route names a host (else `match` never reads it)."""
        return bool(self._by_host)

    def match(self, host: str | None, path: str) -> T | None:
        if self._by_host and host:
            candidates = self._by_host.get(_strip_port(host).lower())
            if candidates:
                for prefix, target in candidates:
                    if path.startswith(prefix):
                        return target
        for prefix, target in self._any_host:
            if path.startswith(prefix):
                return target
        return None


def _longest_first(items: list[tuple[str, T]]) -> tuple[tuple[str, T], ...]:
    return tuple(sorted(items, key=lambda item: len(item[0]), reverse=True))


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

