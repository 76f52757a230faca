"""Everything the proxy needs for one config, compiled once: routes, pools, trusted proxies,
the authenticator.

A reload builds a new Runtime and swaps one reference. Upstream pools and JWKS fetchers whose
settings did not change are carried over, so warm connections and loaded keys survive it;
long-lived state (revocations, failed logins) lives in GatewayState, outside any one config.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field

from prometheus_client import Counter

from gateway.auth.authenticator import AuthMetrics, Authenticator
from gateway.auth.failed_logins import FailedLogins
from gateway.auth.keys import JwksFetcher, KeySource, StaticKeys
from gateway.auth.revocations import Revocations
from gateway.auth.verifier import IssuerVerifier, TokenVerifier
from gateway.calendar import Calendar
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import GatewayConfig, Route, Upstream
from gateway.config.auth import FailedLoginLimit
from gateway.alerts.webhooks import Alerts
from gateway.audit.trail import AuditCounters, AuditTrail
from gateway.detect.engine import Detection
from gateway.detect.findings import Finding, FindingLog
from gateway.detect.sanctions import session_key, user_key
from gateway.enforce.enforcer import Enforcement
from gateway.enforce.grants import ALLOW_AGENT, ALLOW_USER, Grant, Grants
from gateway.proxy.client_address import ClientAddressResolver
from gateway.proxy.request_body import BodyTimeouts
from gateway.proxy.routing import Router
from gateway.proxy.websocket import WEBSOCKET_HANDSHAKE
from gateway.limits.limiter import Limiter
from gateway.limits.policy import PlanBook
from gateway.limits.shedding import InFlightGate
from gateway.limits.stats import LimitStats
from gateway.state.memory import MemoryStore
from gateway.state.store import StateStore
from gateway.upstream import UpstreamPool
from gateway.usage.meter import UsageMeter


@dataclass
class GatewayState:
    """What outlives a config reload."""

    auth_metrics: AuthMetrics
    store: StateStore = field(default_factory=MemoryStore)
    limit_stats: LimitStats = field(default_factory=LimitStats)
    clock: Clock = SYSTEM_CLOCK
    findings: FindingLog = field(default_factory=lambda: FindingLog(None))
    revocations: Revocations = field(init=False)
    failed_logins: FailedLogins = field(init=False)
    audit_counters: AuditCounters | None = None
    audit_suffix: str = ""
    transitions: Counter | None = None  # fairgate_enforcement_transitions_total{state}
    alert_counter: Counter | None = None  # fairgate_alerts_total{webhook, result}
    audit: AuditTrail = field(init=False)
    detection: Detection = field(init=False)
    enforcement: Enforcement = field(init=False)
    usage: UsageMeter = field(init=False)
    alerts: Alerts = field(init=False)
    grants: Grants = field(default_factory=Grants)

    def __post_init__(self) -> None:
        self.revocations = Revocations(self.clock)
        self.failed_logins = FailedLogins(FailedLoginLimit(), self.clock)
        store = self.store
        self.detection = Detection(store.sightings(), self.findings, self.clock,
                                   share=lambda entry, until: store.share("sanctions", entry, until))
        self.audit = AuditTrail(self.clock, self.audit_counters, self.audit_suffix, store)
        self.alerts = Alerts(self.clock, self.alert_counter)
        self.audit.listeners.append(self.alerts.on_event)
        self.enforcement = Enforcement(store.sightings(), self.audit, self.clock,
                                       share=lambda entry, until: store.share("standings", entry, until),
                                       transitions=self.transitions)
        self.usage = UsageMeter(store, self.clock, Calendar(zoneinfo.ZoneInfo("UTC")))
        self.detection.grants = self.enforcement.grants = self.grants
        self.findings.listeners.append(self.enforcement.on_finding)
        self.findings.listeners.append(self._meter_finding)

    async def grant(self, grant: Grant) -> None:
        """Apply an exception or allow-list entry made here, and share it with the fleet (raises
        if the shared store cannot be written; this gateway applies it anyway)."""
        self.take_grant(grant)
        await self.store.share("grants", grant.as_entry(), grant.until)
        if grant.kind in (ALLOW_USER, ALLOW_AGENT):
            lifted = tuple(self._sanction_keys(grant))
            await self.store.unshare("sanctions", lambda entry: str(entry.get("key", "")).startswith(lifted))

    async def revoke_grant(self, grant_id: str) -> Grant | None:
        """End a grant now, here and across the fleet (raises if the shared store cannot be
        written; this gateway has ended it anyway, and a retry reaches the fleet); None if unknown."""
        grant = self.grants.revoke(grant_id)
        if grant is None:
            return None
        await self.store.share("revoked-grants", {"id": grant_id}, grant.until)
        await self.store.unshare("grants", lambda entry: entry.get("id") == grant_id)
        return grant

    def take_grant(self, grant: Grant) -> None:
        """Apply a grant (made here or learnt from the fleet): an allow-list entry also lifts the
        decisions already made about whom it allows."""
        if not self.grants.add(grant):
            return
        if grant.kind not in (ALLOW_USER, ALLOW_AGENT):
            return
        for prefix in self._sanction_keys(grant):
            self.detection.sanctions.clear(prefix)
        if grant.kind == ALLOW_USER and grant.customer is not None and grant.user is not None:
            self.enforcement.clear_user(grant.customer, grant.user, by=grant.by)

    def _sanction_keys(self, grant: Grant) -> set[str]:
        """Prefixes of the sanction keys an allow-list entry lifts."""
        if grant.kind == ALLOW_USER:
            customer, user = grant.customer or "", grant.user or ""
            return {user_key(customer, user), session_key(customer, user, "")}
        # An agent: the subjects whose scraping findings named it.
        agent = (grant.agent or "").lower()
        return {f.subject for f in self.findings.recent()
                if agent and agent in str(f.evidence.get("user_agent", "")).lower()}

    def _meter_finding(self, finding: Finding) -> None:
        if finding.customer is not None:
            self.usage.finding(finding.customer, finding.detector)


@dataclass(frozen=True, slots=True)
class RouteTarget:
    route: Route
    pool: UpstreamPool
    # None keeps the client's Host header.
    host_header: bytes | None
    ws_base_url: str
    # Request headers never passed upstream on this route (identity headers, maybe Authorization).
    strip_headers: frozenset[bytes]
    strip_headers_websocket: frozenset[bytes]
    # The upstream's in-flight cap (shared by every route to it), if it has one.
    gate: InFlightGate | None


class Runtime:
    def __init__(
        self,
        config: GatewayConfig,
        pools: dict[str, UpstreamPool],
        gates: dict[str, InFlightGate],
        key_sources: dict[str, KeySource],
        state: GatewayState,
    ) -> None:
        self.config = config
        self.pools = pools
        self.gates = gates
        self.key_sources = key_sources
        self.client_addresses = ClientAddressResolver(config.server.trusted_proxies)
        self.body_timeouts = BodyTimeouts(config.server.body_idle_timeout, config.server.body_total_timeout)
        self.send_timeout = config.server.send_timeout
        headers = config.auth.identity_headers
        self.customer_header = headers.customer.encode("ascii")
        self.user_header = headers.user.encode("ascii")
        self.authenticator: Authenticator | None = None
        if config.auth.issuers:
            verifier = TokenVerifier(
                [IssuerVerifier(issuer, key_sources[issuer.name], state.clock) for issuer in config.auth.issuers]
            )
            self.authenticator = Authenticator(
                config.auth, verifier, state.revocations, state.failed_logins, state.auth_metrics, state.clock
            )
        self.limiter: Limiter | None = None
        if config.plans:
            self.limiter = Limiter(
                PlanBook(config.limits, config.plans, config.customers, state.grants), state.store, state.limit_stats,
                state.clock,
                key_prefix=config.state.key_prefix, ratelimit_headers=config.limits.ratelimit_headers,
                legacy_headers=config.limits.legacy_headers,
            )
        # Detection state outlives reloads; a config without detectors simply stops consulting it.
        self.detection: Detection | None = state.detection if config.detection.enabled else None
        # Consulted by the request path only when it enforces; shadow mode records, off does nothing.
        self.enforcement: Enforcement | None = state.enforcement if config.enforcement.enabled else None
        self.usage: UsageMeter | None = state.usage if config.usage.enabled else None
        self.router: Router[RouteTarget] = Router(
            [(route.host, route.path_prefix, self._target(route)) for route in config.routes]
        )

    def _target(self, route: Route) -> RouteTarget:
        upstream = self.config.upstreams[route.upstream]
        authority = f"{upstream.host}:{upstream.port}"
        strip = {self.customer_header.lower(), self.user_header.lower()}
        if not route.forward_authorization:
            strip.add(b"authorization")
        return RouteTarget(
            route=route,
            pool=self.pools[route.upstream],
            host_header=None if upstream.preserve_host else authority.encode("ascii"),
            ws_base_url=f"ws://{authority}",
            strip_headers=frozenset(strip),
            strip_headers_websocket=frozenset(strip) | WEBSOCKET_HANDSHAKE,
            gate=self.gates.get(route.upstream),
        )

    @classmethod
    def build(cls, config: GatewayConfig, state: GatewayState, previous: "Runtime | None" = None) -> "Runtime":
        state.failed_logins.settings = config.auth.failed_logins
        state.detection.configure(config)
        state.enforcement.configure(config.enforcement, config.state.key_prefix)
        state.audit.configure(config.enforcement.audit)
        state.alerts.configure(config.alerts)
        zone = zoneinfo.ZoneInfo(config.limits.time_zone)
        calendar = state.usage.calendar if state.usage.calendar.zone == zone else Calendar(zone)
        state.usage.configure(config.usage, calendar, config.state.key_prefix)
        pools, gates = {}, {}
        max_priority = max((plan.priority for plan in config.plans.values()), default=0)
        for name, upstream in config.upstreams.items():
            unchanged = previous is not None and previous.config.upstreams.get(name) == upstream
            pools[name] = previous.pools[name] if unchanged else _new_pool(upstream)  # type: ignore[union-attr]
            if upstream.max_in_flight is not None:
                # The same gate object carries on, so requests still out leave the gate they entered.
                gate = previous.gates.get(name) if unchanged else None  # type: ignore[union-attr]
                gates[name] = gate or InFlightGate(upstream.max_in_flight, max_priority, upstream.anonymous_share)
                gates[name].set_priorities(max_priority)
        key_sources: dict[str, KeySource] = {}
        for issuer in config.auth.issuers:
            if issuer.jwks_url is None:
                key_sources[issuer.name] = StaticKeys.for_issuer(issuer)
                continue
            fetcher = JwksFetcher.for_issuer(issuer, state.clock)
            reusable = previous.key_sources.get(issuer.name) if previous else None
            if isinstance(reusable, JwksFetcher) and reusable.settings_key() == fetcher.settings_key():
                fetcher = reusable
            key_sources[issuer.name] = fetcher
        return cls(config, pools, gates, key_sources, state)

    def start(self) -> None:
        """Begin background work (JWKS fetching); needs the running loop."""
        for source in self.key_sources.values():
            if isinstance(source, JwksFetcher):
                source.start()

    def not_ready_reason(self) -> str | None:
        for name, source in self.key_sources.items():
            reason = source.not_ready_reason()
            if reason is not None:
                return f"issuer {name}: {reason}"
        return None

    async def close_unused(self, successor: "Runtime | None") -> None:
        """Close what this runtime owns that `successor` did not take over."""
        kept = {id(item) for item in (*successor.pools.values(), *successor.key_sources.values())} if successor else set()
        for pool in self.pools.values():
            if id(pool) not in kept:
                await pool.close()
        for source in self.key_sources.values():
            if isinstance(source, JwksFetcher) and id(source) not in kept:
                await source.close()


def _new_pool(upstream: Upstream) -> UpstreamPool:
    return UpstreamPool(
        upstream.host,
        upstream.port,
        connect_timeout=upstream.connect_timeout,
        read_timeout=upstream.read_timeout,
        idle_timeout=upstream.idle_timeout,
        max_connections=upstream.max_connections,
    )
