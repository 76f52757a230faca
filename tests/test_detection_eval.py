"""The labelled detection evaluation's machinery (bench/detection_eval.py), so it cannot rot:
two actors against a real gateway subprocess on the shipped config. The full run, and what it
says about the detectors, is `make detection-eval` (docs/detection.md)."""

from __future__ import annotations

from loadtest.eval import report
from loadtest.eval.runner import evaluate
from loadtest.eval.scoring import acceptance, accuracy


async def test_the_harness_records_ground_truth_and_outcomes_and_flags_the_headless_actor():
    rows = await evaluate(seed=7, seconds=6.0, names=["api-poller", "headless-http"])

    poller, headless = rows
    assert (poller.actor, poller.abusive, poller.catch) == ("api-poller", False, ())
    assert (headless.actor, headless.abusive, headless.catch) == ("headless-http", True, ("scraping",))
    for row in rows:
        assert row.seed == 7 and row.requests > 0 and sum(row.statuses.values()) == row.requests
    assert headless.flagged is not None and 1 <= headless.flagged.request <= headless.requests
    assert "scraping" in headless.detectors and "scraping:automation_agent" in headless.signals

    table = report.actors(rows)
    assert "| 7 | api-poller | compliant" in table and "| 7 | headless-http | abusive (scraping)" in table
    scores = {score.detector: score for score in accuracy(rows)}
    assert set(scores) == {"sharing", "scraping", "seats"}
    assert scores["scraping"].labelled == 1 and scores["scraping"].recall == 1.0
    lines = acceptance(rows)
    assert [line.text.split(" ")[0] for line in lines] == ["0", "every", "portal", "a"]
    assert next(line for line in lines if line.text.startswith("every")).met
