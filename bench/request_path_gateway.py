"""`python -m gateway run` with no background task once it listens: detection and enforcement
batches, usage flush, fleet, audit, table sweep, loop-lag probe and the periodic generational
freeze are all stopped (the start-up freeze and GC thresholds stay).

For counting a request's own instructions (`bench/callgrind_request.py --no-background`): those
tasks run on timers, so under valgrind on a loaded machine they add instructions per wall-second,
not per request, and their rate while the gateway is busy is not the idle rate that would be
subtracted. Only for routes whose requests leave them no work (the "plain" scenario: no login,
no detection; its limits are decided in-process by the memory store).
"""

from __future__ import annotations

import sys

from gateway.cli import main
from gateway.server import lifecycle

_start = lifecycle.GatewayServer.start


async def _start_quietly(self: lifecycle.GatewayServer) -> None:
    await _start(self)
    for task in self._background:
        task.cancel()


lifecycle.GatewayServer.start = _start_quietly  # type: ignore[method-assign]  # the bench's variant
lifecycle._start_freezing = lambda config, metrics, loop: None

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
