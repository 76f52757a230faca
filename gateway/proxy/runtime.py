"""Everything the proxy needs for one config, compiled once: routes, pools, trusted proxies.

A reload builds a new Runtime and swaps one reference; pools whose upstream settings did not
change are carried over so warm connections survive the reload.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig, Route, Upstream
from gateway.proxy.client_address import ClientAddressResolver
from gateway.proxy.routing import Router
from gateway.upstream import UpstreamPool


@dataclass(frozen=True, slots=True)
class RouteTarget:
    route: Route
    upstream_name: str
    pool: UpstreamPool
    # None keeps the client's Host header.
    host_header: bytes | None
    ws_base_url: str


class Runtime:
    def __init__(self, config: GatewayConfig, pools: dict[str, UpstreamPool]) -> None:
        self.config = config
        self.pools = pools
        self.client_addresses = ClientAddressResolver(config.server.trusted_proxies)
        self.router: Router[RouteTarget] = Router(
            [(route.host, route.path_prefix, self._target(route)) for route in config.routes]
        )

    def _target(self, route: Route) -> RouteTarget:
        upstream = self.config.upstreams[route.upstream]
        authority = f"{upstream.host}:{upstream.port}"
        return RouteTarget(
            route=route,
            upstream_name=route.upstream,
            pool=self.pools[route.upstream],
            host_header=None if upstream.preserve_host else authority.encode("ascii"),
            ws_base_url=f"ws://{authority}",
        )

    @classmethod
    def build(cls, config: GatewayConfig, previous: "Runtime | None" = None) -> "Runtime":
        pools = {}
        for name, upstream in config.upstreams.items():
            old = previous.pools.get(name) if previous else None
            old_settings = previous.config.upstreams.get(name) if previous else None
            pools[name] = old if old is not None and old_settings == upstream else _new_pool(upstream)
        return cls(config, pools)

    async def close_pools_not_in(self, successor: "Runtime | None") -> None:
        kept = {id(pool) for pool in successor.pools.values()} if successor else set()
        for pool in self.pools.values():
            if id(pool) not in kept:
                await pool.close()


def _new_pool(upstream: Upstream) -> UpstreamPool:
    return UpstreamPool(
        upstream.host,
        upstream.port,
        connect_timeout=upstream.connect_timeout,
        read_timeout=upstream.read_timeout,
        idle_timeout=upstream.idle_timeout,
        max_connections=upstream.max_connections,
    )
