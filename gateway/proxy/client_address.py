"""The client's address: the socket peer, or X-Forwarded-For read across trusted proxies only."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gateway.state.memo import Memo

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Peers and forwarded hops whose verdict is remembered.
TRUSTED_MEMO = 4096


class ClientAddressResolver:
    """Walks X-Forwarded-For right to left while each hop is a trusted proxy."""

    __slots__ = ("_networks", "verdicts", "_is_trusted")

    def __init__(self, trusted: Iterable[IPNetwork]) -> None:
        self._networks = tuple(trusted)
        # Peers repeat constantly (the same load balancers), so remember verdicts
        # (memo_trusted_peers on /metrics; an untrusted peer is any client, hence the sweep).
        self.verdicts: Memo[str, bool] = Memo(self._check_trusted, TRUSTED_MEMO)
        self._is_trusted = self.verdicts.__getitem__

    def _check_trusted(self, address: str) -> bool:
        parsed = _parse_ip(address)
        return parsed is not None and any(parsed in network for network in self._networks)

    def is_trusted(self, peer: str) -> bool:
        return bool(self._networks) and self._is_trusted(peer)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str:
        """Return the client address for a request from `peer` carrying `forwarded_for`."""
        client = peer or ""
        if not self._networks or not forwarded_for or not self._is_trusted(client):
            return client
        for hop in reversed(forwarded_for.split(",")):
            hop = hop.strip()
            address = _parse_ip(hop)
            if address is None:
                # An unparsable hop was written by someone we cannot vouch for: stop at the
                # last address a trusted proxy gave us.
                return client
            client = str(address)
            if not self._is_trusted(client):
                return client
        return client


def _parse_ip(value: str) -> IPAddress | None:
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "192.0.2.1:443"
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None
