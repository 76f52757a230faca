"""The checkpoint beside an audit file: how many lines it had, how long it was and the hash of its
last line, after the last append that reached the file. A file shorter than its checkpoint lost
lines off its end, which the hash chain alone cannot show (what remains still chains)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Checkpoint:
    lines: int
    size: int  # bytes
    hash: str  # of line number `lines`


def checkpoint_path(audit: Path) -> Path:
    return audit.with_name(audit.name + ".checkpoint")


def read_checkpoint(audit: Path) -> Checkpoint | None:
    """The checkpoint of `audit`, or None if there is none; ValueError if it is damaged."""
    try:
        raw = checkpoint_path(audit).read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return Checkpoint(int(data["lines"]), int(data["size"]), str(data["hash"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{checkpoint_path(audit)} is damaged") from exc


def write_checkpoint(audit: Path, checkpoint: Checkpoint) -> None:
    """Atomically: a reader (or a crash) sees the old checkpoint or the new one, never half."""
    target = checkpoint_path(audit)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(asdict(checkpoint)))
    os.replace(temporary, target)
