"""`--workers N`: N gateway processes sharing one port through SO_REUSEPORT.

The supervisor only starts workers, forwards signals to them and restarts any that die.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from gateway.server.admin import SUPERVISOR_ENV

log = logging.getLogger("fairgate.supervisor")

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def supervise(worker_argv: list[str], count: int) -> int:
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}

    def spawn() -> subprocess.Popen:
        # A session of their own: a terminal's Ctrl-C reaches the supervisor once, not every worker.
        return subprocess.Popen([sys.executable, "-m", "gateway", *worker_argv], env=env, start_new_session=True)

    workers = [spawn() for _ in range(count)]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    log.info("supervising workers", extra={"workers": [w.pid for w in workers]})
    while True:
        if stopping:
            codes = [worker.wait() for worker in workers]
            # A worker still starting up dies of the forwarded signal itself; it was not
            # serving anything yet, so that is a clean stop too.
            clean = (0, -signal.SIGTERM, -signal.SIGINT)
            return 0 if all(code in clean for code in codes) else 1
        for index, worker in enumerate(workers):
            code = worker.poll()
            if code is not None and not stopping:
                log.error("worker exited; restarting", extra={"pid": worker.pid, "code": code})
                workers[index] = spawn()
        time.sleep(0.5)
