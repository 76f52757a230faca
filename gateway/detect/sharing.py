"""Shared credentials: what one person cannot do with one login. A person carries a computer
and a phone, uses both at once on different networks, and moves between networks in sequence;
people sharing a login use computers in several places at once, more devices within minutes
than one person carries, or one copied session token from several networks at the same time."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from gateway.auth.cookies import cookie_value
from gateway.config.detection import SharingAllowance
from gateway.config.detection import SharingDetector as SharingSettings
from gateway.detect import few
from gateway.detect.addresses import Hasher, network_of
from gateway.detect.agents import device_of
from gateway.detect.few import Few
from gateway.detect.marks import Written
from gateway.detect.observation import Observation
from gateway.state.sightings import Answers, Query, Sighting

_MAX_SESSIONS_KEPT = 32
_MOBILE = ("/Android", "/iOS")
COMPUTER, MOBILE, PROGRAM = "computer", "mobile", "program"


@dataclass(frozen=True, slots=True)
class SharingVerdict:
    signals: tuple[str, ...]
    newest_session: str | None
    evidence: dict[str, Any]


class SharingQueries(NamedTuple):
    """What one login's sharing verdict asks the sightings store."""

    uses: Query  # (device class, device, session, network) within windows.concurrent
    devices: Query


class _Hops:
    """One session's network changes, in the order this process saw its requests. Made at its
    first change: until then (most sessions never change) the session is (network, last seen),
    a tuple the garbage collector stops tracking."""

    __slots__ = ("network", "at", "switches", "networks")

    def __init__(self, network: str, at: float, switches: deque[float], networks: dict[str, float]) -> None:
        self.network = network  # in clear, this process only (as network_of gives it)
        self.at = at  # last seen (on `network`)
        self.switches = switches
        self.networks = networks  # network hash -> last seen


Session = tuple[str, float] | _Hops


class SharingTrack(Protocol):
    """What a login's track (context.Track, one object per identity) holds for sharing: when each
    session was first seen (to tell the newest) and how often each session changed networks (a
    copied token flips between them). The maps are made on the login's first use."""

    first_seen: Few[str, float]  # few.py
    hops: Few[str, Session]
    reported: dict[str, float] | None  # signal -> when last reported (cooldown); made on the first
    shared: Written  # session, address, agent and device written to the sightings lately (marks.py)


def device_class(device: str) -> str:
    """computer, mobile or program, from device_of's 'Browser/Platform' (programs have no '/')."""
    if "/" not in device:
        return PROGRAM
    return MOBILE if device.endswith(_MOBILE) else COMPUTER


