"""Alerts: audit events (standings changing, findings, admin actions) POSTed as JSON to
webhooks. One alert per customer and kind within the cooldown, so a sustained problem is one
alert, not thousands (the next says how many were held back); optional HMAC signature;
retries with backoff. Each webhook has its own queue and worker: a dead receiver delays only
its own alerts, never a request."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from prometheus_client import Counter

from gateway.clock import Clock
from gateway.config.alerts import AlertSettings, Webhook

log = logging.getLogger("fairgate.alerts")

_DETAIL = {"state_change": "state", "finding": "detector", "admin_action": "action"}


class Alerts:
    def __init__(self, clock: Clock, counter: Counter | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._clock = clock
        self._counter = counter  # fairgate_alerts_total{webhook, result}
        self._sleep = sleep
        self.settings = AlertSettings()
        self._last_sent: dict[tuple[str, str, str], float] = {}
        self._held_back: dict[tuple[str, str, str], int] = {}
        self._queues: dict[str, deque[dict[str, Any]]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._delivering = 0

    def configure(self, settings: AlertSettings) -> None:
        self.settings = settings

    def on_event(self, event: dict[str, Any]) -> None:
        """Called for every audit event; queues an alert for each webhook that wants it."""
        kind = event.get("kind")
        if kind not in _DETAIL or not self.settings.webhooks:
            return
        what = f"{kind}:{event.get(_DETAIL[kind])}"
        who = str(event.get("customer") or event.get("subject") or "-")
        now = self._clock.time()
        for webhook in self.settings.webhooks:
            if kind not in webhook.events:
                continue
            key = (webhook.name, who, what)
            last = self._last_sent.get(key)
            if last is not None and now - last < self.settings.cooldown:
                self._held_back[key] = self._held_back.get(key, 0) + 1
                self._count(webhook.name, "held_back")
                continue
            if len(self._last_sent) >= 100_000:
                self._last_sent.clear()  # bounded; at worst one extra alert per key
            self._last_sent[key] = now
            alert = {"alert": what, "customer": event.get("customer"), "at": now,
                     "held_back": self._held_back.pop(key, 0), "cooldown": self.settings.cooldown, "event": event}
            self._enqueue(webhook, alert)

    def _enqueue(self, webhook: Webhook, alert: dict[str, Any]) -> None:
        queue = self._queues.setdefault(webhook.name, deque())
        if len(queue) >= self.settings.queue_size:
            dropped = queue.popleft()
            self._count(webhook.name, "dropped")
            log.error("alert queue full: oldest alert dropped", extra={"webhook": webhook.name,
                                                                        "alert": dropped["alert"]})
        queue.append(alert)
        self._ready.setdefault(webhook.name, asyncio.Event()).set()
        if webhook.name not in self._workers:
            self._workers[webhook.name] = asyncio.get_running_loop().create_task(self._work(webhook.name))

    def pending(self, webhook: str) -> int:
        return len(self._queues.get(webhook, ()))

    async def _work(self, name: str) -> None:
        queue, ready = self._queues[name], self._ready[name]
        while True:
            await ready.wait()
            ready.clear()
            while queue:
                webhook = next((w for w in self.settings.webhooks if w.name == name), None)
                alert = queue.popleft()
                if webhook is not None:  # removed by a reload: its alerts go with it
                    self._delivering += 1
                    try:
                        await self._deliver(webhook, alert)
                    finally:
                        self._delivering -= 1

    async def _deliver(self, webhook: Webhook, alert: dict[str, Any]) -> None:
        body = json.dumps(alert, sort_keys=True, default=str).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "fairgate-alerts"}
        if webhook.secret is not None:
            timestamp = str(int(self._clock.time()))
            digest = hmac.new(webhook.secret.get_secret_value().encode(), timestamp.encode() + b"." + body,
                              hashlib.sha256).hexdigest()
            headers["Fairgate-Timestamp"] = timestamp
            headers["Fairgate-Signature"] = f"sha256={digest}"
        if self._session is None:
            self._session = aiohttp.ClientSession()
        delay = self.settings.backoff
        problem = ""
        for attempt in range(self.settings.retries + 1):
            try:
                async with self._session.post(webhook.url, data=body, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=self.settings.timeout)) as response:
                    if response.status < 300:
                        self._count(webhook.name, "sent")
                        return
                    problem = f"answered {response.status}"
                    if response.status < 500 and response.status not in (408, 429):
                        break  # the receiver refuses this alert; asking again will not help
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = str(exc) or type(exc).__name__
            if attempt < self.settings.retries:
                await self._sleep(delay)
                delay *= 2
        self._count(webhook.name, "failed")
        log.error("alert not delivered", extra={"webhook": webhook.name, "alert": alert["alert"], "error": problem})

    def _count(self, webhook: str, result: str) -> None:
        if self._counter is not None:
            self._counter.labels(webhook, result).inc()

    async def close(self, grace: float) -> None:
        """Give queued alerts up to `grace` seconds to go out, then stop."""
        if self._workers:
            deadline = asyncio.get_running_loop().time() + grace
            while ((any(self._queues.values()) or self._delivering)
                   and asyncio.get_running_loop().time() < deadline):
                await asyncio.sleep(0.05)
            for task in self._workers.values():
                task.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)
            self._workers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
