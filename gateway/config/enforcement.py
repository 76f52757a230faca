"""The `enforcement` section: what violations lead to (warn -> throttle -> suspend) and the
audit trail that records every step."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from gateway.config.types import Duration, Section, frozen_mapping

VIOLATION_KINDS = ("limit", "sharing", "scraping", "seats")


class Advice(Section):
    """What a warning says about one limit or detector, beyond the numbers it is written from."""

    recommendation: str | None = Field(
        None, min_length=1, max_length=200, description="Plain advice in warnings and alerts, e.g. 'spread calls "
        "to at most 1 per second' (default: written from the limit's numbers or the detector's finding).")
    clause: str | None = Field(
        None, min_length=1, max_length=300,
        description="Link to the policy clause this enforces (default: enforcement.policy).")


def _known_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    unknown = sorted(set(kinds) - set(VIOLATION_KINDS))
    if unknown:
        raise ValueError(f"unknown violation kind(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(VIOLATION_KINDS)}")
    return kinds


Severity = Literal["minor", "major"]
_DEFAULT_WEIGHTS: Mapping[Severity, int] = frozen_mapping({"minor": 1, "major": 2})


class Ladder(Section):
    """ok -> warned -> throttled -> suspended, per customer (and per user for a user's findings).
    Counts cover a sliding window, so they decay; every term ends by itself."""

    window: Duration = Field(3600.0, description="Violations are counted over this sliding window.")
    warn_at: int = Field(3, ge=1, description="Violations within the window that put a subject in `warned`.")
    warn_for: Duration = Field(3600.0, description="How long `warned` lasts after the violation that caused it.")
    throttle_at: int = Field(10, ge=1, description="Violations within the window that put a subject in `throttled`.")
    throttle_factor: float = Field(0.5, gt=0, lt=1, description="Throttled: every rate limit of the plan times this.")
    throttle_for: Duration = Field(3600.0, description="Length of a throttle.")
    suspend_after_throttles: int = Field(3, ge=1, description="Throttles within `throttles_within` that suspend.")
    throttles_within: Duration = Field(7 * 86400.0, description="Window over which throttles are counted.")
    suspend_for: Duration = Field(86400.0, description="Length of a first suspension; each repeat doubles it.")
    max_suspension: Duration = Field(7 * 86400.0, description="Longest suspension, however often repeated.")
    egregious: Annotated[tuple[str, ...], AfterValidator(_known_kinds)] = Field(
        (), description="Violation kinds that suspend at once: limit, sharing, scraping, seats.")
    weights: Mapping[Severity, int] = Field(
        default_factory=lambda: _DEFAULT_WEIGHTS,
        description="How many violations each severity counts as: minor (a 429, a flag-only finding), major (a "
                    "finding whose detector refused requests).")

    @field_validator("weights")
    @classmethod
    def _positive(cls, weights: Mapping[str, int]) -> Mapping[str, int]:
        if any(weight < 1 or weight > 100 for weight in weights.values()):
            raise ValueError("weights must be whole numbers from 1 to 100")
        return frozen_mapping({**_DEFAULT_WEIGHTS, **weights})

    @model_validator(mode="after")
    def _ordered(self) -> Ladder:
        if self.throttle_at < self.warn_at:
            raise ValueError(f"throttle_at ({self.throttle_at}) must be at least warn_at ({self.warn_at})")
        if self.max_suspension < self.suspend_for:
            raise ValueError("max_suspension must be at least suspend_for")
        return self


class AuditSettings(Section):
    """Every violation, state change, finding and admin action, as hash-chained JSON Lines."""

    path: Path | None = Field(None, description="Append-only JSON Lines file; unset: no audit file.")
    flush_interval: Duration = Field(1.0, description="Events are written this often (a crash loses at most this "
                                                      "much); a graceful shutdown writes them all.")
    queue_size: int = Field(100_000, ge=100, description="Events waiting to be written at most; beyond it events "
                                                         "are dropped, counted and logged.")
    keep: int = Field(10_000, ge=100, description="Recent events kept in memory for the admin API.")
    redis_stream: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:{}-]{1,128}$",
                                     description="Also append every event to this Redis stream (XADD), for a fleet; "
                                                 "needs a Redis state store.")
    redis_stream_max: int = Field(1_000_000, ge=1000, description="Events the stream keeps at most (approximate "
                                                                  "trimming).")

    @field_validator("path")
    @classmethod
    def _writable(cls, path: Path | None) -> Path | None:
        # Found at load, a bad path is a config error (check-config, run, a refused reload), not a
        # traceback at start-up or events that silently stop.
        problem = None if path is None else unwritable(path)
        if problem is not None:
            raise ValueError(problem)
        return path


def unwritable(path: Path) -> str | None:
    """Why the gateway could not append to `path` (creating it and its directory), or None."""
    if path.is_dir():
        return f"{path} is a directory"
    if path.exists():
        try:
            path.open("ab").close()
        except OSError as exc:
            return f"file {path} is not writable ({exc.strerror})"
        return None
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent  # the gateway creates the missing directories
    if not directory.is_dir():
        return f"{directory} is not a directory"
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        return f"directory {directory} is not writable ({exc.strerror})"
    return None


class EnforcementSettings(Section):
    mode: Literal["enforce", "shadow", "off"] = Field(
        "off", description="enforce: warn, throttle, suspend; shadow: record decisions, apply none; off.")
    policy: str = Field("fair-use policy", description="The policy named in Fair-Use-Warning and refusals (a URL "
                                                       "or a title).")
    appeal_url: str | None = Field(None, max_length=500, description="Where a person refused by the gateway "
                                   "(block, suspension) appeals: linked from the HTML refusal pages with the request "
                                   "id (default: enforcement.policy when it is a URL).")
    ladder: Ladder = Field(default_factory=Ladder)
    judge_interval: Duration = Field(0.1, gt=0, le=60, description="Queued violations are judged this often: how "
                                     "soon after a violation the ladder can warn, throttle or suspend.")

    @field_validator("appeal_url")
    @classmethod
    def _web_address(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("https://", "http://", "mailto:")):
            raise ValueError(f"expected an https://, http:// or mailto: URL, got {url!r}")
        return url
    audit: AuditSettings = AuditSettings()

    @property
    def enabled(self) -> bool:
        return self.mode != "off"
