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
# What was written to the sightings store, as `due` remembers it (identity, path or address, agent, ...).
Mark = tuple[str | None, ...]


class Track:
    """Per identity, in this process: one table entry holds what each detector keeps for it."""

    __slots__ = ("scraping", "sharing")

    def __init__(self) -> None:
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
        self.tracks: BoundedTable[str, Track] = BoundedTable(0)  # limit: detection.max_tracked
        self._written: dict[Mark, float] = {}  # what was last sent to the store, and when

    def configure(self, config: GatewayConfig, hasher: Hasher) -> None:
        self.config = config
        self.settings: DetectionSettings = config.detection
        self.hasher = hasher
        self.prefix = config.state.key_prefix
        self.tracks.limit = config.detection.max_tracked

    def public(self, subject: str) -> str:
        """A subject as findings and shared state name it: anonymous networks only hashed."""
        if subject.startswith("address:"):
            return "address:" + self.hasher.hash(subject[len("address:"):])
        return subject

    def track(self, subject: str) -> Track:
        track = self.tracks.get(subject)
        if track is None:
            track = Track()
            self.tracks.put(subject, track)
        else:
            self.tracks.move_to_end(subject)
        return track

    def scraping_track(self, subject: str) -> ScrapingTrack:
        track = self.track(subject)
        if track.scraping is None:
            track.scraping = ScrapingTrack(self.settings.scraping.cadence_samples)
        return track.scraping

    def sharing_track(self, subject: str) -> SharingTrack:
        track = self.track(subject)
        if track.sharing is None:
            track.sharing = SharingTrack()
        return track.sharing

    def due(self, mark: Mark, at: float, every: float) -> bool:
        """Whether what `mark` describes should be written to the store again.

        The same identity seen again the same way (session, address, agent; or path) within
        `every` seconds is not written again: last-seen times are that coarse, a steady
        client costs the store nothing, and only an identity with something new is counted."""
        written = self._written
        last = written.get(mark)
        if last is not None and at - last < every:
            return False
        if len(written) >= _MAX_WRITTEN:
            written.clear()
        written[mark] = at
        return True

    def forget_written(self) -> None:
        """Nothing reached the store: write everything again next time."""
        self._written.clear()
