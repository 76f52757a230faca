"""What a track remembers having written to the sightings store lately, so that a request seen
again the same way within `every` seconds is not written again.

Kept in the identity's own track as one flat tuple, (epoch, mark, at, mark, at, ...) oldest
first, where a mark is the hash of what the request is written as (path and query, agent,
session; or session, address, agent, device). Why not one table of marks for the process: a
reader of distinct records makes a new mark with every request, so that table held dozens of
entries per active customer (a tuple key, a float and an OrderedDict node, about 250 bytes
each); here a mark is two numbers, and a tuple of numbers is no object for the garbage
collector to walk (issue 14). Marks older than `every` say nothing more and are dropped. A
different `epoch` (nothing reached the store: `Context.forget_written`) voids them all.
"""

from __future__ import annotations

Written = tuple[int | float, ...]
_KEPT = 32  # marks at most: past it the oldest goes (that request is written once more if it comes back)


def due(written: Written, mark: int, at: float, every: float, epoch: int) -> Written | None:
    """The marks with `mark` written at `at`, or None if it was written within `every` seconds."""
    if not written or written[0] != epoch:
        return (epoch, mark, at)
    if mark in written:  # a scan in C; then a proper look (it may be stale, or a time equal to it)
        for n in range(1, len(written), 2):
            if written[n] == mark and at - written[n + 1] < every:
                return None
    # Oldest first: what left its `every` is at the front (a stale copy further in is harmless:
    # the look above skips it, and it reaches the front in its turn).
    start, end = 1, len(written)
    while start < end and at - written[start + 1] >= every:
        start += 2
    if end - start >= _KEPT * 2:
        start += 2
    return (epoch, *written[start:], mark, at)
