"""Screen-scraping and abusive patterns: per-request signals with weights, a decaying score.

Which signals apply depends on the route's class: a portal page is read by people in browsers,
an API by programs (so HTTP libraries and a steady cadence are normal there), assets only count
as fetched. Signals that need the order of one identity's requests (cadence, enumeration,
looping, invalid destinations, browser proofs) are kept per process; distinct paths and user
agents go through the shared sightings. Requests the gateway refused feed the signals of timing
only (looping, cadence): their statuses are the gateway's, not the upstream's.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

from gateway.config.detection import DEFAULT_PAGINATION
from gateway.config.detection import ScrapingDetector as ScrapingSettings
from gateway.detect import few
from gateway.detect.agents import AgentClassifier
from gateway.detect.few import Few
from gateway.detect.marks import Written
from gateway.detect.observation import Observation
from gateway.state.memo import Memo

PAGE_CLASSES = frozenset({"portal", "public"})
_NUMBER = re.compile(r"(?<=[/=])\d+(?=$|[/&;?])")  # an id ends its segment, path or query value
_MAX_TEMPLATES = 16
# Targets whose template is remembered (memo_templates on /metrics): the paths in use lately.
TEMPLATES_MEMO = 16384
_MAX_LOOP_KEYS = 512
_ANSWERS_KEPT = 100
_ANSWERS_MASK = (1 << _ANSWERS_KEPT) - 1
# Looping is the same request at more than this many times the polling rate ("several a second").
_LOOP_OVER_POLL = 2.0


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal as it fired: what was measured against which threshold (a finding's evidence).
    `definitive` signals may challenge or block alone; the others need company, and one that
    `overlaps` another signal seen with it is not independent of it."""

    name: str
    value: float | str
    threshold: float | str
    definitive: bool = False
    overlaps: str | None = None


Record = tuple[str, tuple[int, ...]]  # a target's template and the ids in it


def template_of(target: str, pagination: frozenset[str] = frozenset(DEFAULT_PAGINATION)) -> Record:
    """'/tickets/17?page=3' -> ('/tickets/#', (17,)): the route template and its numbers. Paging
    parameters are dropped: walking pages of a list is how a sync reads it, not enumeration."""
    path, _, query = target.partition("?")
    if query:
        kept = [pair for pair in query.split("&") if pair.partition("=")[0].lower() not in pagination]
        target = f"{path}?{'&'.join(kept)}" if kept else path
    numbers = tuple(int(match) for match in _NUMBER.findall(target))
    return (_NUMBER.sub("#", target), numbers) if numbers else (target, ())


def in_sequence(previous: tuple[int, ...], current: tuple[int, ...]) -> bool:
    """Exactly one number moved by one step, the others stayed."""
    if len(previous) != len(current):
        return False
    moved = [abs(a - b) for a, b in zip(previous, current, strict=True) if a != b]
    return moved == [1]


# Per identity, kept as tuples of numbers rather than objects: the collector stops tracking a
# tuple of atoms, where every instance stays tracked (issue 14: GC pauses grow with tracked objects).
# One id template: the last numbers, the run in sequence, probes, misses.
_Walk = tuple[tuple[int, ...], int, int, int]
# One request repeated: since when, how often, the last time.
_Repeat = tuple[float, int, float]


