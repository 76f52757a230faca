"""The kinds of fleet changes, and one change as it is published."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Topic(StrEnum):
    """One shared set per kind; the store keeps each entry until its own `until`."""

    REVOCATIONS = "revocations"  # revoked tokens and users (auth)
    SANCTIONS = "sanctions"  # blocks and re-logins the detectors decided
    STANDINGS = "standings"  # the ladder's and the account managers' decisions
    REVOKED_GRANTS = "revoked-grants"  # grants ended before their end
    GRANTS = "grants"  # exceptions and allow-list entries


Match = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class Change:
    """An entry for the fleet and the audit event that records it."""

    topic: Topic
    entry: dict[str, Any]
    until: float
    # The audit event's kind and fields; None when this re-shares what was recorded already.
    event: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    # Entries this change ends: the grant a revocation ends, the sanctions an allow-list entry lifts.
    withdraws: tuple[tuple[Topic, Match], ...] = ()
