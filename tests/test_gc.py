"""The garbage collector's tuning (`server.gc`) as a running gateway process reports it, and its
pauses on /metrics."""

from __future__ import annotations

import gc
import urllib.request
import weakref

import pytest
import yaml

from gateway.config import ConfigError, load_config
from gateway.server.garbage import GenerationalFreeze, collect_everything, freeze_survivors
from tests.support.clock import ManualClock
from tests.support.configs import gateway_config
from tests.support.gateways import write_config
from tests.support.scrape import sample
from tests.support.waiting import block_until


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
    path, _url, admin_url = write_config(tmp_path, upstream.url, gc={"freeze_after_start": False, "thresholds": None,
                                                                         "freeze_interval": None})
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


def test_by_default_a_gateway_process_freezes_and_collects_its_young_generations_often(
        tmp_path, upstream, gateway_process):
    path, _url, admin_url = write_config(tmp_path, upstream.url)
    process = gateway_process(path)
    process.wait_ready(admin_url)
    text = scrape_sync(admin_url)
    assert sample(text, "fairgate_gc_frozen_objects") > 10_000
    assert [sample(text, "fairgate_gc_threshold", generation=str(n)) for n in range(3)] == [700, 10, 10]


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


def test_a_gateway_process_freezes_the_survivors_of_its_young_collections_every_interval(
        tmp_path, upstream, gateway_process):
    path, _url, admin_url = write_config(tmp_path, upstream.url, gc={"freeze_interval": "50ms"})
    process = gateway_process(path)
    process.wait_ready(admin_url)

    def freezes() -> float:
        return sample(scrape_sync(admin_url), "fairgate_background_batch_seconds_count", batch="gc_freeze")

    block_until(lambda: (freezes() or 0) >= 3, message="no freeze step on /metrics")


def test_a_gateway_process_told_not_to_freeze_periodically_has_no_freeze_steps(tmp_path, upstream, gateway_process):
    path, _url, admin_url = write_config(tmp_path, upstream.url, gc={"freeze_interval": None})
    process = gateway_process(path)
    process.wait_ready(admin_url)
    assert 'batch="gc_freeze"' not in scrape_sync(admin_url)


class Node:
    """A reference cycle of one: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfrozen():
    """What a test froze goes back in view afterwards (the suite's own process)."""
    yield
    gc.unfreeze()


def test_a_freeze_step_frees_young_cyclic_garbage_and_freezes_what_is_alive(unfrozen):
    garbage, alive = Node(), Node()
    garbage_ref, alive_ref = weakref.ref(garbage), weakref.ref(alive)
    del garbage
    frozen_before = gc.get_freeze_count()
    freeze_survivors()
    assert garbage_ref() is None  # collected, not frozen
    assert gc.get_freeze_count() > frozen_before
    # What was alive when frozen and then became cyclic garbage is out of every automatic
    # collection's view: the price of freezing, found by collecting everything.
    del alive
    gc.collect()
    assert alive_ref() is not None
    assert collect_everything() >= 1
    assert alive_ref() is None


def test_the_generational_freeze_collects_everything_once_the_full_interval_has_passed(unfrozen):
    clock = ManualClock()
    durations: dict[str, list[float]] = {"freeze": [], "full": []}
    freezing = GenerationalFreeze(1.0, 10.0, observe_freeze=durations["freeze"].append,
                                  observe_full=durations["full"].append, clock=clock.monotonic)
    freezing.step()
    clock.advance(9)
    freezing.step()
    assert (freezing.freezes, freezing.full_collections) == (2, 0)
    clock.advance(1)
    freezing.step()
    assert (freezing.freezes, freezing.full_collections) == (2, 1)
    clock.advance(1)
    freezing.step()  # the next full collection is 10 s after the last one
    assert (freezing.freezes, freezing.full_collections) == (3, 1)
    assert (len(durations["freeze"]), len(durations["full"])) == (3, 1)


def test_a_generational_freeze_with_nothing_to_do_is_refused():
    with pytest.raises(ValueError, match="nothing to run"):
        GenerationalFreeze(None, None)


@pytest.mark.parametrize("key", ["freeze_interval", "full_collection_interval"])
@pytest.mark.parametrize("value", ["0s", "-1s"])
def test_a_gc_interval_that_is_not_positive_is_rejected_with_the_key(tmp_path, key, value):
    path = tmp_path / "gc.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:1", gc={key: value})))
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    message = str(failure.value)
    assert f"server.gc.{key}" in message, message


def test_the_gc_intervals_default_to_a_freeze_every_quarter_second_and_a_full_collection_every_six_hours(tmp_path):
    path = tmp_path / "gc.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:1")))
    settings = load_config(path).server.gc
    assert (settings.freeze_interval, settings.full_collection_interval) == (0.25, 21600.0)
