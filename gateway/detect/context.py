"""What the detectors share: the settings in force, the per-identity tracks, where findings and
sanctions go, and the one way subjects are named outside this process (addresses hashed)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import GatewayConfig
from gateway.config.detection import DetectionSettings
from gateway.detect.addresses import Hasher
from gateway.detect.findings import FindingLog
from gateway.detect.sanctions import Sanction, Sanctions
from gateway.detect.scraping import ScrapingTrack
from gateway.detect.sharing import SharingTrack
from gateway.fleet.grants import Grants
from gateway.state.bounded import BoundedTable

_MAX_WRITTEN = 500_000
# A mark older than this says nothing any more: every `due` caller's `every` is shorter.
_WRITTEN_FOR = 60.0
# A track past a finding remembers its offences this long at least (a repeat offender's block doubles).
_OFFENCES_KEPT = 86400.0
# Scores are forgotten once decayed below 1/1024 of what they were.
_HALF_LIVES = 10
# What was written to the sightings store, as `due` remembers it (identity, path or address, agent, ...).
Mark = tuple[str | None, ...]


class Track:
    """Per identity, in this process: one table entry holds what each detector keeps for it."""

    __slots__ = ("at", "scraping", "sharing")

    def __init__(self, at: float) -> None:
        self.at = at  # last observed: the sweep forgets tracks idle past every window (`Context.idle_for`)
        self.scraping: ScrapingTrack | None = None
        self.sharing: SharingTrack | None = None


class Context:
    """Shared by the detectors of one engine; `configure` swaps the settings, the state stays."""

    def __init__(self, findings: FindingLog, sanctions: Sanctions, grants: Grants,
                 sanction: Callable[[Sanction], None]) -> None:
        self.findings = findings
        self.sanctions = sanctions
        self.grants = grants
        self.sanction = sanction  # applies here and tells the fleet
        self.tracks: BoundedTable[str, Track] = BoundedTable(0, self._idle)  # limit: detection.max_tracked
        # What was last sent to the store, and when.
        self.written: BoundedTable[Mark, float] = BoundedTable(_MAX_WRITTEN, _stale)
        self.idle_for = 0.0
        self.epoch = 0  # changes when nothing reached the store: marks kept in tracks are void

    def configure(self, config: GatewayConfig, hasher: Hasher) -> None:
        self.config = config
        self.settings: DetectionSettings = config.detection
        self.hasher = hasher
        self.prefix = config.state.key_prefix
        self.tracks.limit = config.detection.max_tracked
        self.idle_for = idle_for(self.settings)

    def _idle(self, track: Track, now: float) -> bool:
        """Idle past every window a signal looks back over; an offender's track a day at least."""
        idle = now - track.at
        if idle <= self.idle_for:
            return False
        return track.scraping is None or not track.scraping.offences or idle > max(_OFFENCES_KEPT, self.idle_for)

    def public(self, subject: str) -> str:
        """A subject as findings and shared state name it: anonymous networks only hashed."""
        if subject.startswith("address:"):
            return "address:" + self.hasher.hash(subject[len("address:"):])
        return subject

    def track(self, subject: str, at: float) -> Track:
        track = self.tracks.get(subject)
        if track is None:
            track = Track(at)
            self.tracks.put(subject, track)
        else:
            self.tracks.move_to_end(subject)
            track.at = max(track.at, at)
        return track

    def scraping_track(self, subject: str, at: float) -> ScrapingTrack:
        track = self.track(subject, at)
        if track.scraping is None:
            track.scraping = ScrapingTrack(self.settings.scraping.cadence_samples)
        return track.scraping

    def sharing_track(self, subject: str, at: float) -> SharingTrack:
        track = self.track(subject, at)
        if track.sharing is None:
            track.sharing = SharingTrack()
        return track.sharing

    def due(self, mark: Mark, at: float, every: float) -> bool:
        """Whether what `mark` describes should be written to the store again.

        The same identity seen again the same way (session, address, agent; or path) within
        `every` seconds is not written again: last-seen times are that coarse, a steady
        client costs the store nothing, and only an identity with something new is counted."""
        written = self.written
        last = written.get(mark)
        if last is not None and at - last < every:
            return False
        written.put(mark, at)
        return True

    def forget_written(self) -> None:
        """Nothing reached the store: write everything again next time."""
        self.written.clear()
        self.epoch += 1


def idle_for(settings: DetectionSettings) -> float:
    """How long an identity's track is worth keeping after its last request: the longest any
    signal looks back (evidence, a score's decay, sharing's windows and cooldown, a loop)."""
    scraping, sharing = settings.scraping, settings.sharing
    windows = sharing.windows
    return max(scraping.evidence_window, scraping.half_life * _HALF_LIVES, scraping.loop_duration,
               1.0 / scraping.poll_rate, windows.concurrent, windows.devices, windows.session, sharing.cooldown)


def _stale(at: float, now: float) -> bool:
    return now - at >= _WRITTEN_FOR
