"""The composition root: long-lived state built once with its collaborators passed in, and each
config's settings for it built in full before any of them is applied.

A reload builds the new Runtime and the new state settings first, then applies both; if
either cannot be built, neither changes (`Assembly.build` raises and nothing was touched)."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass

from gateway.alerts.webhooks import Alerts
from gateway.audit.trail import AuditCounters, AuditTrail, PreparedAudit
from gateway.auth.authenticator import AuthMetrics
from gateway.auth.failed_logins import FailedLogins
from gateway.auth.revocations import Revocations
from gateway.auth.token_cache import CacheCounts
from gateway.calendar import Calendar
from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.config.auth import FailedLoginLimit
from gateway.detect.engine import Detection, DetectionSetup
from gateway.detect.findings import Finding, FindingLog
from gateway.detect.proof import BrowserProofs
from gateway.enforce.enforcer import Enforcement
from gateway.enforce.granting import Granting
from gateway.enforce.notices import NoticeBook
from gateway.fleet.grants import Grants
from gateway.fleet.sharing import Fleet
from gateway.fleet.topics import Topic
from gateway.limits.stats import LimitStats
from gateway.metrics import Metrics
from gateway.proxy.runtime import GatewayState, Runtime
from gateway.state.store import StateStore
from gateway.state.tables import Tables
from gateway.usage.meter import UsageMeter


def assemble_state(store: StateStore, metrics: Metrics, clock: Clock, audit_suffix: str = "") -> GatewayState:
    """Everything that outlives a reload, each part given what it works with; no config yet
    (`Assembly.build` brings the first)."""
    findings = FindingLog(metrics.findings)
    audit = AuditTrail(clock, AuditCounters(metrics.audit_written, metrics.audit_dropped, metrics.audit_write_failures),
                       audit_suffix, store)
    alerts = Alerts(clock, metrics.alerts)
    audit.listeners.append(alerts.on_event)
    fleet = Fleet(store, audit, clock)
    revocations = Revocations(clock)
    fleet.receive(Topic.REVOCATIONS, revocations.sync_from)  # first: its answer tells a fleet from one process
    grants = Grants()
    detection = Detection(store.sightings(), findings, clock, fleet, grants)
    enforcement = Enforcement(store.sightings(), audit, clock, fleet, grants, transitions=metrics.transitions)
    granting = Granting(grants, fleet, detection.sanctions, enforcement, findings)
    usage = UsageMeter(store, clock, Calendar(zoneinfo.ZoneInfo("UTC")))  # the config brings its zone
    findings.listeners.append(enforcement.on_finding)

    def meter_finding(finding: Finding) -> None:
        if finding.customer is not None:
            usage.finding(finding.customer, finding.detector)

    findings.listeners.append(meter_finding)
    tables = Tables()
    for name, table in store.tables().items():
        tables.add(name, table, clock.time)
    failed_logins = FailedLogins(FailedLoginLimit(), clock)
    failed_logins.watch(tables)
    enforcement.watch(tables)
    detection.watch(tables)
    return GatewayState(
        clock=clock, store=store, fleet=fleet,
        auth_metrics=AuthMetrics(metrics.auth_results, metrics.findings),
        revocations=revocations, failed_logins=failed_logins,
        token_cache_counts=CacheCounts(), limit_stats=LimitStats(), findings=findings, audit=audit, alerts=alerts,
        grants=grants, detection=detection, enforcement=enforcement, granting=granting, usage=usage,
        proofs=BrowserProofs(clock, metrics.browser_proofs, metrics.proof_pages), tables=tables,
    )


@dataclass(frozen=True, slots=True)
class StateSettings:
    """One config's settings for the long-lived state, built (files opened, detectors compiled)
    and not yet applied."""

    config: GatewayConfig
    audit: PreparedAudit
    detection: DetectionSetup
    notices: NoticeBook
    calendar: Calendar

    @classmethod
    def build(cls, config: GatewayConfig, state: GatewayState) -> StateSettings:
        """Raises (OSError: the audit file cannot be opened) having changed nothing."""
        zone = zoneinfo.ZoneInfo(config.limits.time_zone)
        calendar = state.usage.calendar if state.usage.calendar.zone == zone else Calendar(zone)
        detection = state.detection.prepare(config)
        notices = NoticeBook(config)
        # Last: it opens a file, which `discard` closes again if a later step fails.
        return cls(config, state.audit.prepare(config.enforcement.audit), detection, notices, calendar)

    def apply(self, state: GatewayState) -> None:
        """Assignments only: nothing here can fail halfway."""
        config = self.config
        state.audit.apply(self.audit)
        state.failed_logins.settings = config.auth.failed_logins
        state.detection.apply(self.detection)
        state.proofs.configure(self.detection.salt, config.detection.proof.ttl)
        state.enforcement.configure(config.enforcement, config.state.key_prefix)
        state.enforcement.configure_notices(self.notices)
        state.alerts.configure(config.alerts)
        state.usage.configure(config.usage, self.calendar, config.state.key_prefix)

    def discard(self) -> None:
        self.audit.discard()


@dataclass(frozen=True, slots=True)
class Assembly:
    """A config ready to take over: its Runtime and its state settings."""

    runtime: Runtime
    settings: StateSettings

    @classmethod
    def build(cls, config: GatewayConfig, state: GatewayState, previous: Runtime | None = None) -> Assembly:
        """Build both, changing nothing in force; raises if either cannot be built."""
        settings = StateSettings.build(config, state)
        try:
            runtime = Runtime.build(config, state, previous)
        except BaseException:
            settings.discard()
            raise
        return cls(runtime, settings)

    def apply(self, state: GatewayState) -> Runtime:
        """Put the state settings in force; the Runtime to swap in."""
        self.settings.apply(state)
        return self.runtime
