"""Where the policy path's time goes per request, stage by stage, at a given customer count:
the real gateway state built in-process (bench/memory_per_customer.py's every-policy config),
each customer's token sent once (warm), then requests in rotation over all of them at a
virtual request rate, as `bench/rotate.lua` sends them to a gateway doing `--rate` req/s.

    python bench/policy_stages.py --customers 400,20000,200000 [--rate 1800] [--requests 40000]

The rate matters: the detectors write a login's sightings again only once `_PATHS_EVERY` (6 s)
or `_SHARING_EVERY` (15 s) passed since it was last seen the same way, so at 1,800 req/s 400
customers are each back within 0.2 s (nothing new to write) while 20,000 come back every 11 s
(every request writes and asks). The clock is injected and moves 1/rate per request.

Each stage is timed in CPU time of the thread (`thread_time_ns` around it, less what a reading
itself costs, calibrated first: a few us each in this VM, where wall time under load would
count other processes' turns); the background batches (detection drain, the
enforcement queue, usage flush, limiter write-back) run every 100 ms of virtual time as a
running gateway's would and count as the request's. Each count runs in its own child process.
`PYTHONPATH=/other/tree` measures that tree's gateway (A/B).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: another tree's gateway wins for an A/B

from bench.memory_per_customer import CONFIG, ISSUER, SECRET, tokens  # noqa: E402  # after the path is set

STAGES = ("auth", "enforcement", "limits_admit", "limits_finish", "usage", "detection_observe",
          "detection_drain", "background_other")
# Stages timed on every request (each pays one clock reading); the batches' are rare.
_EVERY = frozenset(STAGES[:6])
_BATCH_EVERY = 0.1  # seconds of virtual time between background batches (the gateways' flush interval)


async def measure(count: int, requests: int, rate: float) -> dict[str, object]:
    from multidict import CIMultiDict, CIMultiDictProxy

    from gateway.config.loader import load_config
    from gateway.server.lifecycle import GatewayServer, ServeOptions
    from tests.support.clock import ManualClock

    clock = ManualClock(time.time())
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "gateway.yaml"
        path.write_text(CONFIG.format(issuer=ISSUER, secret=SECRET))
        server = GatewayServer(load_config(path), ServeOptions(str(path), clock=clock))
        state, runtime = server.state, server.runtimes.current
        target = runtime.router.match(None, "/detect/bench")
        assert target is not None and runtime.limiter is not None and runtime.usage is not None
        authenticator, enforcement, limiter, usage = runtime.authenticator, runtime.enforcement, runtime.limiter, \
            runtime.usage
        detection, route = runtime.detection, target.route
        bearer = [f"Bearer {token}" for token in tokens(count)]
        headers = CIMultiDictProxy(CIMultiDict({"Host": "127.0.0.1", "User-Agent": "wrk",
                                                "Authorization": bearer[0]}))
        spent = dict.fromkeys(STAGES, 0)
        step = 1.0 / rate
        next_batch = clock.time() + _BATCH_EVERY
        ns = time.thread_time_ns
        calibration = [ns() for _ in range(10_001)]
        reading = (calibration[-1] - calibration[0]) / 10_000  # one clock reading's own CPU time

        async def one(n: int, timed: bool) -> None:
            nonlocal next_batch
            authorization = bearer[n % count]
            t0 = ns()
            identity = await authenticator.authenticate(authorization, "127.0.0.1", required=True, scopes=())
            t1 = ns()
            standing = enforcement.admit(identity)
            t2 = ns()
            admission = await limiter.admit(identity, route, "127.0.0.1", f"r{n}", throttle=1.0)
            t3 = ns()
            limiter.finish(admission, 134, 0.0004)
            t4 = ns()
            assert identity is not None and standing is None
            usage.forwarded(identity.customer, route.cost, 0, 67, 0.0004, identity.licenses, admission.plan)
            t5 = ns()
            detection.observe_request(route.route_class, identity, "127.0.0.1", "GET", "/detect/bench", headers,
                                      200, None)
            t6 = ns()
            clock.advance(step)
            drain = other = 0
            if clock.time() >= next_batch:
                next_batch += _BATCH_EVERY
                b0 = ns()
                await state.detection.drain()
                b1 = ns()
                await state.enforcement.drain()
                await limiter.drain()
                await usage.flush()
                server.sweeper.tick()
                drain, other = b1 - b0, ns() - b1
            if timed:
                for stage, took in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, drain, other),
                                       strict=True):
                    spent[stage] += took

        for n in range(count):  # every token once: verified and tracked before the counted requests
            await one(n, False)
        started = time.process_time()
        for n in range(count, count + requests):
            await one(n, True)
        cpu = time.process_time() - started
        total = sum(spent.values())
        import gateway

        return {"gateway": gateway.__file__, "customers": count, "rate": rate, "requests": requests,
                "cpu_us_per_request": round(cpu / requests * 1e6, 1),
                "timed_us_per_request": round(total / requests / 1000, 1),
                "clock_reading_us": round(reading / 1000, 2),
                "us_per_request": {stage: round(took / requests / 1000 - (reading / 1000 if stage in _EVERY else 0), 2)
                                   for stage, took in spent.items()},
                "share": {stage: round(took / total, 3) for stage, took in spent.items()},
                "tracked": state.detection.tracked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", default="400,20000", help="comma-separated counts")
    parser.add_argument("--requests", type=int, default=40_000, help="counted requests per count")
    parser.add_argument("--rate", type=float, default=1800.0, help="virtual requests per second")
    parser.add_argument("--one", type=int, help="one count in this process (JSON out)")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(asyncio.run(measure(args.one, args.requests, args.rate))))
        return
    for count in (int(part) for part in args.customers.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(count), "--requests", str(args.requests),
                              "--rate", str(args.rate)], check=True, capture_output=True, text=True).stdout
        result = json.loads(out)
        stages = ", ".join(f"{stage} {us}" for stage, us in result["us_per_request"].items())
        print(f"{count} customers at {args.rate:.0f} req/s: CPU {result['cpu_us_per_request']} us/request "
              f"stages {stages}", flush=True)
    print(f"gateway package: {result['gateway']}")


if __name__ == "__main__":
    main()
