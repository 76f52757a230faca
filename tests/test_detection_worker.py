"""`detection.worker`: the detectors run in a process of their own, and a client, the admin API
and the audit trail see what they would see with the analysis in the gateway's loop. The worker
is a real child process fed over real pipes; it is killed on purpose to see what is lost."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.config.loader import load_config
from gateway.detect.engine import Detection
from gateway.detect.findings import SCRAPING, Action, Finding, FindingLog
from gateway.detect.observation import DETECTED_HEADERS, Observation, as_row
from gateway.detect.sanctions import AUTOMATION, Sanction, Sanctions
from gateway.detect.worker import CONFIG, END, REPLY_TIMEOUT, ROWS, encode
from gateway.fleet.grants import ALLOW_USER, EXEMPT, Grant, Grants
from gateway.server import detection_worker
from gateway.state.memory import MemorySightings
from tests.support.clock import ManualClock
from tests.support.configs import detection_config
from tests.support.paths import ROOT
from tests.support.tokens import ADMIN, AUDIENCE, ISSUER, bearer, hs_token
from tests.support.traffic import BROWSER, HEADLESS, browse_headless
from tests.support.waiting import wait_until


def worker_config(upstream, tmp_path, **detection) -> dict:
    config = detection_config(upstream, worker=True, **detection)
    config["enforcement"] = {"audit": {"path": str(tmp_path / "audit.jsonl"), "flush_interval": "10ms"}}
    return config


def loaded(raw: dict, tmp_path, name: str = "config") -> GatewayConfig:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


async def stopped_worker(start_gateway, upstream, client, tmp_path, config: dict | None = None):
    """A gateway whose worker analysed one batch and was then stopped (SIGSTOP): it answers nothing."""
    clock = ManualClock()
    gateway = await start_gateway(config or worker_config(upstream, tmp_path), clock=clock)
    assert await browse_headless(client, gateway, bearer(hs_token(clock, sub="bob")), clock, 1) == [200]
    worker = gateway.server.state.detection._worker
    assert worker is not None and worker._process is not None
    os.kill(worker._process.pid, signal.SIGSTOP)
    return gateway, clock, worker, worker._process


def kill(process) -> None:
    if process.returncode is None:
        os.kill(process.pid, signal.SIGKILL)


async def metrics(client, gateway) -> str:
    async with client.get(f"{gateway.admin_url}/metrics") as response:
        return await response.text()


def sample(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.rsplit(" ", 1)[1])


async def test_a_block_found_in_the_worker_refuses_the_next_request_and_is_audited(
        start_gateway, upstream, client, tmp_path):
    clock = ManualClock()
    gateway = await start_gateway(worker_config(upstream, tmp_path), clock=clock)
    token = bearer(hs_token(clock))
    assert await browse_headless(client, gateway, token, clock, 3) == [200] * 3
    async with client.get(f"{gateway.url}/echo/portal/next",
                          headers={**token, **HEADLESS, "Accept": "application/json"}) as response:
        assert response.status == 403
        assert (await response.json())["type"].endswith("automation-blocked")
    async with client.get(f"{gateway.admin_url}/admin/findings?detector=scraping", headers=ADMIN) as response:
        (finding,) = (await response.json())["findings"]
    assert finding["subject"] == "user:acme/alice" and finding["action"] == "block"
    assert "automation_agent" in finding["signals"]
    text = await metrics(client, gateway)
    assert 'fairgate_findings_total{action="block",detector="scraping"} 1.0' in text
    assert sample(text, "fairgate_detection_worker_starts_total") == 1
    # The worker's own table, as it reported it with its last answer.
    assert sample(text, 'fairgate_table_entries{table="detection_tracks"}') == 1

    await gateway.server.drain()
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["subject"] for e in events if e["kind"] == "sanction"] == ["user:acme/alice"]


async def test_sharing_through_the_worker_reads_the_configured_device_header(start_gateway, upstream, client, tmp_path):
    clock = ManualClock()
    config = worker_config(upstream, tmp_path, sharing={"action": "flag", "device_header": "X-Device-Id"})
    gateway = await start_gateway(config, clock=clock)
    for n in range(4):  # four devices on one login within a minute
        headers = {**bearer(hs_token(clock, sid=f"s{n}")), "X-Device-Id": f"device-{n}"}
        async with client.get(f"{gateway.url}/echo/x", headers=headers) as response:
            assert response.status == 200
    await gateway.server.state.detection.drain()
    (finding,) = gateway.server.state.findings.recent(detector="sharing")
    assert finding.signals == ("devices",) and len(finding.evidence["devices"]["seen"]) == 4


async def test_an_exemption_made_through_the_admin_api_reaches_the_worker(start_gateway, upstream, client, tmp_path):
    clock = ManualClock()
    gateway = await start_gateway(worker_config(upstream, tmp_path), clock=clock)
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/exceptions", headers=ADMIN,
                           json={"exempt": "scraping", "for": "1d", "reason": "agreed crawl"}) as response:
        assert response.status == 201
    token = bearer(hs_token(clock))
    assert await browse_headless(client, gateway, token, clock, 4) == [200] * 4
    async with client.get(f"{gateway.url}/echo/portal/next", headers={**token, **HEADLESS}) as response:
        assert response.status == 200
    detection = gateway.server.state.detection
    await detection.drain()
    assert gateway.server.state.findings.recent() == []
    assert detection.dropped == 0 and detection.tracked == 1  # analysed there, and let be


async def test_a_lifted_block_is_lifted_in_the_worker_too(start_gateway, upstream, client, tmp_path):
    """The worker consults the sanctions in force: one the admin API lifted must not linger there."""
    clock = ManualClock()
    gateway = await start_gateway(worker_config(upstream, tmp_path), clock=clock)
    token = bearer(hs_token(clock))
    assert await browse_headless(client, gateway, token, clock, 3) == [200] * 3
    async with client.post(f"{gateway.admin_url}/admin/allow-list", headers=ADMIN,
                           json={"customer": "acme", "user": "alice", "for": "1d", "reason": "QA"}) as response:
        assert response.status == 201
    async with client.get(f"{gateway.url}/echo/x", headers={**token, **HEADLESS}) as response:
        assert response.status == 200  # the API flags only: with the block in force it would note it
    await gateway.server.state.detection.drain()
    signals = [f.signals for f in gateway.server.state.findings.recent()]
    assert ("blocked_elsewhere",) not in signals


async def test_a_reload_reaches_the_worker(start_gateway, upstream, client, tmp_path):
    clock = ManualClock()
    config = worker_config(upstream, tmp_path)
    gateway = await start_gateway(config, clock=clock)
    config["detection"]["scraping"] = {"actions": {"portal": "flag", "api": "flag"}}
    gateway.config_path.write_text(yaml.safe_dump(config))
    async with client.post(f"{gateway.admin_url}/admin/reload", headers=ADMIN) as response:
        assert response.status == 200
    token = bearer(hs_token(clock))
    assert await browse_headless(client, gateway, token, clock, 4) == [200] * 4
    (finding,) = gateway.server.state.findings.recent()
    assert finding.action == "flag"


async def test_a_worker_that_died_between_batches_is_replaced_and_nothing_is_lost(
        start_gateway, upstream, client, tmp_path):
    clock = ManualClock()
    gateway = await start_gateway(worker_config(upstream, tmp_path), clock=clock)
    detection = gateway.server.state.detection
    assert await browse_headless(client, gateway, bearer(hs_token(clock, sub="bob")), clock, 1) == [200]
    worker = detection._worker
    assert worker is not None and worker._process is not None
    os.kill(worker._process.pid, signal.SIGKILL)
    await worker._process.wait()

    token = bearer(hs_token(clock))
    assert await browse_headless(client, gateway, token, clock, 3) == [200] * 3  # to the next worker
    (finding,) = gateway.server.state.findings.recent()
    assert finding.subject == "user:acme/alice" and finding.action == "block"
    text = await metrics(client, gateway)
    assert sample(text, "fairgate_detection_worker_starts_total") == 2
    assert sample(text, "fairgate_detection_dropped_observations_total") == 0


async def test_a_hung_worker_loses_the_batch_it_held_and_the_next_batch_goes_to_a_new_one(
        start_gateway, upstream, client, tmp_path):
    # No batch of the run loop's own: the test's drains decide what goes in which batch.
    gateway, clock, worker, hung = await stopped_worker(
        start_gateway, upstream, client, tmp_path, worker_config(upstream, tmp_path, flush_interval="1h"))
    detection = gateway.server.state.detection
    worker.reply_timeout, worker.per_observation = 0.5, 0.0
    try:
        for n in range(3):
            async with client.get(f"{gateway.url}/echo/portal/b{n}", headers=BROWSER) as response:
                assert response.status == 200
        for n in range(5000):  # more than the pipe holds: the gateway waits to write, not only to read
            detection.observe_proof(f"address:198.51.100.0/24|{n}")
        await detection.drain()
    finally:
        kill(hung)
    assert detection.dropped == 5003 and hung.returncode is not None  # taken for hung, and stopped
    worker.reply_timeout = REPLY_TIMEOUT  # the next worker's start-up is not timed at 0.5 s

    token = bearer(hs_token(clock))
    assert await browse_headless(client, gateway, token, clock, 3) == [200] * 3
    (finding,) = gateway.server.state.findings.recent()
    assert finding.action == "block"
    text = await metrics(client, gateway)
    assert sample(text, "fairgate_detection_worker_starts_total") == 2
    assert sample(text, "fairgate_detection_dropped_observations_total") == 5003


async def test_the_worker_keeps_its_sightings_in_redis_when_the_gateway_does(
        start_gateway, upstream, client, tmp_path, redis_url, key_prefix):
    clock = ManualClock()
    config = worker_config(upstream, tmp_path, sharing={"action": "flag", "device_header": "X-Device-Id"})
    config["state"] = {"url": redis_url, "key_prefix": key_prefix}
    gateway = await start_gateway(config, clock=clock)
    for n in range(4):
        headers = {**bearer(hs_token(clock, sid=f"s{n}")), "X-Device-Id": f"device-{n}"}
        async with client.get(f"{gateway.url}/echo/x", headers=headers) as response:
            assert response.status == 200
    await gateway.server.state.detection.drain()
    (finding,) = gateway.server.state.findings.recent(detector="sharing")
    assert finding.signals == ("devices",)
    import redis.asyncio

    shared = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert [key async for key in shared.scan_iter(match=f"{key_prefix}*devices*")]
    finally:
        await shared.aclose()


class Reads(Mapping[str, str]):
    """Headers that remember which names were asked for."""

    def __init__(self, headers: dict[str, str], asked: set[str]) -> None:
        self._headers, self._asked = headers, asked

    def __getitem__(self, name: str) -> str:
        self._asked.add(name)
        return self._headers[name]

    def get(self, name, default=None):  # type: ignore[override]
        self._asked.add(name)
        return self._headers.get(name, default)

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("a detector walked every header: a worker is sent only DETECTED_HEADERS")

    def __len__(self) -> int:
        return len(self._headers)


async def test_the_detectors_read_no_header_a_worker_is_not_sent(upstream, tmp_path):
    """The worker gets DETECTED_HEADERS and the device header only; a detector reading one more
    would see it missing there, and decide otherwise than in the gateway's loop."""
    raw = worker_config(upstream, tmp_path, sharing={"action": "flag", "device_header": "X-Device-Id"})
    config = loaded(raw, tmp_path)
    detection = Detection(MemorySightings(), FindingLog(None), ManualClock(), None, Grants())
    detection.apply(detection.prepare(config))
    detection._worker = None  # analysed here, where what is read can be seen
    asked: set[str] = set()
    headers = {**HEADLESS, "Accept": "text/html", "Cookie": "a=b", "If-None-Match": '"x"', "X-Device-Id": "d"}
    at = ManualClock().time()
    for n in range(60):
        for user, agent in (("alice", HEADLESS), (None, BROWSER)):
            detection.observe(Observation(at + n, "portal" if n % 2 else "api", "acme" if user else None, user,
                                          f"s{n % 3}" if user else None, f"198.51.100.{n % 5}", "GET",
                                          f"/records/{n}?page={n}", Reads({**headers, **agent}, asked),
                                          200 if n % 7 else 304, None))
    await detection.drain()
    assert asked and asked <= {*DETECTED_HEADERS, "X-Device-Id"}


