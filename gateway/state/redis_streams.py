"""Event streams on Redis: the audit trail a fleet appends to and reads together."""

from __future__ import annotations

import json
from typing import Any

from gateway.state.redis_guard import Guard


class RedisStreams:
    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    async def append(self, stream: str, events: list[dict[str, Any]], max_length: int) -> None:
        def commands(pipe: Any) -> None:
            for event in events:
                pipe.xadd(stream, {"event": json.dumps(event, sort_keys=True, default=str)}, maxlen=max_length,
                          approximate=True)

        if events:
            await self._guard.write(commands, must=True)
