"""Upstream protection: a cap on requests in flight to one upstream, where each plan may fill
only its share, so the lowest-priority plans are shed first and one heavy customer cannot
starve the others. Anonymous callers (no login) have their own bounded share on top of their
plan's: however many of them stall, logged-in callers keep the rest of the cap. Within that
share one network (an IPv4 /24, an IPv6 /48) may hold only part, so one client stalling
requests cannot shed every other anonymous caller, such as customers' browsers fetching assets."""

from __future__ import annotations

import ipaddress
import math


def network_key(address: str) -> str:
    """The network an anonymous caller is counted under: its /24, or /48 for IPv6."""
    if ":" not in address:
        return address.rpartition(".")[0]  # an IPv4 address as the listener reports it
    try:
        return str(ipaddress.ip_network(f"{address}/48", strict=False))
    except ValueError:
        return address


class InFlightGate:
    __slots__ = ("_by_network", "_levels", "anonymous_capacity", "anonymous_in_flight", "capacity",
                 "in_flight", "network_capacity")

    def __init__(self, capacity: int, max_priority: int, anonymous_share: float = 1.0,
                 network_share: float = 1.0) -> None:
        self.capacity = capacity
        self.anonymous_capacity = capacity
        self.network_capacity = capacity
        self._levels = max_priority + 1
        self.in_flight = 0
        self.anonymous_in_flight = 0
        self._by_network: dict[str, int] = {}
        self.set_anonymous_share(anonymous_share, network_share)

    def set_priorities(self, max_priority: int) -> None:
        """Plans changed on reload: recompute the shares."""
        self._levels = max_priority + 1

    def set_anonymous_share(self, share: float, network_share: float = 1.0) -> None:
        self.anonymous_capacity = max(1, math.ceil(self.capacity * share))
        self.network_capacity = max(1, math.floor(self.anonymous_capacity * network_share))

    def share(self, priority: int) -> float:
        """In-flight requests a plan of this priority may add to: all of it for the top priority."""
        return self.capacity * (min(priority, self._levels - 1) + 1) / self._levels

    def try_enter(self, priority: int, anonymous_network: str | None = None) -> bool:
        """Take a place; `anonymous_network` is the caller's network_key when it has no login."""
        if self.in_flight >= self.share(priority):
            return False
        if anonymous_network is not None:
            held = self._by_network.get(anonymous_network, 0)
            if self.anonymous_in_flight >= self.anonymous_capacity or held >= self.network_capacity:
                return False
            self._by_network[anonymous_network] = held + 1
            self.anonymous_in_flight += 1
        self.in_flight += 1
        return True

    def leave(self, anonymous_network: str | None = None) -> None:
        self.in_flight -= 1
        if anonymous_network is not None:
            self.anonymous_in_flight -= 1
            held = self._by_network[anonymous_network] - 1
            if held:
                self._by_network[anonymous_network] = held
            else:
                del self._by_network[anonymous_network]  # the table holds only networks with requests out
