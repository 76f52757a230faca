"""What each actor sent and saw: one record per request, and the outcome the gateway's answer
means for the actor (served, rate-limited, challenged, blocked, refused otherwise)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

# Problem types (the last path segment of `type`) of the detectors' refusals.
BLOCK_TYPES = frozenset({"automation-blocked", "session-blocked"})
CHALLENGE_TYPES = frozenset({"automation-challenge"})
REAUTH_TYPES = frozenset({"reauthentication-required"})
# The gateway's HTML refusal pages say what they are on <body data-fairgate-outcome="...">.
_PAGE_OUTCOME = re.compile(rb'data-fairgate-outcome="([a-z]+)"')
PAGE_OUTCOMES = {"challenge": "challenged", "block": "blocked", "reauth": "reauth"}


@dataclass(frozen=True, slots=True)
class Sent:
    at: float  # wall time (the gateway's clock) when the request went out
    client: str  # which of the actor's clients (person, device, address) sent it
    method: str
    path: str
    status: int
    outcome: str  # served | not_modified | rate_limited | challenged | blocked | reauth | refused | error


def outcome_of(status: int, content_type: str, body: bytes, page_outcome: str | None = None) -> str:
    """What an answer means for the actor; a challenge is any detector refusal a browser can pass.
    `page_outcome` is the gateway's `Fairgate-Outcome` header, for a page whose body is gone."""
    if status == 304:
        return "not_modified"
    if status < 400:
        return "served"
    if status == 429:
        return "rate_limited"
    kind = ""
    if page_outcome:
        return PAGE_OUTCOMES.get(page_outcome, "refused")
    if "json" in content_type:
        try:
            kind = re.split(r"[/#:]", str(json.loads(body).get("type", "")).rstrip("/"))[-1]
        except (ValueError, AttributeError):
            kind = ""
    elif "html" in content_type:
        page = _PAGE_OUTCOME.search(body)
        if page is not None:
            return PAGE_OUTCOMES.get(page.group(1).decode(), "refused")
        if b"challenge" in body.lower():
            return "challenged"
    if kind in BLOCK_TYPES:
        return "blocked"
    if kind in CHALLENGE_TYPES:
        return "challenged"
    if kind in REAUTH_TYPES:
        return "reauth"
    return "refused"


@dataclass
class Log:
    """One actor's requests, in the order they were answered."""

    sent: list[Sent] = field(default_factory=list)

    def add(self, client: str, method: str, path: str, status: int, content_type: str, body: bytes,
            at: float | None = None, page_outcome: str | None = None) -> str:
        outcome = outcome_of(status, content_type, body, page_outcome)
        self.sent.append(Sent(time.time() if at is None else at, client, method, path, status, outcome))
        return outcome

    def error(self, client: str, method: str, path: str) -> None:
        self.sent.append(Sent(time.time(), client, method, path, 0, "error"))
