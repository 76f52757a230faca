"""Everything the proxy needs for one config, compiled once: routes, pools, trusted proxies,
the authenticator.

A reload builds a new Runtime and swaps one reference. Upstream pools and JWKS fetchers whose
settings did not change are carried over, so warm connections and loaded keys survive it;
long-lived state (revocations, failed logins, detection, enforcement, ...) lives in GatewayState,
outside any one config, and takes each config's settings from the assembly.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.alerts.webhooks import Alerts
from gateway.audit.trail import AuditTrail
from gateway.auth.authenticator import Authenticator, AuthMetrics
from gateway.auth.failed_logins import FailedLogins
from gateway.auth.keys import JwksFetcher, KeySource, StaticKeys
from gateway.auth.revocations import Revocations
from gateway.auth.session_cookie import SessionCookieReader
from gateway.auth.token_cache import CacheCounts
from gateway.auth.verifier import IssuerVerifier, TokenVerifier
from gateway.clock import Clock
from gateway.config import GatewayConfig, Route, Upstream
from gateway.detect.engine import Detection
from gateway.detect.findings import FindingLog
from gateway.detect.off import DETECTION_OFF, RequestDetection
from gateway.detect.proof import BrowserProofs
from gateway.enforce.enforcer import Enforcement
from gateway.enforce.granting import Granting
from gateway.enforce.off import ENFORCEMENT_OFF, RequestEnforcement
from gateway.fleet.grants import Grants
from gateway.fleet.sharing import Fleet
from gateway.limits.limiter import Limiter
from gateway.limits.policy import PlanBook
from gateway.limits.shedding import InFlightGate
from gateway.limits.stats import LimitStats
from gateway.proxy.browser_proof import ProofLinks
from gateway.proxy.challenge import Challenges, challenge_key
from gateway.proxy.client_address import ClientAddressResolver
from gateway.proxy.pages.layout import Appeal
from gateway.proxy.request_body import BodyTimeouts
from gateway.proxy.routing import Router
from gateway.proxy.websocket import WEBSOCKET_HANDSHAKE
from gateway.state.store import StateStore
from gateway.upstream import UpstreamPool
from gateway.upstream.rate_cap import RateCap
from gateway.usage.meter import UsageMeter


@dataclass(frozen=True, slots=True)
class GatewayState:
    """What outlives a config reload, built once by the assembly (gateway/server/assembly.py)."""

    clock: Clock
    store: StateStore
    fleet: Fleet
    auth_metrics: AuthMetrics
    revocations: Revocations
    failed_logins: FailedLogins
    token_cache_counts: CacheCounts  # each reload starts a new cache
    limit_stats: LimitStats
    findings: FindingLog
    audit: AuditTrail
    alerts: Alerts
    grants: Grants
    detection: Detection
    enforcement: Enforcement
    granting: Granting
    usage: UsageMeter
    proofs: BrowserProofs


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
    # The upstream's rate cap (shared likewise), if it has one.
    rate_cap: RateCap | None = None
    # How the route reads the login cookie; None (most routes) costs nothing per request.
    session_cookie: SessionCookieReader | None = None
    # The browser-proof links its HTML pages carry; None on routes without (API routes cost nothing).
    proof_links: ProofLinks | None = None


class Runtime:
    def __init__(
        self,
        config: GatewayConfig,
        pools: dict[str, UpstreamPool],
        gates: dict[str, InFlightGate],
        key_sources: dict[str, KeySource],
        state: GatewayState,
        rate_caps: dict[str, RateCap] | None = None,
    ) -> None:
        self.config = config
        self.pools = pools
        self.gates = gates
        self.rate_caps = rate_caps or {}
        self.key_sources = key_sources
        self.client_addresses = ClientAddressResolver(config.server.trusted_proxies)
        self.body_timeouts = BodyTimeouts(config.server.body_idle_timeout, config.server.body_total_timeout)
        self.send_timeout = config.server.send_timeout
        headers = config.auth.identity_headers
        self.customer_header = headers.customer.encode("ascii")
        self.user_header = headers.user.encode("ascii")
        # Without issuers no route authenticates (the loader sees to it); the verifier then knows no token.
        verifier = TokenVerifier(
            [IssuerVerifier(issuer, key_sources[issuer.name], state.clock) for issuer in config.auth.issuers]
        )
        self.authenticator = Authenticator(
            config.auth, verifier, state.revocations, state.failed_logins, state.auth_metrics, state.clock,
            state.token_cache_counts,
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
        self.detection: RequestDetection = state.detection if config.detection.enabled else DETECTION_OFF
        # Consulted by the request path only when it enforces; shadow mode records, off does nothing.
        self.enforcement: RequestEnforcement = state.enforcement if config.enforcement.enabled else ENFORCEMENT_OFF
        self.usage: UsageMeter | None = state.usage if config.usage.enabled else None
        self.proof_links = ProofLinks(config, state.proofs, self.detection, self.authenticator, self.client_addresses)
        # What a person's browser meets when refused: the challenge's signed proof-of-work, the appeal link.
        self.challenges = Challenges(challenge_key(config.detection.salt()), config.detection.scraping.challenge,
                                     state.clock)
        self.appeal = Appeal.of(config.enforcement)
        self.router: Router[RouteTarget] = Router(
            [(route.host, route.path_prefix, self._target(route)) for route in config.routes]
        )

    def _target(self, route: Route) -> RouteTarget:
        upstream = self.config.upstreams[route.upstream]
        authority = f"{upstream.host}:{upstream.port}"
        strip = {self.customer_header.lower(), self.user_header.lower()}
        if not route.forward_authorization:
            strip.add(b"authorization")
        session = self._session_cookie(route)
        if session is not None and not session.forwards:
            strip.add(b"cookie")  # the handler passes the other cookies on
        return RouteTarget(
            route=route,
            pool=self.pools[route.upstream],
            host_header=None if upstream.preserve_host else authority.encode("ascii"),
            ws_base_url=f"ws://{authority}",
            strip_headers=frozenset(strip),
            strip_headers_websocket=frozenset(strip) | WEBSOCKET_HANDSHAKE,
            gate=self.gates.get(route.upstream),
            rate_cap=self.rate_caps.get(route.upstream),
            session_cookie=session,
            proof_links=self.proof_links if self.proof_links.plants_on(route) else None,
        )

    def _session_cookie(self, route: Route) -> SessionCookieReader | None:
        settings = self.config.auth.session_cookie
        if settings is None or route.auth == "none":
            return None
        reads = route.login_cookie if route.login_cookie is not None else route.route_class == "portal"
        return SessionCookieReader(settings) if reads else None

    @classmethod
    def build(cls, config: GatewayConfig, state: GatewayState, previous: Runtime | None = None) -> Runtime:
        """The Runtime of `config`, reusing what `previous` has of it; changes nothing in `state`."""
        pools: dict[str, UpstreamPool] = {}
        gates: dict[str, InFlightGate] = {}
        rate_caps: dict[str, RateCap] = {}
        max_priority = max((plan.priority for plan in config.plans.values()), default=0)
        for name, upstream in config.upstreams.items():
            # The previous runtime if this upstream did not change, so its parts carry on.
            same = previous if previous is not None and previous.config.upstreams.get(name) == upstream else None
            pools[name] = same.pools[name] if same is not None else _new_pool(upstream)
            if upstream.max_in_flight is not None:
                # The same gate object carries on, so requests still out leave the gate they entered.
                gate = same.gates.get(name) if same is not None else None
                gates[name] = gate or InFlightGate(upstream.max_in_flight, max_priority, upstream.anonymous_share,
                                                    upstream.anonymous_network_share)
                gates[name].set_priorities(max_priority)
            # Kept across reloads of an unchanged upstream, so a reload does not let a burst through.
            cap = same.rate_caps.get(name) if same is not None else RateCap.for_upstream(upstream)
            if cap is not None:
                rate_caps[name] = cap
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
        return cls(config, pools, gates, key_sources, state, rate_caps)

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

    async def close_unused(self, successor: Runtime | None) -> None:
        """Close what this runtime owns that `successor` did not take over."""
        kept = ({id(item) for item in (*successor.pools.values(), *successor.key_sources.values())}
                if successor else set())
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
