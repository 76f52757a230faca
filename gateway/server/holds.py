"""A finder of what holds the event loop, for the bench only (bench/stalls.py): off unless the
process is started with FAIRGATE_HOLD_LOG set, and then nothing of it runs but one env lookup.

The loop histogram (loop_lag.py) says that the loop was held, not by what. Here:
- a heartbeat callback asks to run every BEAT seconds; how late it ran is how long the loop was
  held (to within BEAT: the hold may have started just after the last beat), and the loop
  thread's CPU time (`time.thread_time`) between two beats says whether it computed all that
  time or the process was descheduled (another process on the core, the VM);
- a watchdog thread looks every BEAT seconds whether the beat is late by more than the threshold
  and, if so, samples the loop thread's stack (faulthandler's, in C). The switch interval is
  lowered to BEAT while on, so a hold in Python code is sampled while it lasts; a hold inside
  one C call (a dict copy) shows as the Python line that made the call, sampled right after;
- a gc callback times every collection, with the stack that triggered it, so a hold that is a
  collection is named as one, with who allocated (or called gc.collect) when it started.

Each hold longer than the threshold is one JSON line in the log: its lateness, the loop
thread's CPU in it, the collections in it, the sampled stacks and the cause read from them."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from pathlib import Path
from types import FrameType
from typing import IO

HOLD_LOG_ENV = "FAIRGATE_HOLD_LOG"  # where the holds go, one JSON line each
HOLD_MS_ENV = "FAIRGATE_HOLD_MS"  # holds longer than this are logged (default 2)
BEAT = 0.001
INNER_DEPTH = 3
_OWN = str(Path(__file__).resolve().parent.parent)  # gateway/: frames of the gateway's own code
# Where the loop runs a callback from (asyncio's loop) or is run from (uvloop's, in C): a stack
# is read from the innermost frame out to one of these, so a task's coroutine is its outermost.
_LOOP_RUNS = frozenset({"_run", "_run_once", "run_forever", "run_until_complete", "run"})


def start_from_env(loop: asyncio.AbstractEventLoop) -> HoldFinder | None:
    path = os.environ.get(HOLD_LOG_ENV)
    if not path:
        return None
    finder = HoldFinder(open(path, "a", buffering=1), float(os.environ.get(HOLD_MS_ENV) or 2) / 1000)  # noqa: SIM115 - open for the life of the process
    finder.start(loop)
    return finder


Entry = tuple[str, int, str]  # a frame: (file, line, function), innermost first


def own_stack(frame: FrameType | None) -> list[Entry]:
    """This thread's frames (the gc callback's): safe to walk, nothing else runs meanwhile."""
    entries: list[Entry] = []
    while frame is not None:
        entries.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_qualname))
        frame = frame.f_back
    return entries


_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-f]+)")
_FRAME = re.compile(r'^  File "(.*)", line (\d+|\?\?\?) in (.*)$')


def stack_of(thread: int, scratch: int) -> list[Entry]:
    """Another thread's frames, as faulthandler writes them to the file `scratch`: in C, with
    the GIL held from the first frame to the last. Walking `f_back` from
    `sys._current_frames()` in Python lets the GIL go mid-walk, and the running thread's frames
    can be gone under it (seen on 3.11: a float where a frame was)."""
    os.ftruncate(scratch, 0)
    os.lseek(scratch, 0, os.SEEK_SET)
    faulthandler.dump_traceback(scratch, all_threads=True)
    size = os.lseek(scratch, 0, os.SEEK_CUR)
    entries: list[Entry] = []
    mine = False
    for text in os.pread(scratch, size, 0).decode("utf-8", "replace").splitlines():
        if header := _THREAD.match(text):
            mine = int(header.group(1), 16) == thread
        elif mine and (frame := _FRAME.match(text)):
            number = frame.group(2)
            entries.append((frame.group(1), int(number) if number.isdigit() else 0, frame.group(3)))
    return entries


def where(stack: list[Entry]) -> tuple[str, str, str]:
    """(task, inner, line): the outermost frame of the gateway's own code (the coroutine a task
    runs: the sweeper, a request handler...), the innermost INNER_DEPTH of them with their lines
    (innermost first: which table's `put` it was), and the innermost frame anywhere with its
    line (a library's, when the gateway called into one)."""
    outer = ""
    inner: list[str] = []
    line = _name(stack[0], with_line=True) if stack else ""
    for entry in stack:
        path, _, function = entry
        own = path.startswith(_OWN)
        if not own and function.rsplit(".", 1)[-1] in _LOOP_RUNS:
            break
        if own:
            outer = _name(entry)
            if len(inner) < INNER_DEPTH:
                inner.append(_name(entry, with_line=True))
    return outer or "(no gateway frame)", " < ".join(inner), line


def _name(entry: Entry, with_line: bool = False) -> str:
    path, number, function = entry
    short = path[len(_OWN) - len("gateway"):] if path.startswith(_OWN) else "/".join(path.rsplit("/", 2)[-2:])
    return f"{short}:{function}:{number}" if with_line else f"{short}:{function}"


class HoldFinder:
    def __init__(self, out: IO[str], threshold: float) -> None:
        self._out = out
        self._threshold = threshold
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = threading.get_ident()
        self._due = self._last_wall = time.perf_counter()
        self._last_cpu = time.thread_time()
        self._beat_no = 0
        self._samples: deque[tuple[int, tuple[str, str, str]]] = deque()  # (beat number, where)
        self._collections: deque[tuple[float, float, int, tuple[str, str, str] | None]] = deque()
        self._gc_started = 0.0
        self._gc_where: tuple[str, str, str] | None = None
        self._stopped = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="hold-watchdog", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        sys.setswitchinterval(BEAT)
        gc.callbacks.append(self._on_gc)
        self._schedule()
        self._watchdog.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._out.close()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = time.perf_counter() + BEAT
        self._loop.call_later(BEAT, self._beat)

    def _beat(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        late, since, beat = now - self._due, self._last_wall, self._beat_no
        self._beat_no += 1
        self._last_wall, self._last_cpu, last_cpu = now, cpu, self._last_cpu
        if self._stopped.is_set():
            return
        self._schedule()
        # Copies taken in one C call each: the watchdog thread appends to both (a collection
        # may start in it) whenever the GIL switches, which it may do in a Python loop.
        samples, collections = list(self._samples), list(self._collections)
        self._samples.clear()
        while self._collections and self._collections[0][1] < now:
            self._collections.popleft()
        if late > self._threshold:
            self._log(since, now, late, cpu - last_cpu, [at for n, at in samples if n == beat], collections)

    def _log(self, since: float, now: float, late: float, cpu: float, sampled: list[tuple[str, str, str]],
             all_collections: list[tuple[float, float, int, tuple[str, str, str] | None]]) -> None:
        samples = Counter(sampled)
        collections = [(stop - start, generation, at) for start, stop, generation, at in all_collections
                       if stop > since and start < now]
        gc_seconds = sum(seconds for seconds, _, _ in collections)
        if gc_seconds > late / 2:
            longest = max(collections)
            cause = f"gc gen{longest[1]} from {(longest[2] or ('?', '', ''))[0]}"
        elif cpu < (now - since) / 2:
            cause = "descheduled (little CPU in the hold)"
        elif samples:
            cause = samples.most_common(1)[0][0][0]
        else:
            cause = "(not sampled)"
        self._out.write(json.dumps({
            "at": round(now, 4), "late_ms": round(late * 1000, 3), "cpu_ms": round(cpu * 1000, 3),
            "since_beat_ms": round((now - since) * 1000, 3),
            "gc_ms": round(gc_seconds * 1000, 3), "cause": cause,
            "collections": [{"ms": round(s * 1000, 3), "generation": g, "from": list(at or ())}
                            for s, g, at in collections],
            "samples": [[*at, count] for at, count in samples.most_common()],
        }) + "\n")

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            self._gc_where = where(own_stack(sys._getframe(1)))
        else:
            self._collections.append((self._gc_started, time.perf_counter(), info["generation"], self._gc_where))

    def _watch(self) -> None:
        with tempfile.TemporaryFile() as scratch:
            # A sleep, not Event.wait(BEAT): a timed condition wait never returns under libfaketime
            # (the suite runs with the clock a year ahead), a relative sleep does.
            while not self._stopped.is_set():
                time.sleep(BEAT)
                if self._stopped.is_set():
                    break
                beat = self._beat_no
                if time.perf_counter() - self._due > self._threshold:
                    self._samples.append((beat, where(stack_of(self._loop_thread, scratch.fileno()))))
