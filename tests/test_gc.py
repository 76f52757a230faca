"""The garbage collector's tuning (`server.gc`) as a running gateway process reports it, and its
pauses on /metrics."""

from __future__ import annotations

import gc
import urllib.request

import pytest
import yaml

from gateway.config import ConfigError, load_config
from tests.support.configs import gateway_config
from tests.support.gateways import write_config
from tests.support.scrape import sample


def scrape_sync(admin_url: str) -> str:
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as response:
        return response.read().decode()




def test_a_gateway_process_freezes_its_start_up_objects_and_sets_the_thresholds(tmp_path, upstream, gateway_process):
    path, _url, admin_url = write_config(tmp_path, upstream.url,
                                         gc={"freeze_after_start": True, "thresholds": [20_000, 20, 30]})
    process = gateway_process(path)
    process.wait_ready(admin_url)
    text = scrape_sync(admin_url)
    # Modules, config and compiled policies: tens of thousands of objects, none of them garbage.
    assert sample(text, "fairgate_gc_frozen_objects") > 10_000
    assert [sample(text, "fairgate_gc_threshold", generation=str(n)) for n in range(3)] == [20_000, 20, 30]


def test_a_gateway_process_told_not_to_tune_keeps_every_object_in_view_and_pythons_thresholds(
        tmp_path, upstream, gateway_process):
    path, _url, admin_url = write_config(tmp_path, upstream.url, gc={"freeze_after_start": False, "thresholds": None})
    process = gateway_process(path)
    process.wait_ready(admin_url)
    text = scrape_sync(admin_url)
    assert sample(text, "fairgate_gc_frozen_objects") == 0
    assert [sample(text, "fairgate_gc_threshold", generation=str(n)) for n in range(3)] == [700, 10, 10]


async def test_a_full_collection_shows_as_a_generation_2_pause(gateway, client):
    async def pauses() -> float:
        async with client.get(f"{gateway.admin_url}/metrics") as response:
            return sample(await response.text(), "fairgate_gc_pause_seconds_count", generation="2")

    before = await pauses()
    gc.collect()
    assert await pauses() >= before + 1


def test_by_default_a_gateway_process_freezes_and_raises_the_thresholds(tmp_path, upstream, gateway_process):
    path, _url, admin_url = write_config(tmp_path, upstream.url)
    process = gateway_process(path)
    process.wait_ready(admin_url)
    text = scrape_sync(admin_url)
    assert sample(text, "fairgate_gc_frozen_objects") > 10_000
    assert [sample(text, "fairgate_gc_threshold", generation=str(n)) for n in range(3)] == [50_000, 50, 100]


@pytest.mark.parametrize(("thresholds", "reason"), [
    ([0, 10, 10], "0 turns the collector off"),
    ([700, 10], "expected three numbers"),
    ([700, -1, 10], "thresholds are 0 or more"),
])
def test_bad_gc_thresholds_are_rejected_with_the_reason(tmp_path, thresholds, reason):
    path = tmp_path / "gc.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:1", gc={"thresholds": thresholds})))
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    message = str(failure.value)
    assert "server.gc.thresholds" in message and reason in message, message
