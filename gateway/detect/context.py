"""What the detectors share: the settings in force, the per-identity tracks, where findings and
sanctions go, and the one way subjects are named outside this process (addresses hashed)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import GatewayConfig
from gateway.config.detection import DetectionSettings
from gateway.detect.addresses import Hasher
from gateway.detect.few import Few
from gateway.detect.findings import FindingLog
from gateway.detect.marks import Written
from gateway.detect.sanctions import Sanction, Sanctions
from gateway.detect.scraping import ScrapingTrack
from gateway.detect.sharing import Session, SharingTrack
from gateway.fleet.grants import Grants
from gateway.state.bounded import BoundedTable

# A track past a finding remembers its offences this long at least (a repeat offender's block doubles).
_OFFENCES_KEPT = 86400.0
# Scores are forgotten once decayed below 1/1024 of what they were.
_HALF_LIVES = 10


class Track(ScrapingTrack):
    """Per identity, in this process: what every detector keeps for it, in one object (scraping's
    fields from ScrapingTrack, sharing's as sharing.SharingTrack describes them, the seat's
    mark). One object, not one per detector: each costs its header and is one more for the
    garbage collector to walk, for every identity seen (issue 14)."""

    __slots__ = ("at", "seat", "first_seen", "hops", "reported", "shared")

    def __init__(self, at: float, samples: int) -> None:
        super().__init__(samples)
        self.at = at  # last observed: the sweep forgets tracks idle past every window (`Context.idle_for`)
        self.seat: Written = ()  # when the login's seat was last written to the sightings (marks.py)
        self.first_seen: Few[str, float] = None
        self.hops: Few[str, Session] = None
        self.reported: dict[str, float] | None = None
        self.shared: Written = ()


class Context:
    """Shared by the detectors of one engine; `configure` swaps the settings, the state stays."""

    def __init__(self, findings: FindingLog, sanctions: Sanctions, grants: Grants,
                 sanction: Callable[[Sanction], None]) -> None:
        self.findings = findings
        self.sanctions = sanctions
        self.grants = grants
        self.sanction = sanction  # applies here and tells the fleet
        self.tracks: BoundedTable[str, Track] = BoundedTable(0, self._idle)  # limit: detection.max_tracked
        self.idle_for = 0.0
        # The last track looked up, for the detectors after the first on one observation; the
        # engine clears it before each (a sweep may run between two observations).
        self.recent: tuple[str, Track] | None = None
        # What each track remembers having written (marks.py) holds for this epoch only.
        self.epoch = 0

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
        return not track.offences or idle > max(_OFFENCES_KEPT, self.idle_for)

    def public(self, subject: str) -> str:
        """A subject as findings and shared state name it: anonymous networks only hashed."""
        if subject.startswith("address:"):
            return "address:" + self.hasher.hash(subject[len("address:"):])
        return subject

    def track(self, subject: str, at: float) -> Track:
        recent = self.recent
        if recent is not None and recent[0] is subject:
            return recent[1]  # the next detector on the same observation: looked up and refreshed already
        track = self.tracks.get(subject)
        if track is None:
            track = Track(at, self.settings.scraping.cadence_samples)
            self.tracks.put(subject, track)
        else:
            self.tracks.move_to_end(subject)
            track.at = max(track.at, at)
        self.recent = (subject, track)
        return track

    def scraping_track(self, subject: str, at: float) -> ScrapingTrack:
        return self.track(subject, at)

    def sharing_track(self, subject: str, at: float) -> SharingTrack:
        return self.track(subject, at)

    def forget_written(self) -> None:
        """Nothing reached the store: write everything again next time."""
        self.epoch += 1


def idle_for(settings: DetectionSettings) -> float:
    """How long an identity's track is worth keeping after its last request: the longest any
    signal looks back (evidence, a score's decay, sharing's windows and cooldown, a loop)."""
    scraping, sharing = settings.scraping, settings.sharing
    windows = sharing.windows
    return max(scraping.evidence_window, scraping.half_life * _HALF_LIVES, scraping.loop_duration,
               1.0 / scraping.poll_rate, windows.concurrent, windows.devices, windows.session, sharing.cooldown)
