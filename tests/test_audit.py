"""The audit trail: a hash chain that shows where it was tampered with, continues across
restarts, and keeps every event of a gateway stopped with SIGTERM under load."""

from __future__ import annotations

import asyncio
import base64
import hashlib
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
from tests.support.clock import ManualClock
from tests.support.configs import gateway_config
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.tokens import ADMIN_TOKEN, bearer, hs_issuer, hs_token
from tests.support.waiting import wait_until


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
        await wait_until(lambda: rejected >= 200, timeout=60, message=lambda: f"only {rejected} requests refused")
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

    from tests.support.configs import enforcement_config
    from tests.support.tokens import ADMIN

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


# -- faults: a crash mid-line, a full disk, lines cut off the end, an unusable path -------------

def audit_process_config(tmp_path, upstream, audit) -> tuple:
    from tests.support.configs import enforcement_config

    port, admin_port = free_port(), free_port()
    config = enforcement_config(upstream)
    config["server"]["listen"] = f"127.0.0.1:{port}"
    config["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    config["enforcement"]["audit"] = {"path": str(audit), "flush_interval": "50ms"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, f"http://127.0.0.1:{admin_port}"


async def suspend(admin_url: str, customer: str) -> None:
    from tests.support.tokens import ADMIN

    async with aiohttp.ClientSession() as session, session.post(
            f"{admin_url}/admin/customers/{customer}/suspend", headers=ADMIN,
            json={"for": "1h", "reason": "abuse report"}) as response:
        assert response.status == 201


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_torn_last_line_is_sealed_at_start_and_the_chain_goes_on(tmp_path, upstream, gateway_process):
    audit = tmp_path / "audit.jsonl"
    config, admin_url = audit_process_config(tmp_path, upstream, audit)
    env = {"FAIRGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    first = gateway_process(config, env=env)
    await asyncio.to_thread(first.wait_ready, admin_url)
    await suspend(admin_url, "acme")
    await wait_until(lambda: audit.exists() and len(audit.read_bytes().splitlines()) == 2)
    first.process.kill()  # SIGKILL: no drain
    await asyncio.to_thread(first.process.wait, 10)
    torn = b'{"at":1800000000.0,"customer":"acme","kind":"admin_ac'  # what a crash mid-write leaves
    with audit.open("ab") as file:
        file.write(torn)

    second = gateway_process(config, env=env)
    await asyncio.to_thread(second.wait_ready, admin_url)
    await suspend(admin_url, "globex")
    second.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.process.wait, 20) == 0

    result = fairgate("audit", "verify", str(audit))
    assert result.returncode == 0, result.stdout
    assert "5 events, chain intact" in result.stdout
    assert f"line 3: recorded at start-up: a torn last line of {len(torn)} bytes" in result.stdout
    events = lines_of(audit)
    assert [e["kind"] for e in events] == ["state_change", "admin_action", "audit_torn_tail_sealed",
                                           "state_change", "admin_action"]
    seal = events[2]
    assert base64.b64decode(seal["fragment_base64"]) == torn and seal["bytes"] == len(torn)
    assert seal["sha256"] == hashlib.sha256(torn).hexdigest()


# Appends that hit the file size limit (RLIMIT_FSIZE: a full disk, as the kernel reports it) write
# part of a line, then fail; raising the limit again is the disk getting room.
PARTIAL_WRITE = """
import asyncio, resource, sys
from pathlib import Path
from gateway.audit.trail import AuditTrail
from gateway.clock import SYSTEM_CLOCK
from gateway.config.enforcement import AuditSettings

async def main(path):
    trail = AuditTrail(SYSTEM_CLOCK)
    trail.configure(AuditSettings(path=path))
    for n in range(100):
        trail.record("violation", customer="acme", n=n)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (5000, hard))
    await trail.flush()
    print("after the failed flush", path.stat().st_size, flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    await trail.drain()

asyncio.run(main(Path(sys.argv[1])))
"""


def test_a_write_that_fails_half_way_loses_and_repeats_nothing(tmp_path):
    audit = tmp_path / "audit.jsonl"
    result = subprocess.run([sys.executable, "-c", PARTIAL_WRITE, str(audit)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "audit file write failed" in result.stderr
    assert verify(audit).ok, verify(audit)
    assert [event["n"] for event in lines_of(audit)] == list(range(100))  # each once, in order


async def test_lines_cut_off_the_end_are_reported_and_recorded_at_restart(tmp_path):
    audit = tmp_path / "audit.jsonl"
    await write_events(audit, 6)
    lines = audit.read_bytes().splitlines(keepends=True)
    audit.write_bytes(b"".join(lines[:4]))  # the last two events removed whole: the chain still holds
    assert verify(audit).lines == 4

    result = fairgate("audit", "verify", str(audit))
    assert result.returncode == 1
    assert "line 5: the file ends early: audit.jsonl.checkpoint records 6 events, 2 were cut off the end" \
        in result.stdout

    await write_events(audit, 2, start=6)  # a restart finds it and says so in the chain
    result = fairgate("audit", "verify", str(audit))
    assert result.returncode == 0, result.stdout
    assert "7 events, chain intact" in result.stdout
    assert "line 5: recorded at start-up: the file was shorter than its checkpoint (6 events" in result.stdout
    assert [e.get("n") for e in lines_of(audit)] == [0, 1, 2, 3, None, 6, 7]


def unusable_audit_path(tmp_path):
    (tmp_path / "not-a-directory").write_text("")
    return tmp_path / "not-a-directory" / "audit.jsonl"


def test_check_config_and_run_refuse_an_unusable_audit_path(tmp_path, upstream):
    audit = unusable_audit_path(tmp_path)
    config, _ = audit_process_config(tmp_path, upstream, audit)
    expected = f"{config}: enforcement.audit.path: {audit.parent} is not a directory"
    checked = fairgate("check-config", str(config))
    assert checked.returncode == 1 and expected in checked.stdout + checked.stderr
    ran = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(config)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 1
    assert expected in ran.stdout + ran.stderr
    assert "Traceback" not in ran.stdout + ran.stderr


async def test_a_reload_to_an_unusable_audit_path_keeps_the_old_trail(start_gateway, upstream, client, tmp_path):
    from tests.support.configs import enforcement_config
    from tests.support.tokens import ADMIN

    audit = tmp_path / "audit.jsonl"
    config = enforcement_config(upstream)
    config["enforcement"]["audit"] = {"path": str(audit), "flush_interval": "1h"}
    gateway = await start_gateway(config)
    served = yaml.safe_load(gateway.config_path.read_text())
    served["enforcement"]["audit"]["path"] = str(unusable_audit_path(tmp_path))
    gateway.config_path.write_text(yaml.safe_dump(served))

    async with client.post(f"{gateway.admin_url}/admin/reload", headers=ADMIN) as response:
        assert response.status == 422
        assert response.content_type == "application/problem+json"
        problem = await response.json()
    assert any("enforcement.audit.path" in error and "is not a directory" in error for error in problem["errors"])
    async with client.get(f"{gateway.admin_url}/metrics") as response:
        assert 'fairgate_config_reloads_total{result="failure"} 1.0' in await response.text()

    async with client.post(f"{gateway.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                           json={"for": "1h", "reason": "abuse report"}) as response:
        assert response.status == 201
    await gateway.server.state.audit.flush()
    assert [e["kind"] for e in lines_of(audit)] == ["state_change", "admin_action"]  # still written


async def test_events_that_cannot_be_written_are_counted_and_logged(tmp_path, upstream, gateway_process):
    audit = tmp_path / "audit.jsonl"
    config, admin_url = audit_process_config(tmp_path, upstream, audit)

    def full_disk() -> None:  # in the gateway process: files stop growing at 3000 bytes
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))

    process = gateway_process(config, env={"FAIRGATE_ADMIN_TOKEN": ADMIN_TOKEN}, preexec_fn=full_disk)
    await asyncio.to_thread(process.wait_ready, admin_url)
    for n in range(20):
        await suspend(admin_url, f"customer-{n}")

    async def failures() -> float:
        async with aiohttp.ClientSession() as session, session.get(f"{admin_url}/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith("fairgate_audit_write_failures_total "):
                    return float(line.split()[1])
        return 0.0

    async def failures_counted(at_least: float) -> bool:
        return await failures() >= at_least

    await wait_until(lambda: failures_counted(1), timeout=10, message="no failed audit write was counted",
                     interval=0.05)
    process.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(process.process.wait, 20)
    assert "audit file write failed" in process.output()
    assert verify(audit).ok  # whole lines only, nothing torn or repeated
    assert 0 < len(lines_of(audit)) < 40


async def test_a_flush_cancelled_mid_write_finishes_before_the_next_one_writes(tmp_path):
    # Shutdown cancels the periodic flush, possibly while its thread is writing; the final flush
    # must not write beside that thread (a broken chain) nor lose the batch it was writing.
    audit = tmp_path / "audit.jsonl"
    trail = AuditTrail(ManualClock())
    trail.configure(AuditSettings(path=audit, queue_size=100_000))
    for n in range(20_000):
        trail.record("violation", customer="acme", n=n)
    periodic = asyncio.create_task(trail.flush())
    await wait_until(lambda: trail.waiting == 0, message="the flush never took its batch")
    periodic.cancel()
    for n in range(20_000, 20_010):
        trail.record("violation", customer="acme", n=n)
    await trail.drain()
    assert periodic.cancelled()
    assert verify(audit).ok, verify(audit)
    assert [event["n"] for event in lines_of(audit)] == list(range(20_010))


async def test_a_last_line_missing_only_its_newline_is_kept(tmp_path):
    audit = tmp_path / "audit.jsonl"
    await write_events(audit, 3)
    audit.write_bytes(audit.read_bytes().rstrip(b"\n"))
    await write_events(audit, 2, start=3)
    assert verify(audit).ok and not verify(audit).recoveries
    assert [e["n"] for e in lines_of(audit)] == [0, 1, 2, 3, 4]
