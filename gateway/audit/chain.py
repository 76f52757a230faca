"""The audit file's hash chain: each line carries the hash of the line before it and its own,
so changing, removing or reordering a line breaks the chain at that line. Lines cut off the end
leave a chain that still holds: the checkpoint beside the file shows those."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.audit.checkpoint import checkpoint_path, read_checkpoint

GENESIS = "0" * 64


def canonical(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def chain_line(event: dict[str, Any], prev: str) -> tuple[str, str]:
    """The JSON line for `event` after the line whose hash is `prev`, and this line's hash."""
    body = {**event, "prev": prev}
    digest = hashlib.sha256(canonical(body).encode()).hexdigest()
    return canonical({**body, "hash": digest}), digest


# Events the gateway writes about its own file when it starts: what it repaired, what it found missing.
TORN_TAIL = "audit_torn_tail_sealed"
TRUNCATED = "audit_truncation_found"


@dataclass(frozen=True, slots=True)
class Verdict:
    lines: int  # lines checked
    broken_at: int | None  # 1-based number of the first line that breaks the chain
    problem: str | None
    last_hash: str  # of the last good line
    recoveries: tuple[tuple[int, dict[str, Any]], ...] = ()  # (line, event) of TORN_TAIL and TRUNCATED events

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify(path: Path) -> Verdict:
    """Check the chain line by line, then the file against its checkpoint (lines cut off the end)."""
    checkpoint = read_checkpoint(path)  # before the file: a gateway appending meanwhile only adds lines
    prev = GENESIS
    number = 0
    recoveries: list[tuple[int, dict[str, Any]]] = []
    at_checkpoint: str | None = None
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            problem = check_line(raw, prev)
            if isinstance(problem, str):
                return Verdict(number - 1, number, problem, prev, tuple(recoveries))
            event, prev = problem
            if event.get("kind") in (TORN_TAIL, TRUNCATED):
                recoveries.append((number, event))
            if checkpoint is not None and number == checkpoint.lines:
                at_checkpoint = prev
    if checkpoint is not None and checkpoint.lines > 0:
        name = checkpoint_path(path).name
        if number < checkpoint.lines:
            return Verdict(number, number + 1, f"the file ends early: {name} records {checkpoint.lines} events, "
                                               f"{checkpoint.lines - number} were cut off the end", prev,
                           tuple(recoveries))
        if at_checkpoint != checkpoint.hash:
            return Verdict(checkpoint.lines - 1, checkpoint.lines, f"does not match {name} (lines were cut off "
                                                                   "and others written in their place)", prev,
                           tuple(recoveries))
    return Verdict(number, None, None, prev, tuple(recoveries))


def describe_recovery(event: dict[str, Any]) -> str:
    """One sentence on a TORN_TAIL or TRUNCATED event, for `fairgate audit verify`."""
    if event["kind"] == TORN_TAIL:
        return (f"recorded at start-up: a torn last line of {event['bytes']} bytes (sha256 {event['sha256'][:16]}) "
                f"was cut off at byte {event['offset']}")
    if "problem" in event:
        return f"recorded at start-up: {event['problem']}"
    return (f"recorded at start-up: the file was shorter than its checkpoint ({event['checkpoint_lines']} events, "
            f"{event['checkpoint_bytes']} bytes recorded; {event['lines']} events, {event['bytes']} bytes found): "
            "lines had been cut off its end")


def check_line(raw: bytes, prev: str) -> str | tuple[dict[str, Any], str]:
    """A problem, or (the event, this line's hash) if `raw` is a line that follows `prev`."""
    try:
        line = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "not a JSON line (truncated or edited)"
    if not isinstance(line, dict) or not isinstance(line.get("hash"), str):
        return "no hash"
    if line.get("prev") != prev:
        return "does not follow the line before it (a line was removed, inserted or reordered)"
    claimed = line.pop("hash")
    if hashlib.sha256(canonical(line).encode()).hexdigest() != claimed:
        return "content does not match its hash (the line was edited)"
    return line, claimed
