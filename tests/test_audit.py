"""The audit trail: a hash chain that shows where it was tampered with, continues across
restarts, and keeps every event of a gateway stopped with SIGTERM under load."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import aiohttp
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import GENESIS, chain_line, verify
from gateway.audit.trail import AuditTrail
from gateway.config.enforcement import AuditSettings
from tests.conftest import ROOT, ManualClock, free_port, gateway_config
from tests.test_auth import bearer, hs_issuer, hs_token


async def write_events(path, count: int, start: int = 0) -> None:
    trail = AuditTrail(ManualClock())
    trail.configure(AuditSettings(path=path))
    for n in range(start, start + count):
        trail.record("violation", customer="acme", n=n)
    await trail.drain()


def fairgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True)


async def test_an_intact_chain_verifies_and_continues_across_restarts(tmp_path):
    path = tmp_path / "audit.jsonl"
    await write_events(path, 5)
    await write_events(path, 3, start=5)  # a restart appends to the same chain
    verdict = verify(path)
    assert verdict.ok and verdict.lines == 8
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == list(range(8))
    result = fairgate("audit", "verify", str(path))
    assert result.returncode == 0 and "8 events, chain intact" in result.stdout


async def test_tampering_is_found_at_the_right_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    await write_events(path, 6)
    lines = path.read_text().splitlines()

    edited = json.loads(lines[2])
    edited["customer"] = "someone-else"
    path.write_text("\n".join([*lines[:2], json.dumps(edited), *lines[3:]]) + "\n")
    verdict = verify(path)
    assert (verdict.broken_at, verdict.lines) == (3, 2) and "edited" in verdict.problem
    result = fairgate("audit", "verify", str(path))
    assert result.returncode == 1 and "line 3:" in result.stdout

    path.write_text("\n".join([*lines[:3], *lines[4:]]) + "\n")  # line 4 removed
    verdict = verify(path)
    assert verdict.broken_at == 4 and "removed" in verdict.problem

    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])  # a torn last line
    assert verify(path).broken_at == 6


async def test_every_event_survives_sigterm_under_load(tmp_path, upstream, gateway_process):
    port, admin_port = free_port(), free_port()
    config = gateway_config(upstream.url, auth={"issuers": [hs_issuer()]})
    config["server"]["listen"] = f"127.0.0.1:{port}"
    config["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    config["limits"] = {"default_plan": "tight"}
    config["plans"] = {"tight": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/min", "burst": 1}]}}
    audit = tmp_path / "audit.jsonl"
    # A long flush interval: whatever is written, the shutdown wrote.
    config["enforcement"] = {"mode": "enforce", "audit": {"path": str(audit), "flush_interval": "1h"}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    process = gateway_process(path)
    await asyncio.to_thread(process.wait_ready, f"http://127.0.0.1:{admin_port}")

    rejected = 0
    stop = asyncio.Event()

    async def load(session: aiohttp.ClientSession, headers: dict) -> None:
        nonlocal rejected
        while not stop.is_set():
            try:
                async with session.get(f"http://127.0.0.1:{port}/echo/x", headers=headers) as response:
                    rejected += response.status == 429
            except aiohttp.ClientError:
                return  # the gateway stopped listening

    token = hs_token(ManualClock(time.time()))
    async with aiohttp.ClientSession() as session:
        workers = [asyncio.create_task(load(session, bearer(token))) for _ in range(8)]
        while rejected < 200:
            await asyncio.sleep(0.01)
        process.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.process.wait, 20)
        stop.set()
        await asyncio.gather(*workers)

    assert process.process.returncode == 0
    assert verify(audit).ok
    violations = [json.loads(line) for line in audit.read_text().splitlines()
                  if json.loads(line)["kind"] == "violation"]
    assert sum(event["count"] for event in violations) == rejected


async def test_events_also_reach_a_redis_stream_for_the_fleet(start_gateway, upstream, client, redis_url, key_prefix):
    import redis.asyncio as redis_asyncio

    from tests.test_enforcement import ADMIN, enforcement_config

    stream = f"{key_prefix}:audit-stream"
    config = enforcement_config(upstream)
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}-audit"}
    config["enforcement"]["audit"] = {"redis_stream": stream, "flush_interval": "1h"}
    gateway = await start_gateway(config)
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                           json={"for": "1h", "reason": "abuse report"}) as response:
        assert response.status == 201
    await gateway.server.state.audit.flush()
    reader = redis_asyncio.Redis.from_url(redis_url)
    try:
        entries = await reader.xrange(stream)
        await reader.delete(stream)
    finally:
        await reader.aclose()
    kinds = [json.loads(fields[b"event"])["kind"] for _, fields in entries]
    assert kinds == ["state_change", "admin_action"]


events_strategy = st.lists(
    st.fixed_dictionaries({"kind": st.sampled_from(["violation", "finding", "state_change", "admin_action"]),
                           "customer": st.text(min_size=1, max_size=12), "at": st.floats(0, 2e9),
                           "detail": st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8),
                                                     max_size=3)}),
    min_size=1, max_size=12)


@given(events=events_strategy, data=st.data())
@settings(max_examples=60, deadline=None)
def test_any_edit_of_any_line_is_found_at_that_line(tmp_path_factory, events, data):
    path = tmp_path_factory.mktemp("chain") / "audit.jsonl"
    prev, lines = GENESIS, []
    for event in events:
        line, prev = chain_line(event, prev)
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    assert verify(path).ok and verify(path).lines == len(lines)

    target = data.draw(st.integers(0, len(lines) - 1))
    edited = json.loads(lines[target])
    edited["customer"] = edited["customer"] + data.draw(st.text(min_size=1, max_size=3))
    path.write_text("\n".join([*lines[:target], json.dumps(edited), *lines[target + 1:]]) + "\n")
    assert verify(path).broken_at == target + 1
