"""Screen-scraping and abusive patterns: per-request signals with weights, a decaying score.

Which signals apply depends on the route's class: a portal page is read by people in browsers,
an API by programs (so HTTP libraries and a steady cadence are normal there), assets only count
as fetched. Signals that need the order of one identity's requests (cadence, enumeration,
looping, invalid destinations, assets) are kept per process; distinct paths and user agents go
through the shared sightings.
"""

from __future__ import annotations

import re
import statistics
from collections import deque
from collections.abc import Mapping
from functools import lru_cache

from gateway.config.detection import ScrapingDetector as ScrapingSettings
from gateway.detect.agents import AgentClassifier
from gateway.detect.observation import Observation

PAGE_CLASSES = frozenset({"portal", "public"})
_NUMBER = re.compile(r"(?<=[/=])\d+(?=$|[/&;])")
_MAX_TEMPLATES = 16
_MAX_LOOP_KEYS = 512
_ANSWERS_KEPT = 100


@lru_cache(maxsize=16384)
def template_of(target: str) -> tuple[str, tuple[int, ...]]:
    """'/tickets/17?page=3' -> ('/tickets/#?page=#', (17, 3)): the route template and its numbers."""
    numbers = tuple(int(match) for match in _NUMBER.findall(target))
    return (_NUMBER.sub("#", target), numbers) if numbers else (target, ())


def in_sequence(previous: tuple[int, ...], current: tuple[int, ...]) -> bool:
    """Exactly one number moved by one step, the others stayed."""
    if len(previous) != len(current):
        return False
    moved = [abs(a - b) for a, b in zip(previous, current, strict=True) if a != b]
    return moved == [1]


class ScrapingTrack:
    """What one identity did lately, as far as scraping is concerned; a few hundred bytes."""

    __slots__ = ("score", "scored_at", "offences", "flagged", "last_page_at", "intervals", "templates",
                 "loops", "loops_since", "answers", "invalid", "pages", "assets")

    def __init__(self, samples: int) -> None:
        self.score = 0.0
        self.scored_at = 0.0
        self.offences = 0
        self.flagged = False  # over the threshold and already reported
        self.last_page_at: float | None = None
        self.intervals: deque[float] = deque(maxlen=samples)
        self.templates: dict[str, tuple[tuple[int, ...], int]] = {}
        self.loops: dict[tuple[str, str, bytes | None], int] = {}
        self.loops_since = 0.0
        self.answers: deque[bool] = deque(maxlen=_ANSWERS_KEPT)
        self.invalid = 0
        self.pages = 0
        self.assets = 0

    def decayed(self, now: float, half_life: float) -> float:
        if now > self.scored_at:
            self.score *= 0.5 ** ((now - self.scored_at) / half_life)
            self.scored_at = now
        return self.score


class ScrapingSignals:
    """The per-request signals. `signals` returns the names that fired for one observation."""

    def __init__(self, settings: ScrapingSettings) -> None:
        self.settings = settings
        self.agents = AgentClassifier(settings.user_agents)
        self.weights = settings.weights.model_dump()

    def signals(self, obs: Observation, agent: str, track: ScrapingTrack, assets_from_address: bool) -> list[str]:
        settings, weights, fired = self.settings, self.weights, []
        family = self.agents.family(agent)
        if family is not None and weights["automation_agent"] and (
                family != "library" or obs.route_class in settings.user_agents.libraries_on):
            fired.append("automation_agent")
        page = obs.route_class in PAGE_CLASSES and obs.method == "GET"
        if page:
            track.pages += 1
            if weights["no_browser_signals"] and _missing_browser_signals(obs.headers) >= 2:
                fired.append("no_browser_signals")
            if (weights["no_assets"] and track.pages > settings.asset_grace_pages and not track.assets
                    and not assets_from_address):
                fired.append("no_assets")
            if weights["regular_cadence"] and self._regular(track, obs.at):
                fired.append("regular_cadence")
        if weights["enumeration"] and self._walking(track, obs.target):
            fired.append("enumeration")
        if weights["invalid_destinations"] and self._invalid(track, obs.status):
            fired.append("invalid_destinations")
        if weights["looping"] and self._looping(track, obs):
            fired.append("looping")
        return fired

    def _regular(self, track: ScrapingTrack, now: float) -> bool:
        if track.last_page_at is not None and now > track.last_page_at:
            track.intervals.append(now - track.last_page_at)
        track.last_page_at = now
        if len(track.intervals) < (track.intervals.maxlen or 0):  # the track's own sample count (always set)
            return False
        mean = statistics.fmean(track.intervals)
        return mean > 0 and statistics.pstdev(track.intervals, mean) / mean < self.settings.cadence_max_cv

    def _walking(self, track: ScrapingTrack, target: str) -> bool:
        template, numbers = template_of(target)
        if not numbers:
            return False
        previous = track.templates.pop(template, None)
        run = previous[1] + 1 if previous is not None and in_sequence(previous[0], numbers) else 1
        if len(track.templates) >= _MAX_TEMPLATES:
            # A dict this small is compacted every few dozen writes, so its first key is a few
            # slots away at most (a big table is not: state/bounded.py); an OrderedDict per
            # identity would cost more memory than it saves time.
            del track.templates[next(iter(track.templates))]
        track.templates[template] = (numbers, run)
        return run >= self.settings.enumeration_run

    def _invalid(self, track: ScrapingTrack, status: int) -> bool:
        invalid = 400 <= status < 500
        if len(track.answers) == track.answers.maxlen and track.answers[0]:
            track.invalid -= 1
        track.answers.append(invalid)
        track.invalid += invalid
        return (invalid and len(track.answers) >= self.settings.invalid_min_requests
                and track.invalid / len(track.answers) >= self.settings.invalid_ratio)

    def _looping(self, track: ScrapingTrack, obs: Observation) -> bool:
        if obs.at - track.loops_since > self.settings.loop_window or len(track.loops) >= _MAX_LOOP_KEYS:
            track.loops.clear()
            track.loops_since = obs.at
        key = (obs.method, obs.target, obs.body_digest)
        count = track.loops[key] = track.loops.get(key, 0) + 1
        return count >= self.settings.loop_repeats


def _missing_browser_signals(headers: Mapping[str, str]) -> int:
    missing = 0 if headers.get("Accept-Language") else 1
    missing += 0 if headers.get("Sec-Fetch-Mode") or headers.get("Sec-Fetch-Dest") else 1
    missing += 0 if "text/html" in headers.get("Accept", "") else 1
    return missing