async def test_a_config_whose_issuer_has_a_public_key_is_told_to_a_worker(upstream, tmp_path):
    """Parsed public keys do not pickle: the worker is told the config without `auth`, and a
    config it cannot be told fails in `prepare` (a rejected reload), never halfway through `apply`."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "issuer.pem").write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    raw = worker_config(upstream, tmp_path)
    raw["auth"] = {"issuers": [{"name": "ec", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
                                "public_key_file": str(tmp_path / "issuer.pem")}]}
    config = loaded(raw, tmp_path)
    detection = Detection(MemorySightings(), FindingLog(None), ManualClock(), None, Grants())
    setup = detection.prepare(config)
    detection.apply(setup)
    assert setup.worker_config is not None
    kind, (told, salt, _) = pickle.loads(setup.worker_config[4:])
    assert kind == "config" and told.detection == config.detection and told.auth is None
    assert salt == detection.hasher.salt


async def test_what_a_grant_made_while_the_worker_held_the_batch_exempts_is_left_out():
    """An allow-list entry made while the worker analysed: its sanction and finding about that
    user are not applied here (the detectors in the gateway's loop would have seen the grant)."""
    clock = ManualClock()
    findings = FindingLog(None)
    detection = Detection(MemorySightings(), findings, clock, None, Grants())
    now = clock.time()
    detection.grants.add(Grant("g-1", ALLOW_USER, now + 86400, "admin", "QA", now, customer="acme", user="alice"))
    events = [Sanction("user:acme/alice", AUTOMATION, now + 600, "p"),
              Finding(SCRAPING, "user:acme/alice", "acme", "alice", Action.BLOCK, False, now, ("x",), until=now + 600),
              Sanction("user:acme/bob", AUTOMATION, now + 600, "p"),
              Finding(SCRAPING, "user:acme/bob", "acme", "bob", Action.BLOCK, False, now, ("x",), until=now + 600)]
    detection._received(events, True)
    assert [f.user for f in findings.recent()] == ["bob"]
    assert detection.sanctions.get("user:acme/alice", now) is None
    assert detection.sanctions.get("user:acme/bob", now) is not None


async def test_a_worker_is_told_the_state_store_its_gateway_started_with(upstream, tmp_path):
    """The state section takes effect on restart only: a worker started after a reload must not
    open another store than its gateway's."""
    configs = []
    for prefix in ("first", "reloaded"):
        raw = worker_config(upstream, tmp_path)
        raw["state"] = {"key_prefix": prefix}
        configs.append(loaded(raw, tmp_path, prefix))
    detection = Detection(MemorySightings(), FindingLog(None), ManualClock(), None, Grants())
    detection.apply(detection.prepare(configs[0]))
    setup = detection.prepare(configs[1])
    assert setup.worker_config is not None
    _, (told, _, _) = pickle.loads(setup.worker_config[4:])
    assert told.state.key_prefix == "first" and told.detection == configs[1].detection


def test_the_sanctions_journal_stays_bounded_while_nothing_is_sent():
    sanctions = Sanctions()
    sanctions.journal = []
    at = ManualClock().time()
    assert sanctions.clear("user:acme/") == 0 and sanctions.journal == []  # nothing lifted: nothing to tell
    for n in range(5000):
        sanctions.add(Sanction(f"user:acme/u{n % 10}", AUTOMATION, at + n, "p"))
    assert len(sanctions.journal) <= 2 * len(sanctions) + 1025
    told = Sanctions()
    told.add(Sanction("user:acme/lifted-meanwhile", AUTOMATION, at + 10, "p"))
    told.replay(sanctions.journal)
    assert sorted(s.key for s in told.entries()) == sorted(s.key for s in sanctions.entries())
    assert {s.until for s in told.entries()} == {s.until for s in sanctions.entries()}


@pytest.mark.parametrize("batch_out", [False, True], ids=["idle", "batch-already-out"])
async def test_a_hung_worker_holds_the_gateways_stop_for_the_drain_timeout_only(
        start_gateway, upstream, client, tmp_path, batch_out):
    """Idle: the last observation is still queued when the stop comes (flush_interval 1h). Batch
    already out: the run loop took it to the worker (flush_interval 10 ms), its timeout set
    before the stop began."""
    config = worker_config(upstream, tmp_path) if batch_out else worker_config(upstream, tmp_path, flush_interval="1h")
    config["server"]["drain_timeout"] = "1s"
    gateway, _, _, hung = await stopped_worker(start_gateway, upstream, client, tmp_path, config)
    detection = gateway.server.state.detection
    try:
        async with client.get(f"{gateway.url}/echo/portal/last", headers=BROWSER) as response:
            assert response.status == 200
        if batch_out:
            await wait_until(lambda: not detection.backlog and detection._analysing.locked(), timeout=10,
                             message="the run loop never took the batch out to the worker")
        await asyncio.wait_for(gateway.server.drain(), 10 if batch_out else 20)  # not REPLY_TIMEOUT's 30 s and more
    finally:
        kill(hung)
    assert detection.dropped == 1  # the last request's observation, counted


def test_a_worker_refuses_a_gateway_of_another_version(upstream, tmp_path):
    """A worker started after an upgrade in place runs the new code: it must not guess at what
    an older gateway sends it."""
    raw = worker_config(upstream, tmp_path)
    config = loaded(raw, tmp_path)
    message = encode(CONFIG, (config.model_copy(update={"auth": None, "alerts": None}), b"s" * 16, "0.0.1-older"))
    done = subprocess.run([sys.executable, "-m", "gateway.server.detection_worker"], input=message,
                          capture_output=True, timeout=60, cwd=ROOT)
    assert done.returncode != 0
    assert b"cannot serve a gateway of 0.0.1-older" in done.stderr


async def test_a_sanction_left_out_for_a_grant_made_meanwhile_is_taken_back_in_the_worker():
    """An exemption lifts nothing (only allow-list entries do): the sanction the worker made and
    keeps in its own table must still go there, or its detectors go on seeing it in force."""
    clock = ManualClock()
    detection = Detection(MemorySightings(), FindingLog(None), clock, None, Grants())
    now = clock.time()
    held_before = Sanction("user:acme/alice2", AUTOMATION, now + 60, "p")  # in force at both ends
    detection.sanctions.add(held_before)
    detection.sanctions.journal = []  # a worker is told
    detection.grants.add(Grant("g-1", EXEMPT, now + 86400, "admin", "QA", now, customer="acme", exempt="scraping"))
    made = Sanction("user:acme/alice", AUTOMATION, now + 600, "p")
    detection._received([made, Finding(SCRAPING, "user:acme/alice", "acme", "alice", Action.BLOCK, False, now,
                                       ("x",), until=now + 600)], True)
    assert detection.sanctions.get("user:acme/alice", now) is None
    worker = Sanctions()
    worker.add(held_before)
    worker.add(made)  # the worker's detectors applied it there
    worker.replay(detection.sanctions.journal)
    assert worker.entries() == [held_before]


async def test_the_worker_drops_nothing_its_gateway_sent_and_answers_a_batch_that_failed(
        upstream, tmp_path, monkeypatch):
    raw = worker_config(upstream, tmp_path, queue_size=100)
    config = loaded(raw, tmp_path)
    monkeypatch.setattr(detection_worker, "configure_logging", lambda level, fmt: None)
    answers = io.BytesIO()
    worker = detection_worker.Worker(answers)
    try:
        await worker._take(CONFIG, (config.model_copy(update={"auth": None, "alerts": None}), b"s" * 16,
                                    __version__))
        analysis = worker._analysis
        assert analysis is not None
        at = ManualClock().time()
        # A batch the gateway queued before a reload lowered queue_size: all of it is analysed.
        rows = [as_row(Observation(at + n, "portal", "acme", "alice", "s1", "198.51.100.7", "GET", f"/p/{n}",
                                   HEADLESS, 200, None), DETECTED_HEADERS) for n in range(150)]
        await worker._take(ROWS, rows)
        assert analysis.backlog == 150 and analysis.dropped == 0

        async def fails(batch):
            raise RuntimeError("a detector's bug")

        monkeypatch.setattr(analysis, "_analyse", fails)
        await worker._take(END, at + 150)  # answered all the same: the worker and its state go on
        kind, (events, _) = pickle.loads(answers.getvalue()[4:])
        assert kind == END and events == []
    finally:
        if worker._sweeping is not None:
            worker._sweeping.cancel()
        if worker._store is not None:
            await worker._store.close()
