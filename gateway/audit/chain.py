"""The audit file's hash chain: each line carries the hash of the line before it and its own,
so changing, removing or reordering a line breaks the chain at that line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def canonical(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def chain_line(event: dict[str, Any], prev: str) -> tuple[str, str]:
    """The JSON line for `event` after the line whose hash is `prev`, and this line's hash."""
    body = {**event, "prev": prev}
    digest = hashlib.sha256(canonical(body).encode()).hexdigest()
    return canonical({**body, "hash": digest}), digest


@dataclass(frozen=True, slots=True)
class Verdict:
    lines: int  # lines checked
    broken_at: int | None  # 1-based number of the first line that breaks the chain
    problem: str | None
    last_hash: str  # of the last good line

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify(path: Path) -> Verdict:
    prev = GENESIS
    number = 0
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            problem = _check(raw, prev)
            if isinstance(problem, str):
                return Verdict(number - 1, number, problem, prev)
            prev = problem[1]
    return Verdict(number, None, None, prev)


def _check(raw: bytes, prev: str) -> str | tuple[None, str]:
    """A problem, or (None, this line's hash)."""
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
    return None, claimed
