"""The bench's machinery (bench/run.py and its modules), so it cannot rot between the runs of
`make bench` on a quiet machine: arguments, the readings it takes from a gateway's /metrics
and from wrk, the open-loop client against a real server, and the targets table's verdicts.
The bench itself is not run here."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from bench import compare, looplag, names, openloop, report, targets
from bench.run import EXTRAS, parse_args
from bench.wrk import Result, parse
from gateway.clock import SYSTEM_CLOCK
from gateway.metrics import Metrics
from tests.support.configs import detection_config
from tests.support.gateways import write_process_config
from tests.support.ports import free_port
from tests.support.tokens import bearer, hs_token
from tests.support.waiting import block_until, wait_until

ROOT = Path(__file__).resolve().parent.parent

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:20001/detect/bench
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms    1.20ms  40.00ms   90.00%
    Req/Sec    10.1k     1.1k    11.0k    70.00%
  Latency Distribution
     50%  812.00us
     75%    3.00ms
     90%    4.00ms
     99%    1.25s
  50000 requests in 5.00s, 9.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  10000.00
Transfer/sec:      1.80MB
"""


def test_the_full_run_has_every_many_customer_count_and_no_extra_left_out():
    args = parse_args([])
    assert args.many_customers == (2_000, 20_000, 200_000)
    assert (args.rounds, args.duration, args.skip, args.only) == (5, 5, (), None)


def test_quick_measures_the_three_before_after_targets_and_its_defaults_can_be_overridden():
    args = parse_args(["--quick"])
    assert (args.rounds, args.duration, args.many_customers) == (2, 5, (20_000,))
    assert set(args.skip) == set(EXTRAS)
    assert args.only == [names.BARE, names.PLAIN, names.many_customers(20_000)]
    assert parse_args(["--quick", "--rounds", "1"]).rounds == 1


def test_a_focused_run_leaves_out_the_fleet_and_the_workers_unless_it_names_them():
    assert set(parse_args(["--only", "HS256 auth"]).skip) == {"fleet", "workers"}
    assert parse_args(["--only", "HS256 auth", "--only", "fleet"]).skip == ("workers",)


def test_an_unknown_skip_is_refused():
    with pytest.raises(SystemExit):
        parse_args(["--skip", "open-loop,lunch"])


def test_wrk_output_gives_rate_quantiles_in_ms_errors_and_cpu_per_request():
    result = parse("x", WRK_OUTPUT, cpu_used=2.5, redis=(5000, 250))
    assert (result.requests, result.requests_per_second, result.errors) == (50_000, 10_000.0, 7)
    assert (result.p50_ms, result.p99_ms) == (0.812, 1250.0)
    assert result.cpu_us_per_request == 50.0
    assert (result.redis_commands_per_request, result.redis_background_per_request) == (0.1, 0.005)


def test_the_loop_lag_during_a_run_is_the_difference_of_two_scrapes():
    metrics = Metrics()
    metrics.loop_lag.observe(0.2)  # before the run: not the run's
    before = looplag.parse(metrics.render().decode())
    for _ in range(99):
        metrics.loop_lag.observe(0.0004)
    metrics.loop_lag.observe(0.003)
    lag = looplag.during(before, looplag.parse(metrics.render().decode()))

    assert lag is not None and lag.samples == 100
    assert (lag.max_lower_ms, lag.max_upper_ms, lag.p99_upper_ms) == (2.5, 5.0, 1.0)


def test_background_batch_steps_are_read_by_batch_when_the_gateway_exports_them():
    text = "".join(f'fairgate_background_batch_seconds_bucket{{batch="table_sweep",le="{le}"}} {n}\n'
                   for le, n in (("0.001", 10.0), ("0.002", 12.0), ("0.005", 12.0), ("+Inf", 12.0)))
    after = looplag.parse_batches(text)
    lag = looplag.during({}, after["table_sweep"])
    assert lag is not None and (lag.samples, lag.max_lower_ms, lag.max_upper_ms) == (12, 1.0, 2.0)
    assert looplag.parse_batches("fairgate_event_loop_lag_seconds_count 3.0\n") == {}


@pytest.fixture
def hello_port():
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "aiohttp_hello.py"), str(port)])

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        block_until(answers, message="the aiohttp hello server did not answer")
        yield port
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")), reason="the open-loop client needs a C compiler")
def test_the_open_loop_client_sends_its_schedule_and_each_token_once(hello_port, tmp_path):
    result = openloop.run(hello_port, "/", rate=200, seconds=0.5, connections=4, tokens=None)
    assert (result.completed, result.errors, result.unfinished) == (100, 0, 0)
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("a\nb\n\nc\n")
    once = openloop.each_token_once(hello_port, "/", 2, tokens)
    assert (once.completed, once.errors) == (3, 0)


def _result(name: str, rps: float, p50: float = 1.0, p99: float = 3.0) -> Result:
    return Result(name, rps, p50, p99, 0, None, None, 100.0, int(rps * 5))


