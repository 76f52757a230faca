"""What feeding detection to a worker process would cost the gateway per observation (issue 14,
target 3's alternative to analysing in the gateway's loop), measured without building the worker:
the headers the detectors read copied out of aiohttp's CIMultiDictProxy, the fields as a tuple,
1,000 of them pickled and written to a pipe read by a forked process; then what unpickling
costs the worker.

    python bench/detection_worker_feed.py

Optimistic: the bench's header values repeat, so pickle's memo shares them; a real request's
strings are its own.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.detection_micro import API, BROWSERS, T0, address  # noqa: E402  # after the path is set
from gateway.detect.observation import Observation  # noqa: E402

# What the detectors read of a request's headers (agents, browser signals, conditional requests, device cookie).
WANTED = ("User-Agent", "Accept", "Accept-Language", "Accept-Encoding", "Sec-Fetch-Mode", "Sec-Fetch-Dest",
          "If-None-Match", "If-Modified-Since", "Cookie")
BATCH, ROUNDS = 1000, 200


def main() -> None:
    observations = [
        Observation(T0 + c, "api" if c % 10 < 6 else "portal", f"cust{c}", f"user{c}@cust{c}.example", f"s{c}",
                    address(c), "GET", f"/api/v1/tickets/{c % 500}", API if c % 10 < 6 else BROWSERS[c & 1], 200,
                    None)
        for c in range(BATCH)]
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(writer)
        while os.read(reader, 1 << 20):
            pass
        os._exit(0)
    os.close(reader)
    started, data = time.process_time(), b""
    for _ in range(ROUNDS):
        rows = [(o.at, o.route_class, o.customer, o.user, o.session, o.client_ip, o.method, o.target,
                 {name: value for name in WANTED if (value := o.headers.get(name)) is not None}, o.status,
                 o.body_digest, o.subject, o.refused, o.offered_proof) for o in observations]
        data = pickle.dumps(rows, protocol=5)
        os.write(writer, data)
    fed = (time.process_time() - started) / ROUNDS / BATCH
    os.close(writer)
    os.waitpid(child, 0)
    started = time.process_time()
    for _ in range(ROUNDS):
        pickle.loads(data)
    unpickled = (time.process_time() - started) / ROUNDS / BATCH
    print(f"gateway side: {fed * 1e6:.1f} us CPU per observation (headers copied, tuple, pickle, pipe write), "
          f"{len(data) / BATCH:.0f} bytes each; worker side: {unpickled * 1e6:.1f} us to unpickle")


if __name__ == "__main__":
    main()