class ScrapingTrack:
    """What one identity did lately, as far as scraping is concerned (the base of context.Track,
    one object per identity with sharing's fields). One exists per identity seen (issue 14:
    memory per customer), so what only some identities need is made on first use: the page
    intervals (pages only), the evidence (a signal fired); the last answers are bits of an int,
    not a deque of bools; the maps are few.py's."""

    __slots__ = ("score", "scored_at", "offences", "acted", "last_page_at", "samples", "intervals", "templates",
                 "loops", "answers", "answered", "invalid", "offered", "proofs", "noted_block", "reads", "seen",
                 "written")

    def __init__(self, samples: int) -> None:
        self.score = 0.0
        self.scored_at = 0.0
        self.offences = 0
        self.acted: str | None = None  # the action of the last finding, while the score stays up
        self.last_page_at: float | None = None
        self.samples = samples  # page intervals the cadence needs
        # The last `samples` page intervals, oldest first: a tuple of floats (no object for the
        # collector, 150 bytes where a deque of 12 was about 600), rebuilt on each page.
        self.intervals: tuple[float, ...] = ()
        self.templates: Few[str, _Walk] = None  # few.py
        self.loops: Few[tuple[str, str, bytes | None], _Repeat] = None
        self.answers = 0  # the last _ANSWERS_KEPT answers, newest in bit 0: 1 for a 4xx
        self.answered = 0  # how many of those bits hold an answer
        self.invalid = 0
        self.offered = 0  # portal pages into which the gateway put a browser-proof link
        self.proofs = 0  # proofs credited (a link fetched, a challenge passed)
        self.noted_block = 0.0  # the end of the block last named in a finding on a flag class
        self.reads = 0  # records read today, packed with the day (bulk.py)
        self.seen: dict[str, tuple[float, Signal]] | None = None  # each signal's last firing: the evidence
        self.written: Written = ()  # the requests written to the sightings lately (marks.py)

    def note(self, at: float, fired: list[Signal]) -> None:
        if self.seen is None:
            self.seen = {}
        for signal in fired:
            self.seen[signal.name] = (at, signal)

    def evidence(self, now: float, window: float) -> list[Signal]:
        """The signals seen within `window`, in name order."""
        if self.seen is None:
            return []
        return [signal for name, (at, signal) in sorted(self.seen.items()) if now - at <= window]

    def proven(self) -> None:
        """A passed challenge: the browser is proven, its proof count starts over. The score and
        the last action stay: other signals may still make a case for a block."""
        self.offered = self.proofs = 0
        if self.seen is not None:
            self.seen.pop("no_browser_proof", None)

    def decayed(self, now: float, half_life: float) -> float:
        if now > self.scored_at:
            self.score *= 0.5 ** ((now - self.scored_at) / half_life)
            self.scored_at = now
        return self.score


# Families that count on every route class: nobody integrates through a headless browser or a scanner.
_EVERYWHERE = frozenset({"headless", "scanner"})


