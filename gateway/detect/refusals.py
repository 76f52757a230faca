"""The problem a sanction answers with: what happened, until when, under which policy."""

from __future__ import annotations

import datetime as dt
import math

from gateway.detect.sanctions import REAUTH, Sanction
from gateway.problems import Problem


def session_problem(sanction: Sanction, now: float) -> Problem:
    """A sharing sanction on one session: sign in again, or blocked."""
    if sanction.kind == REAUTH:
        return Problem(401, "reauthentication-required", "Unauthorized",
                       f"This login is in use elsewhere ({sanction.policy}); sign in again.",
                       {"WWW-Authenticate": 'Bearer realm="fairgate", error="invalid_token", '
                                            'error_description="sign in again"'},
                       {"policy": sanction.policy})
    return blocked(sanction, now, "session-blocked", "This session")


def challenge(sanction: Sanction) -> Problem:
    return Problem(403, "automation-challenge", "Forbidden",
                   f"This traffic looks automated ({sanction.policy}). Use the API under your plan, or "
                   "contact support if this is a mistake.", {}, {"policy": sanction.policy})


def automation_blocked(sanction: Sanction, now: float) -> Problem:
    return blocked(sanction, now, "automation-blocked", "Automated access")


def blocked(sanction: Sanction, now: float, slug: str, what: str) -> Problem:
    retry_after = str(max(1, math.ceil(sanction.until - now)))
    until = dt.datetime.fromtimestamp(sanction.until, dt.UTC).isoformat(timespec="seconds")
    return Problem(403, slug, "Forbidden", f"{what} is blocked until {until} ({sanction.policy}).",
                   {"Retry-After": retry_after}, {"policy": sanction.policy, "until": until})
