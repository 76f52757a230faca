"""The route-level view of anonymous traffic: ids walked in order on one path template by
several anonymous clients without browser proof, a few pages each, are one enumeration (a
scraper rotating over a provider's addresses and user agents). Per template, the walks in
progress are keyed by the next id each expects, so people reading at random between them
neither join nor break them."""

from __future__ import annotations

from gateway.config.detection import ScrapingDetector as ScrapingSettings
from gateway.state.bounded import BoundedTable

_MAX_TEMPLATES = 256
_WALKS_PER_TEMPLATE = 1024
_CLIENTS_KEPT = 16


class _CrowdWalk:
    __slots__ = ("run", "at", "clients")

    def __init__(self, at: float, client: str) -> None:
        self.run, self.at = 1, at
        self.clients: tuple[str, ...] = (client,)


class CrowdWalks:
    def __init__(self, settings: ScrapingSettings) -> None:
        self.settings = settings
        self._templates: BoundedTable[str, BoundedTable[tuple[int, ...], _CrowdWalk]] = BoundedTable(_MAX_TEMPLATES)

    def read(self, template: str, numbers: tuple[int, ...], client: str, at: float) -> tuple[int, int] | None:
        """One anonymous read without proof; (ids in sequence, clients) once the walk it continues
        is a crowd enumeration."""
        settings = self.settings
        walks = self._templates.get(template)
        if walks is None:
            walks = BoundedTable(_WALKS_PER_TEMPLATE)
            self._templates.put(template, walks)
        walk = walks.pop(numbers, None)
        if walk is None or at - walk.at > settings.crowd_gap:
            walk = _CrowdWalk(at, client)
        else:
            walk.run += 1
            walk.at = at
            if client not in walk.clients:
                walk.clients = (*walk.clients, client)[-_CLIENTS_KEPT:]
        walks.put((*numbers[:-1], numbers[-1] + 1), walk)
        if walk.run >= settings.crowd_run and len(walk.clients) >= settings.crowd_clients:
            return walk.run, len(walk.clients)
        return None