class ScrapingSignals:
    """The per-request signals. `signals` returns those that fired for one observation."""

    def __init__(self, settings: ScrapingSettings) -> None:
        self.settings = settings
        self.agents = AgentClassifier(settings.user_agents)
        self.weights = settings.weights.model_dump()
        self.pagination = frozenset(name.lower() for name in settings.pagination_params)
        # A target's template, worked out once while the target is in use (the analysis asks for
        # it per request; a reload's settings bring a new memo, as the pagination may differ).
        self.templates: Memo[str, Record] = Memo(partial(template_of, pagination=self.pagination), TEMPLATES_MEMO)

    def signals(self, obs: Observation, agent: str, track: ScrapingTrack, record: Record) -> list[Signal]:
        """`record`: template_of the target (unused for a refused request)."""
        settings, weights, fired = self.settings, self.weights, []
        page = obs.route_class in PAGE_CLASSES
        if obs.refused:
            # A tight loop mostly meets the rate limit: its timing is still its own.
            if page and obs.method == "GET" and weights["regular_cadence"]:
                fired += self._cadence_signal(track, obs.at)
            if weights["looping"]:
                fired += self._looping(track, obs)
            return fired
        family = self.agents.family(agent)
        if family is not None and weights["automation_agent"] and (
                family in _EVERYWHERE or obs.route_class in settings.user_agents.libraries_on):
            # A program that says so on a page people read is the one definitive signal.
            fired.append(Signal("automation_agent", f"{family}: {agent[:80]}", f"user_agents.{family}", page))
        if page and obs.method == "GET":
            missing = _missing_browser_signals(obs.headers)
            if weights["no_browser_signals"] and missing >= 2:
                fired.append(Signal("no_browser_signals", missing, 2))
            if obs.offered_proof:
                track.offered += 1
                if (weights["no_browser_proof"] and track.offered > settings.asset_grace_pages
                        and track.proofs < track.offered * settings.proof_min_share):
                    fired.append(Signal("no_browser_proof", round(track.proofs / track.offered, 2),
                                        settings.proof_min_share))
            if weights["regular_cadence"]:
                fired += self._cadence_signal(track, obs.at)
        if weights["enumeration"]:
            fired += self._walking(track, record, obs.status)
        if weights["invalid_destinations"] and self._invalid(track, obs.status):
            fired.append(Signal("invalid_destinations", round(track.invalid / track.answered, 2),
                                settings.invalid_ratio))
        if weights["looping"]:
            fired += self._looping(track, obs)
        return fired

    def _cadence_signal(self, track: ScrapingTrack, now: float) -> list[Signal]:
        cv = self._cadence(track, now)
        if cv is not None and cv < self.settings.cadence_max_cv:
            return [Signal("regular_cadence", round(cv, 3), self.settings.cadence_max_cv)]
        return []

    def _cadence(self, track: ScrapingTrack, now: float) -> float | None:
        """The coefficient of variation of the last page intervals, once there are enough."""
        intervals = track.intervals
        if track.last_page_at is not None and now > track.last_page_at:
            intervals = track.intervals = (*intervals[1 - track.samples:], now - track.last_page_at)
        track.last_page_at = now
        if len(intervals) < track.samples:
            return None
        mean = statistics.fmean(intervals)
        return statistics.pstdev(intervals, mean) / mean if mean > 0 else None

    def _walking(self, track: ScrapingTrack, record: Record, status: int) -> list[Signal]:
        settings = self.settings
        template, numbers = record
        if not numbers:
            return []
        templates, walk = few.pop(track.templates, template)
        missed = int(status == 404)
        if walk is None:
            run, probes, misses = 1, 1, missed
        else:
            run = walk[1] + 1 if in_sequence(walk[0], numbers) else 1
            probes, misses = walk[2] + 1, walk[3] + missed
        if few.size(templates) >= _MAX_TEMPLATES:
            # A dict this small is compacted every few dozen writes, so its first key is a few
            # slots away at most (a big table is not: state/bounded.py); an OrderedDict per
            # identity would cost more memory than it saves time.
            templates, _ = few.pop(templates, few.first(templates))
        track.templates = few.put(templates, template, (numbers, run, probes, misses))
        if run >= settings.enumeration_run:
            return [Signal("enumeration", f"{run} ids in sequence", settings.enumeration_run)]
        ratio = misses / probes
        if probes >= settings.enumeration_probes and status == 404 and ratio >= settings.enumeration_miss_ratio:
            # Many misses are also a high share of 4xx: not a second piece of evidence.
            return [Signal("enumeration", f"{ratio:.2f} of {probes} ids missing",
                           settings.enumeration_miss_ratio, overlaps="invalid_destinations")]
        return []

    def _invalid(self, track: ScrapingTrack, status: int) -> bool:
        invalid = 400 <= status < 500
        if track.answered == _ANSWERS_KEPT:
            track.invalid -= track.answers >> (_ANSWERS_KEPT - 1)  # the oldest answer leaves
        else:
            track.answered += 1
        track.answers = (track.answers << 1 | invalid) & _ANSWERS_MASK
        track.invalid += invalid
        return (invalid and track.answered >= self.settings.invalid_min_requests
                and track.invalid / track.answered >= self.settings.invalid_ratio)

    def _looping(self, track: ScrapingTrack, obs: Observation) -> list[Signal]:
        """The same request faster than a poller would send it, for loop_duration or longer.
        A conditional request is polling by definition: it asks whether anything changed."""
        headers = obs.headers
        if headers.get("If-None-Match") or headers.get("If-Modified-Since"):
            return []
        settings, at, loops = self.settings, obs.at, track.loops
        key = (obs.method, obs.target, obs.body_digest)
        repeat = few.get(loops, key)
        pause = 1.0 / settings.poll_rate
        if repeat is None or at - repeat[2] > pause:
            # New, or a pause a poller would make: the run starts again.
            if repeat is None and loops:
                # A request paused that long starts again whatever it holds: forgotten now, so a
                # reader of distinct records keeps one entry, not one per record it read.
                loops = few.keep(loops, lambda kept: at - kept[2] <= pause)
                if few.size(loops) >= _MAX_LOOP_KEYS:
                    loops = None
            since, count = at, 1
        else:
            since, count = repeat[0], repeat[1] + 1
        track.loops = few.put(loops, key, (since, count, at))
        lasted = at - since
        if lasted < settings.loop_duration:
            return []
        limit = settings.poll_rate * _LOOP_OVER_POLL
        rate = (count - 1) / lasted
        if rate <= limit:
            return []
        return [Signal("looping", f"{rate:.1f}/s for {lasted:.0f}s", f"{limit:g}/s for {settings.loop_duration:g}s")]


def _missing_browser_signals(headers: Mapping[str, str]) -> int:
    missing = 0 if headers.get("Accept-Language") else 1
    missing += 0 if headers.get("Sec-Fetch-Mode") or headers.get("Sec-Fetch-Dest") else 1
    missing += 0 if "text/html" in headers.get("Accept", "") else 1
    return missing
