"""What anonymous networks did, remembered for hours: a scraper rotating addresses and user
agents inside one provider's range comes back as a new client, not as a first offender."""

from __future__ import annotations

from gateway.state.bounded import BoundedTable

_MAX_NETWORKS = 100_000


class NetworkMemory:
    def __init__(self, keep_for: float) -> None:
        self.keep_for = keep_for
        # until, offences; swept once `until` passed
        self.offences_table: BoundedTable[str, tuple[float, int]] = BoundedTable(_MAX_NETWORKS, _ended)

    def offences(self, network: str, now: float) -> int:
        entry = self.offences_table.get(network)
        if entry is None:
            return 0
        if entry[0] <= now:
            del self.offences_table[network]
            return 0
        return entry[1]

    def offended(self, network: str, offences: int, now: float) -> None:
        self.offences_table.put(network, (now + self.keep_for, max(offences, self.offences(network, now))))


def _ended(entry: tuple[float, int], now: float) -> bool:
    return entry[0] <= now
