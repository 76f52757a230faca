"""Sanctions in force: what a finding does to the next requests. Looked up on the request path
(a dictionary read, nothing when the table is empty) and shared by a fleet through the store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from gateway.detect.findings import Finding
from gateway.fleet.grants import ALLOW_AGENT, ALLOW_USER, Grant
from gateway.fleet.topics import Change, Match, Topic
from gateway.state.store import shared_entries


class SanctionKind(StrEnum):
    """What a sanction refuses; the values travel between gateways in shared entries."""

    REAUTH = "reauth"  # tokens issued until `issued_before` must log in again
    BLOCK = "block"  # the session is refused
    # The subject's requests on the route classes the scraping detector refuses (challenge or block).
    AUTOMATION = "scraping"
    # One signal only: the subject's pages (portal, public) on a class that refuses answer with a
    # challenge a browser passes by itself; the API is never challenged.
    CHALLENGE = "challenge"


REAUTH, BLOCK, AUTOMATION, CHALLENGE = (SanctionKind.REAUTH, SanctionKind.BLOCK, SanctionKind.AUTOMATION,
                                        SanctionKind.CHALLENGE)


@dataclass(frozen=True, slots=True)
class Sanction:
    key: str  # "session:C/U/SID", "user:C/U" or "address:HASH"
    kind: SanctionKind  # a plain string when read back from the fleet's store
    until: float
    policy: str  # the policy clause, for the client's problem detail
    issued_before: float = 0.0

    def as_entry(self) -> dict[str, Any]:
        return asdict(self)

    def as_change(self) -> Change:
        """The sanction for the fleet, with its audit event."""
        return Change(Topic.SANCTIONS, self.as_entry(), self.until, "sanction",
                      {"subject": self.key, "sanction": self.kind, "until": self.until, "policy": self.policy})


def session_key(customer: str, user: str, session: str) -> str:
    return f"session:{customer}/{user}/{session}"


def user_key(customer: str, user: str) -> str:
    return f"user:{customer}/{user}"


def keyed_under(prefixes: tuple[str, ...]) -> Match:
    """A match for the shared sanctions whose key starts with one of `prefixes`."""
    return lambda entry: str(entry.get("key", "")).startswith(prefixes)


class Sanctions:
    def __init__(self) -> None:
        self._table: dict[str, Sanction] = {}
        # Changes made here since a detection worker was last told (None: no worker to tell).
        self.journal: list[Sanction | str] | None = None

    def __bool__(self) -> bool:
        return bool(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def add(self, sanction: Sanction) -> None:
        current = self._table.get(sanction.key)
        if current is None or current.until < sanction.until:
            self._table[sanction.key] = sanction
            if self.journal is not None:
                self._journal(sanction)

    def get(self, key: str, now: float) -> Sanction | None:
        sanction = self._table.get(key)
        if sanction is not None and sanction.until <= now:
            del self._table[key]
            return None
        return sanction

    def clear(self, key_prefix: str) -> int:
        """Lift every sanction whose key starts with `key_prefix`; how many were lifted."""
        keys = [key for key in self._table if key.startswith(key_prefix)]
        for key in keys:
            del self._table[key]
        if keys and self.journal is not None:
            self._journal(key_prefix)
        return len(keys)

    def _journal(self, change: Sanction | str) -> None:
        journal = self.journal
        assert journal is not None
        journal.append(change)
        if len(journal) > 2 * len(self._table) + 1024:  # not sent for long (no traffic): the table says it all
            self.journal = ["", *self._table.values()]  # "" lifts everything first

    def retell(self, key_prefix: str) -> None:
        """Tell a detection worker again what this table holds under `key_prefix` (it holds a
        sanction there this table did not take)."""
        if self.journal is None:
            return
        self._journal(key_prefix)
        for sanction in [s for key, s in self._table.items() if key.startswith(key_prefix)]:
            self._journal(sanction)

    def entries(self) -> list[Sanction]:
        return list(self._table.values())

    def replay(self, changes: Iterable[Sanction | str]) -> None:
        """Make the changes another table journaled (a sanction added, or a key prefix lifted)."""
        for change in changes:
            if isinstance(change, str):
                self.clear(change)
            else:
                self.add(change)

    def lift(self, grant: Grant, recent: Iterable[Finding]) -> tuple[str, ...]:
        """Lift what an allow-list entry allows: a user's own sanctions and its sessions', or those
        of the subjects whose scraping findings (`recent`) named an allowed user agent. Returns the
        key prefixes lifted, for the fleet to withdraw; none for any other grant."""
        if grant.kind == ALLOW_USER:
            customer, user = grant.customer or "", grant.user or ""
            prefixes = {user_key(customer, user), session_key(customer, user, "")}
        elif grant.kind == ALLOW_AGENT and grant.agent:
            agent = grant.agent.lower()
            prefixes = {f.subject for f in recent if agent in str(f.evidence.get("user_agent", "")).lower()}
        else:
            return ()
        for prefix in prefixes:
            self.clear(prefix)
        return tuple(sorted(prefixes))

    def sync_from(self, entries: list[dict[str, Any]]) -> None:
        for sanction in shared_entries(Sanction, entries):
            self.add(sanction)
