"""Loopback ports for servers in child processes (gateways, redis-server, the bench's targets).

A port is never handed out twice in a run, and every range sits below the kernel's ephemeral
range: a port the kernel picked (bind to 0) can be taken by an outgoing test connection before
the child binds it. Gateways and Redis servers get separate ranges, so neither takes the other's.
"""

from __future__ import annotations

import random
import socket

CHILD_PORTS = range(20000, 32001)  # gateways and other HTTP servers
REDIS_PORTS = range(7000, 9901)  # redis-server; a Cluster node's bus port is port + 10000 (17000-19900)
BUS_OFFSET = 10000

_handed_out: set[int] = set()


def free_port(ports: range = CHILD_PORTS, *, with_bus: bool = False) -> int:
    """A port in `ports` that binds now and was not handed out before; with_bus, port + 10000 too."""
    for _ in range(500):
        port = random.choice(ports)
        wanted = (port, port + BUS_OFFSET) if with_bus else (port,)
        if _handed_out.intersection(wanted) or not all(_bindable(p) for p in wanted):
            continue
        _handed_out.update(wanted)
        return port
    raise RuntimeError(f"no free loopback port found in {ports.start}-{ports.stop - 1}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
