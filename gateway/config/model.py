"""The typed, immutable shape of a fairgate config file.

Every section is a frozen pydantic model that rejects unknown keys; human units are parsed
into numbers here, once, so nothing downstream ever sees a raw string or dict.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from gateway.config.alerts import AlertSettings
from gateway.config.auth import AuthSettings
from gateway.config.detection import DetectionSettings, RouteClass
from gateway.config.enforcement import EnforcementSettings
from gateway.config.limits import Customers, LimitSettings, Plans, RateValue, StateSettings, plan_of
from gateway.config.types import Duration, HostPort, Network, Section, Size, frozen_mapping
from gateway.config.usage import UsageSettings

# Sighting keys one tracked identity writes: its paths, its agents per session (one session most
# often), its uses and devices (sharing), its customer's seats, and one to spare (a second session).
SIGHTING_KEYS_PER_IDENTITY = 6


def _check_thresholds(value: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if len(value) != 3:
        raise ValueError(f"expected three numbers [gen0, gen1, gen2] as gc.set_threshold takes, got {list(value)}")
    if min(value) < 0:
        raise ValueError(f"thresholds are 0 or more, got {list(value)}")
    if value[0] < 1:
        # gc.set_threshold(0, ...) switches automatic collection off: cycles would never be freed.
        raise ValueError("the first threshold is at least 1 (0 turns the collector off)")
    return value


def _check_interval(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError(f"an interval is more than 0 (null for never), got {value:g} s")
    return value


class GcSettings(Section):
    """The garbage collector of each gateway process, tuned once it has started."""

    freeze_after_start: bool = Field(
        True, description="After start-up, move every object then alive (modules, config, compiled policies) "
                          "out of the collector's view, so no collection scans them again.")
    # Measured at 20k customers (bench/gc_pauses.py; docs/performance.md, "Garbage collection"):
    # with the generational freeze every 250 ms the oldest generation stays small, so Python's
    # own thresholds keep each collection at most ~2-3 ms of CPU, against 80-100 ms for each young
    # collection with (50000, 50, 100), the thresholds that kept full collections away unfrozen.
    thresholds: Annotated[tuple[int, ...] | None, AfterValidator(_check_thresholds)] = Field(
        (700, 10, 10), description="gc.set_threshold(gen0, gen1, gen2) after start-up; null keeps Python's "
                                   "(700, 10, 10).")
    freeze_interval: Annotated[Duration | None, AfterValidator(_check_interval)] = Field(
        0.25, description="Every this long, collect the young generations and gc.freeze() the survivors, so no "
                         "automatic collection walks the long-lived heap; null freezes only after start-up.")
    # On by default, as a safety net: cyclic garbage made while frozen is found by nothing else.
    # The request kinds measured leave none on uvloop (tests/test_gc_cycles.py); asyncio's own loop
    # on 3.11 leaves 7 objects per closed connection (CPython gh-100348), and paths not measured
    # (a pool-full wait, WebSocket, the Redis client) may leave some.
    full_collection_interval: Annotated[Duration | None, AfterValidator(_check_interval)] = Field(
        21600.0, description="Every this long, unfreeze and collect everything (frees cyclic garbage frozen while in "
                            "use; holds the event loop for a walk of the whole heap); null never does.")


class ServerSettings(Section):
    """The proxy listener."""

    listen: HostPort = Field(("127.0.0.1", 8080), description="Address of the proxy listener.")
    drain_timeout: Duration = Field(30.0, description="On SIGTERM, how long in-flight requests may take to finish.")
    keepalive_timeout: Duration = Field(75.0, description="How long an idle client connection is kept open.")
    trusted_proxies: tuple[Network, ...] = Field(
        (), description="Peers whose X-Forwarded-For is believed, read right to left."
    )
    max_header_line: Size = Field(
        65536,
        description="Longest request line or single header the HTTP parser accepts (431 beyond it). "
        "Routes set tighter total limits with max_header_bytes.",
    )
    access_log: bool = Field(True, description="Write one JSON access-log line per request.")
    header_read_timeout: Duration = Field(
        10.0, gt=0, description="Longest time from a request's first byte to the end of its headers; "
                                "the connection is answered 408 and closed beyond it."
    )
    body_idle_timeout: Duration = Field(
        30.0, gt=0, description="Longest wait for the next bytes of a request body (408 beyond it)."
    )
    body_total_timeout: Duration = Field(
        300.0, gt=0, description="Longest time to receive a whole request body (408 beyond it)."
    )
    send_timeout: Duration = Field(
        60.0, gt=0, description="Longest wait for a client to take the next part of a response; beyond it "
                                "the connection is closed and the upstream exchange aborted."
    )
    gc: GcSettings = GcSettings()


class AdminSettings(Section):
    """The admin listener: health, readiness, metrics and the admin API."""

    listen: HostPort = Field(("127.0.0.1", 8081), description="Keep it on loopback unless fronted by auth.")


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


def _check_upstream_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected an http://HOST[:PORT] url, got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an upstream url carries no path, query or fragment, got {value!r}")
    return value


class Upstream(Section):
    """A named upstream the routes forward to."""

    url: Annotated[str, AfterValidator(_check_upstream_url)] = Field(
        description="http://HOST:PORT of the upstream; the request path is appended unchanged.")
    connect_timeout: Duration = Field(5.0, description="Time to open a TCP connection (504 beyond it).")
    read_timeout: Duration = Field(
        60.0, description="Longest wait for the response head, the next body bytes, or the upstream to take more "
                          "of a request body (504 beyond it)."
    )
    idle_timeout: Duration = Field(30.0, description="A pooled keep-alive connection idle longer is closed.")
    max_connections: int = Field(512, ge=1, description="Upper bound of open connections to this upstream.")
    preserve_host: bool = Field(True, description="Send the client's Host header (false: the upstream's host:port).")
    max_in_flight: int | None = Field(
        None, ge=1, description="Requests in flight to this upstream at most; past a plan's share, lower-priority "
                                "plans are shed first with 503."
    )
    anonymous_share: float = Field(
        0.1, gt=0, le=1, description="Fraction of max_in_flight that callers without a login may hold at most "
                                     "(rounded up), so stalled anonymous requests cannot starve logged-in plans."
    )
    anonymous_network_share: float = Field(
        0.5, gt=0, le=1, description="Fraction of the anonymous share that one network (IPv4 /24, IPv6 /48) may "
                                     "hold (rounded down, at least 1), so one client cannot shed every other "
                                     "anonymous caller."
    )
    max_rate: RateValue | None = Field(
        None, description="Requests per period sent to this upstream at most (e.g. 200/s); bursts beyond it are "
                          "delayed, smoothed out to this rate, rather than refused.")
    max_rate_burst: int = Field(1, ge=1, description="With max_rate: requests sent at once before smoothing starts.")
    max_rate_delay: Duration = Field(
        1.0, description="With max_rate: the longest a request is held; one that would wait longer is answered "
                         "503 with Retry-After.")

    @model_validator(mode="after")
    def _fixed_rate(self) -> Upstream:
        if self.max_rate is not None and self.max_rate.period_seconds is None:
            raise ValueError("max_rate: needs a fixed period such as 200/s or 6000/min")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80



_PREFIX_RE = re.compile(r"^/[^\s?#]*$")


def _check_prefix(value: str) -> str:
    if not _PREFIX_RE.match(value):
        raise ValueError(f"a path prefix starts with '/' and has no spaces, '?' or '#', got {value!r}")
    return value


class Route(Section):
    """Requests whose path starts with `path_prefix` (and whose Host matches `host`) go to `upstream`."""

    name: str = Field(description="Stable name used in metrics and logs.", pattern=r"^[A-Za-z0-9_.-]+$")
    path_prefix: Annotated[str, AfterValidator(_check_prefix)] = Field(description="Longest prefix wins.")
    host: str | None = Field(None, description="Exact Host to match (port ignored); routes with a host win.")
    upstream: str = Field(description="Name of an entry in `upstreams`.")
    max_body: Size = Field(10_000_000, description="Largest request body (413 beyond it).")
    max_header_bytes: Size = Field(32768, description="Largest total size of the request headers (431 beyond it).")
    websocket: bool = Field(True, description="Proxy WebSocket upgrades on this route.")
    auth: Literal["required", "optional", "none"] = Field(
        "required", description="required: a valid login or 401; optional: checked when sent; none: not looked at."
    )
    required_scopes: tuple[str, ...] = Field((), description="Scopes (or roles) the login must carry, else 403.")
    forward_authorization: bool = Field(False, description="Pass the client's Authorization header upstream.")
    login_cookie: bool | None = Field(
        None, description="Read the login from auth.session_cookie when no Authorization header is sent; "
                          "default: on class portal routes when auth.session_cookie is set.")
    cost: int = Field(1, ge=1, le=10_000, description="Weight of one request in rate limits and request quotas.")
    route_class: RouteClass = Field(
        "api", alias="class", description="What the route serves, for the detectors: portal (pages people read), "
                                          "api, asset (a portal's static files), public.")
    detect: bool = Field(True, description="Feed this route's requests to the detectors (false for health probes "
                                           "and machine-to-machine callbacks); sanctions still apply.")


class GatewayConfig(Section):
    """A whole fairgate config file."""

    server: ServerSettings = ServerSettings()
    admin: AdminSettings = AdminSettings()
    logging: LoggingSettings = LoggingSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    plans: Plans = Field(default_factory=dict)
    customers: Customers = Field(default_factory=dict)
    state: StateSettings = StateSettings()
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    enforcement: EnforcementSettings = Field(default_factory=EnforcementSettings)
    usage: UsageSettings = UsageSettings()
    alerts: AlertSettings = AlertSettings()
    upstreams: Annotated[dict[str, Upstream], AfterValidator(frozen_mapping)] = Field(min_length=1)
    routes: tuple[Route, ...] = Field(min_length=1)

    @property
    def sighting_keys(self) -> int:
        """The memory store's bound of sighting keys: as configured, else enough for every tracked
        identity's keys. A smaller bound evicts the sightings of identities still tracked, and
        their distinct counts (devices, agents, paths) start again from nothing."""
        configured = self.state.max_sighting_keys
        return configured if configured is not None else SIGHTING_KEYS_PER_IDENTITY * self.detection.max_tracked

    def plan_of(self, customer: str | None, claimed: str | None = None) -> str | None:
        """The plan `customer` is on; `claimed` is the plan its token names, if known."""
        return plan_of(self.customers, self.plans, self.limits.default_plan, customer, claimed)
