"""Usage metering: the report matches the traffic sent, byte for byte and request for request,
per day, on memory and on Redis; overage is marked; the CLI prints the same numbers."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import os
import subprocess
import sys
import time

import pytest

from tests.support.clock import ManualClock
from tests.support.configs import gateway_config
from tests.support.paths import ROOT
from tests.support.tokens import ADMIN_TOKEN, bearer, hs_issuer, hs_token

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOV_21 = dt.date(2026, 11, 21)


def real_today() -> dt.date:
    """Today by the real clock (the one Redis keeps), or yesterday on a month's last day: the test
    moves one day on within the month."""
    today = dt.datetime.fromtimestamp(time.time(), dt.UTC).date()
    return today if (today + dt.timedelta(days=1)).month == today.month else today - dt.timedelta(days=1)


@pytest.fixture(params=["memory", "redis"])
def state_url(request):
    if request.param == "memory":
        return {"url": "memory://"}
    # A generous wait: on a loaded machine a slow answer would fall back to this process's own
    # counts (the designed degradation), which is not what these tests are about.
    return {"url": request.getfixturevalue("redis_url"), "key_prefix": f"{request.getfixturevalue('key_prefix')}-usage",
            "timeout": "5s"}


def usage_config(upstream, state: dict) -> dict:
    config = gateway_config(
        upstream.url, auth={"issuers": [hs_issuer()]},
        routes=[{"name": "reports", "path_prefix": "/echo/reports/", "upstream": "app", "cost": 5},
                {"name": "all", "path_prefix": "/", "upstream": "app"}],
    )
    config["limits"] = {"default_plan": "standard"}
    config["plans"] = {"standard": {"limits": [
        {"name": "monthly-bytes", "kind": "quota", "metric": "bytes", "period": "month", "limit": 2000,
         "action": "flag"},
        {"name": "daily-requests", "kind": "quota", "metric": "requests", "period": "day", "limit": 7},
    ]}}
    config["state"] = state
    return config


@pytest.mark.parametrize("first_day", [NOV_21, None], ids=["2026-11-21", "today"])
async def test_usage_report_matches_the_traffic(start_gateway, upstream, client, state_url, first_day):
    # A pinned day long before (or after) the real one, and the real one: Redis keeps its own clock.
    first_day = first_day or real_today()
    next_day, month = first_day + dt.timedelta(days=1), first_day.strftime("%Y-%m")
    clock = ManualClock(dt.datetime.combine(first_day, dt.time(1), dt.UTC).timestamp())
    gateway = await start_gateway(usage_config(upstream, state_url), clock=clock)
    token = bearer(hs_token(clock))
    sent_in = sent_out = 0
    for path, body in (("/echo/a", b"x" * 100), ("/echo/reports/b", b"y" * 250), ("/echo/c", b"")):
        async with client.post(f"{gateway.url}{path}", data=body, headers=token) as response:
            assert response.status == 200
            sent_out += len(await response.read())
        sent_in += len(body)
    statuses = []
    for _ in range(2):
        async with client.get(f"{gateway.url}/echo/d", headers=token) as response:
            statuses.append(response.status)
    assert statuses == [429, 429]
    clock.advance(86400)  # the next day
    token = bearer(hs_token(clock))
    async with client.post(f"{gateway.url}/echo/e", data=b"z" * 40, headers=token) as response:
        assert response.status == 200  # a new day, a new daily quota
        next_day_out = len(await response.read())

    async with client.get(f"{gateway.admin_url}/admin/usage", params={"month": month}, headers=ADMIN) as response:
        assert response.status == 200
        (row,) = (await response.json())["customers"]
    assert (row["customer"], row["plan"], row["requests"], row["units"]) == ("acme", "standard", 4, 8)
    assert row["bytes_in"] == sent_in + 40 and row["bytes_out"] == sent_out + next_day_out
    assert row["rejected"] == {"quota-exceeded": 2}
    assert row["days"][first_day.isoformat()]["requests"] == 3 and row["days"][next_day.isoformat()]["bytes_in"] == 40
    monthly, daily = row["quotas"]
    total_bytes = sent_in + sent_out + 40 + next_day_out
    assert total_bytes > 2000 and (monthly["used"], monthly["over"]) == (total_bytes, total_bytes - 2000)
    assert daily["used"] == 7 and daily["days_over"] == []  # 1 + 5 + 1 units on the 21st: at the quota
    assert row["over"] is True
    async with client.get(f"{gateway.admin_url}/admin/customers", headers=ADMIN) as response:
        (listed,) = (await response.json())["customers"]
    assert (listed["id"], listed["plan"], listed["state"], listed["findings"]) == ("acme", "standard", "ok", 0)
    assert listed["usage"]["over"] is True and listed["usage"]["month"] == month

    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "usage", "--month", month, "--format", "csv",
                         "--admin", gateway.admin_url],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "FAIRGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert result.returncode == 0, result.stderr
    (printed,) = list(csv.DictReader(io.StringIO(result.stdout)))
    assert (printed["requests"], printed["bytes_in"], printed["over"]) == ("4", str(sent_in + 40), "OVER")
    assert printed["quotas"] == (f"monthly-bytes {total_bytes:,}/2,000 B OVER by {total_bytes - 2000:,} B; "
                                 "daily-requests 7/7")


async def test_usage_cli_explains_what_is_wrong(start_gateway, upstream):
    def usage(*args: str, token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "FAIRGATE_ADMIN_TOKEN"}
        if token:
            env["FAIRGATE_ADMIN_TOKEN"] = token
        return subprocess.run([sys.executable, "-m", "gateway", "usage", *args], cwd=ROOT, capture_output=True,
                              text=True, env=env)

    assert usage("--month", "2026-13").returncode == 2
    missing = usage("--month", "2026-11", token=None)
    assert missing.returncode == 2 and "FAIRGATE_ADMIN_TOKEN" in missing.stderr
    gateway = await start_gateway(usage_config(upstream, {"url": "memory://"}))
    wrong = await asyncio.to_thread(usage, "--month", "2026-11", "--admin", gateway.admin_url, token="nope")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    empty = await asyncio.to_thread(usage, "--month", "2026-11", "--admin", gateway.admin_url)
    assert empty.returncode == 0 and "no usage in 2026-11" in empty.stdout


async def test_a_flush_of_many_customers_lets_the_loop_run_between_chunks_and_stores_every_one():
    import zoneinfo

    from gateway.calendar import Calendar
    from gateway.state.memory import MemoryStore
    from gateway.usage.meter import UsageMeter

    clock = ManualClock()
    meter = UsageMeter(MemoryStore(), clock, Calendar(zoneinfo.ZoneInfo("UTC")))
    for n in range(2_000):
        meter.forwarded(f"c{n}", 2, 10, 20, 0.5)
    turns = 0
    done = False

    async def other_work() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    await meter.flush()
    done = True
    await task
    assert turns >= 2_000 // 250  # a turn of other work at least between chunks
    month = dt.datetime.fromtimestamp(clock.time(), dt.UTC).strftime("%Y-%m")
    stored = await meter.month(month)
    day = dt.datetime.fromtimestamp(clock.time(), dt.UTC).strftime("%d")
    assert len(stored) == 2_000
    assert all(stored[f"c{n}"][f"{day}:units"] == 2 for n in range(2_000))