class SharingWatch:
    def __init__(self, settings: SharingSettings, hasher: Hasher, key_prefix: str) -> None:
        self.settings = settings
        self._hasher = hasher
        self._prefix = key_prefix

    def _key(self, obs_subject: str, what: str) -> str:
        return f"{self._prefix}:d:{{{obs_subject}}}:{what}"

    def hop(self, obs: Observation, track: SharingTrack) -> bool:
        """Note the session's network; True if it changed. Called for every observation, before
        any deduplication, since a copied token shows in the alternation between networks."""
        session, network, at = obs.session, network_of(obs.client_ip), obs.at
        if not session or not network:
            return False
        sessions = track.hops
        hops = few.get(sessions, session)
        if hops is None or isinstance(hops, tuple):
            if hops is None:
                if few.size(sessions) >= _MAX_SESSIONS_KEPT:
                    sessions, _ = few.pop(sessions, few.first(sessions))
            elif hops[0] != network:  # the session's first change of networks
                hashed = self._hasher.hash
                track.hops = few.put(sessions, session, _Hops(network, at, deque((at,)),
                                                              {hashed(hops[0]): hops[1], hashed(network): at}))
                return True
            track.hops = few.put(sessions, session, (network, at))
            return False
        switched = hops.network != network
        if switched:
            hops.network = network
            hops.switches.append(at)
        hops.at = at
        hops.networks[self._hasher.hash(network)] = at
        horizon = at - self.settings.windows.session
        while hops.switches and hops.switches[0] < horizon:
            hops.switches.popleft()
        if len(hops.networks) > 16:
            hops.networks = {n: at for n, at in hops.networks.items() if at >= horizon}
        return switched

    def sightings(self, obs: Observation, track: SharingTrack) -> list[Sighting]:
        subject, windows = obs.subject, self.settings.windows
        first_seen = track.first_seen
        if obs.session and not few.has(first_seen, obs.session):
            if few.size(first_seen) >= _MAX_SESSIONS_KEPT:
                oldest = min(few.items(first_seen), key=lambda item: item[1])[0]
                first_seen, _ = few.pop(first_seen, oldest)
            track.first_seen = few.put(first_seen, obs.session, obs.at)
        device, kind = self._device(obs)
        network = network_of(obs.client_ip)
        use = f"{kind}|{device}|{obs.session or ''}|{self._hasher.hash(network) if network else ''}"
        return [Sighting(self._key(subject, "uses"), use, obs.at, windows.concurrent, 64),
                Sighting(self._key(subject, "devices"), device, obs.at, windows.devices, 64)]

    def device_mark(self, obs: Observation) -> str | None:
        """The raw device id the request carries, if the deployment sends one."""
        settings = self.settings
        if settings.device_header and (device := obs.headers.get(settings.device_header)):
            return device
        if settings.device_cookie:
            return cookie_value((obs.headers.get("Cookie", ""),), settings.device_cookie)
        return None

    def _device(self, obs: Observation) -> tuple[str, str]:
        """The device and its class; a device id's class is still read off the user agent."""
        named = device_of(obs.agent)
        device = self.device_mark(obs)
        return ("id:" + self._hasher.hash(device) if device else named), device_class(named)

    def queries(self, subject: str, now: float) -> SharingQueries:
        windows = self.settings.windows
        return SharingQueries(Query(self._key(subject, "uses"), now - windows.concurrent),
                              Query(self._key(subject, "devices"), now - windows.devices))

    def verdict(self, obs: Observation, asked: SharingQueries, answers: Answers, allowance: SharingAllowance,
                track: SharingTrack, extra_signals: tuple[str, ...] = ()) -> SharingVerdict | None:
        now, windows = obs.at, self.settings.windows
        over: list[str] = []
        evidence: dict[str, Any] = {}
        # Computers in use at once, each where it was last seen: one person's is in one place.
        computers: dict[str, tuple[str, float]] = {}
        for use, seen in answers[asked.uses].items():
            kind, device, session, network = use.split("|", 3)
            if kind != COMPUTER or not network:
                continue
            computer = device if device.startswith("id:") else f"{device} ({session})" if session else device
            if computer not in computers or computers[computer][1] < seen:
                computers[computer] = (network, seen)
        places = {network for network, _ in computers.values()}
        if len(places) > allowance.computer_networks:
            over.append("computers")
            evidence["computers"] = {
                "within": windows.concurrent, "allowed_networks": allowance.computer_networks,
                "seen": [{"computer": name, "network": network, "last_seen": round(at, 3)}
                         for name, (network, at) in sorted(computers.items())]}
        devices = answers[asked.devices]
        if len(devices) > allowance.devices:
            over.append("devices")
            evidence["devices"] = {"within": windows.devices, "allowed": allowance.devices,
                                   "seen": sorted(devices)}
        hops = few.get(track.hops, obs.session or "")
        if isinstance(hops, _Hops) and len(hops.switches) > allowance.session_switches:
            over.append("session_networks")
            horizon = now - windows.session
            evidence["session_networks"] = {
                "session": obs.session, "within": windows.session, "allowed_switches": allowance.session_switches,
                "switches": len(hops.switches), "first_switch": round(hops.switches[0], 3),
                "networks": sorted(n for n, at in hops.networks.items() if at >= horizon)}
        over += extra_signals
        reported = track.reported or {}
        fresh = [s for s in over if now - reported.get(s, float("-inf")) >= self.settings.cooldown]
        if not fresh:
            return None
        if track.reported is None:
            track.reported = {}
        for signal in over:
            track.reported[signal] = now
        sessions = {use.split("|", 3)[2] for use in answers[asked.uses]} - {""}
        if "session_networks" in over:
            newest = obs.session  # the copied token itself: every copy asks again
        else:
            first_seen = dict(few.items(track.first_seen))
            newest = max((s for s in sessions if s in first_seen), key=first_seen.__getitem__,
                         default=None) if len(sessions) > 1 else None
        evidence["sessions"] = sorted(sessions)
        evidence["allowance"] = allowance.model_dump()
        return SharingVerdict(tuple(over), newest, evidence)