def test_targets_are_judged_on_the_median_with_the_range_shown():
    many = {200_000: names.many_customers(200_000), 20_000: names.many_customers(20_000)}
    rounds = {
        names.BARE: [_result(names.BARE, 30_000)] * 3,
        names.PLAIN: [_result(names.PLAIN, 13_000), _result(names.PLAIN, 11_000), _result(names.PLAIN, 11_400)],
        names.EVERY_POLICY: [_result(names.EVERY_POLICY, 10_000)] * 3,
        many[20_000]: [_result(many[20_000], 9_500, p50=1.0, p99=6.0)] * 3,
        many[200_000]: [_result(many[200_000], 9_500)] * 3,
    }
    m = targets.Measurements(rounds, names.BARE, names.PLAIN, names.EVERY_POLICY, many, cold={})
    m.batches = {"table_sweep": looplag.Lag(12, 2.0, 1.0, 2.0), "usage_flush": looplag.Lag(3, 5.0, 2.0, 5.0)}
    m.memory = targets.Memory(200_000, base_rss=100 * 2**20, full_rss=100 * 2**20 + 200_000 * 1024, idle_rss=None,
                              idle_seconds=60)
    rows = targets.rows(m)

    def row(start: str) -> targets.Row:
        return next(r for r in rows if r.target.startswith(start))

    assert row("1. every policy, 200,000 warm customers / 400 users").status == "met"  # 0.95x
    assert row("2. every policy, 20,000 customers").status == "met"  # 0.32x
    no_policies = row("2. fairgate no policies")
    assert no_policies.status == "met in some rounds, NOT MET (median)"
    assert no_policies.measured == "0.38x (rounds 0.37-0.43)"
    assert row("3. saturation").status == "NOT MET"  # p99 6x p50
    assert row("3. longest background batch step").status == "NOT MET (usage_flush)"
    memory = row("4. RSS per tracked customer at 200,000")
    assert memory.status == "met" and memory.measured.startswith("1.00 KB")


def test_the_open_loop_is_shown_beside_the_same_rate_through_the_references():
    def run(p99: float, top: float) -> openloop.OpenLoopResult:
        return openloop.OpenLoopResult(1000, 1000, 5000, 0, 0, 0.2, p99, p99, top)

    m = targets.Measurements({}, names.BARE, names.PLAIN, names.EVERY_POLICY, {}, cold={})
    m.open_loop = [run(8.0, 15.0), run(7.0, 12.0), run(20.0, 35.0)]
    m.open_loop_references = {names.NGINX: [run(2.4, 4.3), run(2.9, 6.5), run(2.5, 6.0)], names.BARE: []}
    text = targets.markdown(m)
    assert f"Open loop at the same rate through {names.NGINX} (3 runs): p99 2.50 ms (rounds 2.40-2.90), " \
           "max 6.0 ms (rounds 4.3-6.5)" in text
    assert f"through {names.BARE}" not in text  # no runs, no line


def test_a_baseline_file_gives_the_deltas_of_cpu_and_rate(tmp_path):
    before = tmp_path / "before.json"
    compare.save(before, {names.PLAIN: [_result(names.PLAIN, 10_000)]})
    now = _result(names.PLAIN, 11_000)
    now.cpu_us_per_request = 90.0
    text = compare.deltas(before, {names.PLAIN: [now], names.BARE: [_result(names.BARE, 1)]})
    assert "| fairgate, no policies | 100.0 -> 90.0 (-10.0) | 10,000 -> 11,000 (+10.0%)" in text
    assert "| aiohttp server alone (no upstream) | (not in the baseline)" in text


def test_the_main_table_has_a_row_per_target_and_the_paired_comparisons_under_it():
    args = parse_args(["--rounds", "2", "--many-customers", "20000"])
    plain = [_result(names.AUTH_OFF, 10_000), _result(names.AUTH_OFF, 8_000)]
    auth = [_result(names.AUTH_ON, 9_000), _result(names.AUTH_ON, 8_000)]
    auth[0].lag = looplag.Lag(50, 1.0, 1.0, 2.5)
    text = report.table([plain[0], auth[0]], {names.AUTH_OFF: plain, names.AUTH_ON: auth}, {20_000: 1_500.0}, args)
    assert f"| {names.AUTH_ON} | 9,000 | 1.00 | 3.00 | 0 | 100.0 | <= 2.5 |" in text
    assert "Authentication on / off (same process, same requests): 0.95x req/s (rounds 0.90-1.00)" in text
    assert "first sight: 1,500 req/s" in text


async def test_the_detection_worker_prototype_analyses_every_request_the_gateway_observed(upstream, tmp_path):
    """bench.detection_worker_gateway's numbers mean something only if its worker does the
    detectors' work: every observed request reaches the worker and is analysed before the
    gateway exits."""
    config = detection_config(upstream)
    path, url, admin_url = write_process_config(tmp_path, "gateway", config)
    process = subprocess.Popen([sys.executable, "-m", "bench.detection_worker_gateway", "run", "-c", str(path)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        async with aiohttp.ClientSession() as client:
            async def ready() -> bool:
                assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                try:
                    async with client.get(f"{admin_url}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(ready, timeout=20.0)
            logins = [hs_token(SYSTEM_CLOCK, sub=f"user{n}", org_id=f"cust{n}") for n in range(5)]
            for n in range(20):
                async with client.get(f"{url}/echo/api/records/{n}", headers=bearer(logins[n % 5])) as response:
                    assert response.status == 200
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(process.communicate, timeout=20)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output.decode()
    assert "detection worker: 20 observations" in output.decode()
    assert "5 tracked" in output.decode()
