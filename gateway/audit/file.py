"""One audit file open for appending.

Opening it recovers from how the last process left it: a torn last line (a crash mid-write) is
cut off and described in an event, so the chain goes on from the last whole line; a file shorter
than its checkpoint (lines cut off the end) is described in an event too. Appends write whole
lines: what a failed write left half-written is cut back, and the caller learns exactly how many
events reached the file, so none is written twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from gateway.audit.chain import GENESIS, TORN_TAIL, TRUNCATED, chain_line, check_line
from gateway.audit.checkpoint import Checkpoint, read_checkpoint, write_checkpoint

log = logging.getLogger("fairgate.audit")

_CHUNK = 65536
# A torn line longer than this is described by its length and hash, and its first bytes.
_FRAGMENT_KEPT = 65536


class AppendError(OSError):
    """An append failed after `written` of its events reached the file (whole lines, chained)."""

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.written = written
        self.__cause__ = cause


class AuditFile:
    def __init__(self, path: Path) -> None:
        """Open (creating it and its directory) and recover; raises OSError if that cannot be done."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a+b", buffering=0)
        try:
            self.notes = self._recover()  # (kind, fields) of events to record first
        except BaseException:
            self._file.close()
            raise
        self._torn = False  # a failed write left bytes that could not be cut back yet

    def append(self, events: list[dict[str, Any]]) -> None:
        """Append every event as one chained line, then update the checkpoint."""
        fd = self._file.fileno()
        if self._torn:
            try:
                os.ftruncate(fd, self._size)
            except OSError as exc:
                raise AppendError(0, exc) from exc
            self._torn = False
        lines: list[bytes] = []
        hashes: list[str] = []
        prev = self._prev
        for event in events:
            text, prev = chain_line(event, prev)
            lines.append((text + "\n").encode())
            hashes.append(prev)
        data = b"".join(lines)
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as exc:
            whole, end = 0, 0
            for line in lines:
                if end + len(line) > written:
                    break
                end += len(line)
                whole += 1
            self._advance(whole, end, hashes[whole - 1] if whole else self._prev)
            try:
                os.ftruncate(fd, self._size)  # never leave half a line for the next append to glue onto
            except OSError:
                self._torn = True
            raise AppendError(whole, exc) from exc
        self._advance(len(events), len(data), prev)
        try:
            os.fsync(fd)  # the checkpoint never claims more than the disk holds
            write_checkpoint(self.path, Checkpoint(self._lines, self._size, self._prev))
        except OSError as exc:
            log.error("audit checkpoint not updated", extra={"error": str(exc), "path": str(self.path)})

    def close(self) -> None:
        self._file.close()

    def _advance(self, lines: int, size: int, last_hash: str) -> None:
        self._lines += lines
        self._size += size
        self._prev = last_hash

    def _recover(self) -> list[tuple[str, dict[str, Any]]]:
        notes: list[tuple[str, dict[str, Any]]] = []
        size = os.fstat(self._file.fileno()).st_size
        end, fragment = self._find_tail(size)
        self._prev = _hash_before(self.path, end)
        if fragment:
            if _completes_chain(fragment, self._prev):
                # Only the newline was lost: the line is whole.
                os.write(self._file.fileno(), b"\n")
                end += len(fragment) + 1
                self._prev = _hash_before(self.path, end)
            else:
                os.ftruncate(self._file.fileno(), end)
                notes.append((TORN_TAIL, {
                    "path": str(self.path), "offset": end, "bytes": len(fragment),
                    "sha256": hashlib.sha256(fragment).hexdigest(),
                    "fragment_base64": base64.b64encode(fragment[:_FRAGMENT_KEPT]).decode(),
                }))
                log.error("audit file ended with a torn line (a crash mid-write); it was cut off and recorded",
                          extra={"path": str(self.path), "bytes": len(fragment)})
        try:
            checkpoint = read_checkpoint(self.path)
        except ValueError as exc:
            checkpoint = None
            notes.append((TRUNCATED, {"path": str(self.path), "problem": str(exc)}))
        fits = checkpoint is not None and checkpoint.size <= end and \
            _hash_before(self.path, checkpoint.size) == checkpoint.hash
        self._size: int = end
        self._lines: int = _count_lines(self.path, checkpoint if fits else None, end)
        if checkpoint is not None and not fits:
            notes.append((TRUNCATED, {
                "path": str(self.path), "checkpoint_lines": checkpoint.lines, "checkpoint_bytes": checkpoint.size,
                "checkpoint_hash": checkpoint.hash, "lines": self._lines, "bytes": end,
            }))
            log.error("audit file is shorter than its checkpoint: lines were cut off its end",
                      extra={"path": str(self.path), "checkpoint_lines": checkpoint.lines, "lines": self._lines})
        return notes

    def _find_tail(self, size: int) -> tuple[int, bytes]:
        """(offset just past the last newline, the bytes after it)."""
        position, tail = size, b""
        while position > 0:
            start = max(0, position - _CHUNK)
            chunk = os.pread(self._file.fileno(), position - start, start)
            tail = chunk + tail
            newline = tail.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1, tail[newline + 1:]
            position = start
        return 0, tail


def _completes_chain(fragment: bytes, prev: str) -> bool:
    return not isinstance(check_line(fragment, prev), str)


def _hash_before(path: Path, end: int) -> str:
    """The hash of the line that ends at byte `end` (the genesis at 0); a damaged line is skipped
    with an error, and the chain goes on from the last good one."""
    if end == 0:
        return GENESIS
    with path.open("rb") as file:
        start = max(0, end - _CHUNK)
        file.seek(start)
        tail = file.read(end - start).splitlines()
    for raw in reversed(tail):
        try:
            return str(json.loads(raw)["hash"])
        except (ValueError, KeyError, TypeError):
            log.error("audit file has a damaged line near its end; the chain continues from the last good one",
                      extra={"path": str(path)})
    return GENESIS


def _count_lines(path: Path, checkpoint: Checkpoint | None, end: int) -> int:
    """Lines in the first `end` bytes: from the checkpoint on when it fits, else the whole file."""
    start, lines = 0, 0
    if checkpoint is not None and checkpoint.size <= end:
        start, lines = checkpoint.size, checkpoint.lines
    with path.open("rb") as file:
        file.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = file.read(min(_CHUNK * 16, remaining))
            if not chunk:
                break
            lines += chunk.count(b"\n")
            remaining -= len(chunk)
    return lines
