"""`--workers N`: N gateway processes sharing one port through SO_REUSEPORT.

The supervisor starts workers, forwards signals to them and restarts any that die after they
started serving, waiting longer after each crash. A worker that cannot start (port taken, bad
audit path) would fail the same way every time: the supervisor stops them all and exits 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from gateway.server.admin import SUPERVISOR_ENV

log = logging.getLogger("fairgate.supervisor")

READY_FD_ENV = "FAIRGATE_READY_FD"
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_TICK = 0.1  # how often the supervisor looks at its workers
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# A worker that served this long since its last restart is healthy again: back to FIRST_BACKOFF.
_STEADY = 60.0


def announce_ready() -> None:
    """Called by a worker once it listens: tells the supervisor that start-up succeeded."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"1")
        os.close(int(fd))
    except OSError:
        pass  # the supervisor is gone; nothing to tell


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    ready_fd: int  # read end of the pipe the worker writes to once it listens
    started: float
    ready: bool = False
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = None  # set while waiting to restart after a crash

    def check_ready(self) -> bool:
        if not self.ready:
            with contextlib.suppress(BlockingIOError):
                self.ready = bool(os.read(self.ready_fd, 1))
        return self.ready


@dataclass
class Supervisor:
    worker_argv: list[str]
    count: int
    workers: list[_Worker] = field(default_factory=list)
    stopping: bool = False

    def spawn(self, backoff: float = FIRST_BACKOFF) -> _Worker:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid()), READY_FD_ENV: str(write_fd)}
        # A session of their own: a terminal's Ctrl-C reaches the supervisor once, not every worker.
        process = subprocess.Popen([sys.executable, "-m", "gateway", *self.worker_argv], env=env,
                                   start_new_session=True, pass_fds=(write_fd,))
        os.close(write_fd)
        return _Worker(process, read_fd, time.monotonic(), backoff=backoff)

    def forward(self, signum: int, _frame: object = None) -> None:
        if signum != signal.SIGHUP:
            self.stopping = True
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    def run(self) -> int:
        self.workers = [self.spawn() for _ in range(self.count)]
        for sig in _FORWARDED:
            signal.signal(sig, self.forward)
        log.info("supervising workers", extra={"workers": [w.process.pid for w in self.workers]})
        while True:
            if self.stopping:
                return self._stop()
            for index, worker in enumerate(self.workers):
                code = self.tick(index, worker)
                if code is not None:
                    return code
            time.sleep(_TICK)

    def tick(self, index: int, worker: _Worker) -> int | None:
        """Look at one worker; an exit code ends the supervisor."""
        if self.stopping:
            return None  # workers now exit because they were told to
        now = time.monotonic()
        if worker.restart_at is not None:
            if now >= worker.restart_at:
                os.close(worker.ready_fd)
                self.workers[index] = self.spawn(worker.backoff)
            return None
        worker.check_ready()
        code = worker.process.poll()
        if code is None:
            return None
        if not worker.check_ready():
            print(f"fairgate run: worker {worker.process.pid} failed at start-up (exit {code}); "
                  "stopping every worker", file=sys.stderr)
            self.forward(signal.SIGTERM)
            self._stop()
            return 1
        delay = FIRST_BACKOFF if now - worker.started >= _STEADY else worker.backoff
        log.error("worker %d exited (code %d); restarting in %.1f s", worker.process.pid, code, delay,
                  extra={"pid": worker.process.pid, "code": code, "delay": delay})
        worker.restart_at = now + delay
        worker.backoff = min(delay * 2, MAX_BACKOFF)
        return None

    def _stop(self) -> int:
        codes = [worker.process.wait() for worker in self.workers if worker.restart_at is None]
        for worker in self.workers:
            os.close(worker.ready_fd)
        # A worker still starting up dies of the forwarded signal itself; it was not
        # serving anything yet, so that is a clean stop too.
        clean = (0, -signal.SIGTERM, -signal.SIGINT)
        return 0 if all(code in clean for code in codes) else 1


def supervise(worker_argv: list[str], count: int) -> int:
    return Supervisor(worker_argv, count).run()
