"""Shared credentials: one login's sessions, client networks and devices over sliding windows,
against the plan's allowance (one session, three networks an hour, three devices a day)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.auth.cookies import cookie_value
from gateway.config.detection import SharingAllowance
from gateway.config.detection import SharingDetector as SharingSettings
from gateway.detect.addresses import Hasher, network_of
from gateway.detect.agents import device_of
from gateway.detect.observation import Observation
from gateway.state.sightings import Answers, Query, Sighting

_MAX_SESSIONS_KEPT = 32


@dataclass(frozen=True, slots=True)
class SharingVerdict:
    signals: tuple[str, ...]
    newest_session: str | None
    evidence: dict[str, Any]


class SharingQueries(NamedTuple):
    """What one login's sharing verdict asks the sightings store."""

    sessions: Query
    networks: Query
    devices: Query


class SharingTrack:
    """When this process first saw each session of a user, to tell which one is newest."""

    __slots__ = ("first_seen", "reported")

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self.reported: dict[str, float] = {}  # signal -> when last reported (cooldown)


class SharingWatch:
    def __init__(self, settings: SharingSettings, hasher: Hasher, key_prefix: str) -> None:
        self.settings = settings
        self._hasher = hasher
        self._prefix = key_prefix

    def _key(self, obs_subject: str, what: str) -> str:
        return f"{self._prefix}:d:{{{obs_subject}}}:{what}"

    def sightings(self, obs: Observation, track: SharingTrack) -> list[Sighting]:
        subject, windows = obs.subject, self.settings.windows
        seen = []
        if obs.session:
            if obs.session not in track.first_seen:
                if len(track.first_seen) >= _MAX_SESSIONS_KEPT:
                    del track.first_seen[min(track.first_seen, key=track.first_seen.__getitem__)]
                track.first_seen[obs.session] = obs.at
            seen.append(Sighting(self._key(subject, "sessions"), obs.session, obs.at, windows.sessions, 64))
        network = network_of(obs.client_ip)
        if network:
            seen.append(Sighting(self._key(subject, "networks"), self._hasher.hash(network), obs.at,
                                 windows.networks, 64))
        seen.append(Sighting(self._key(subject, "devices"), self._device(obs), obs.at, windows.devices, 64))
        return seen

    def device_mark(self, obs: Observation) -> str | None:
        """The raw device id the request carries, if the deployment sends one."""
        settings = self.settings
        if settings.device_header and (device := obs.headers.get(settings.device_header)):
            return device
        if settings.device_cookie:
            return cookie_value((obs.headers.get("Cookie", ""),), settings.device_cookie)
        return None

    def _device(self, obs: Observation) -> str:
        device = self.device_mark(obs)
        return "id:" + self._hasher.hash(device) if device else device_of(obs.headers.get("User-Agent", ""))

    def queries(self, subject: str, now: float) -> SharingQueries:
        windows = self.settings.windows
        return SharingQueries(Query(self._key(subject, "sessions"), now - windows.sessions),
                              Query(self._key(subject, "networks"), now - windows.networks),
                              Query(self._key(subject, "devices"), now - windows.devices))

    def verdict(self, asked: SharingQueries, answers: Answers, allowance: SharingAllowance, track: SharingTrack,
                now: float, extra_signals: tuple[str, ...] = ()) -> SharingVerdict | None:
        sessions, networks, devices = answers[asked.sessions], answers[asked.networks], answers[asked.devices]
        over = [name for name, seen, allowed in (("sessions", sessions, allowance.sessions),
                                                 ("networks", networks, allowance.networks),
                                                 ("devices", devices, allowance.devices)) if len(seen) > allowed]
        over += extra_signals
        fresh = [s for s in over if now - track.reported.get(s, float("-inf")) >= self.settings.cooldown]
        if not fresh:
            return None
        for signal in over:
            track.reported[signal] = now
        newest = max((s for s in sessions if s in track.first_seen), key=track.first_seen.__getitem__,
                     default=None) if len(sessions) > 1 else None
        evidence = {
            "sessions": sorted(sessions), "networks": sorted(networks), "devices": sorted(devices),
            "allowance": allowance.model_dump(),
        }
        return SharingVerdict(tuple(over), newest, evidence)
