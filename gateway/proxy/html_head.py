"""Where a link goes into an HTML page: right before its first `</head>` within the first bytes
of the body, found in a stream while holding no more than those bytes (and the chunk that
crossed them), wherever the chunk boundaries fall."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

# HTML allows whitespace before an end tag's `>`; a bounded amount keeps the search incremental.
_HEAD_END = re.compile(rb"</head[ \t\r\n\f]{0,16}>", re.IGNORECASE)
# A match straddling the end of what was searched before starts at most this far before it.
_OVERLAP = len(b"</head") + 16


def head_end(body: bytes | bytearray, limit: int, start: int = 0) -> int:
    """Offset of the first `</head>` lying wholly within body[:limit], searched from `start`; -1 if none."""
    found = _HEAD_END.search(body, start, limit)
    return -1 if found is None else found.start()


def with_link(body: bytes | bytearray, at: int, tag: bytes) -> bytes:
    return b"".join((body[:at], tag, body[at:]))


async def read_head(read_chunk: Callable[[], Awaitable[bytes]], limit: int) -> tuple[bytearray, int]:
    """Read the body until its `</head>` shows, `limit` bytes are in, or it ends: (bytes read, the
    `</head>`'s offset or -1). The rest of the body is for the caller to read on."""
    read = bytearray()
    while len(read) < limit:
        chunk = await read_chunk()
        if not chunk:
            break
        start = max(0, len(read) - _OVERLAP)
        read += chunk
        at = head_end(read, limit, start)
        if at >= 0:
            return read, at
    return read, -1
