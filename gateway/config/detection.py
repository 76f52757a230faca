"""The `detection` section: shared credentials, screen-scraping, seats.

Detectors watch forwarded traffic after the fact and produce findings; what a finding does
(flag, reauth, challenge, block) is configured here per detector.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, model_validator

from gateway.config.enforcement import Advice
from gateway.config.types import Duration, Section, Size, frozen_mapping

ROUTE_CLASSES = ("portal", "api", "asset", "public")
RouteClass = Literal["portal", "api", "asset", "public"]
Mode = Literal["enforce", "shadow", "off"]
ScrapingAction = Literal["flag", "challenge", "block"]

# Automation user agents by family, matched case-insensitively as substrings. HTTP libraries and
# crawlers are normal on API routes (integrations), so by default they only count on portal pages;
# headless browsers and scanners count everywhere.
DEFAULT_HEADLESS = ("headlesschrome", "phantomjs", "puppeteer", "playwright", "selenium", "webdriver",
                    "electron/", "splash", "slimerjs")
DEFAULT_LIBRARIES = ("python-requests", "python-urllib", "aiohttp", "httpx", "curl/", "wget/", "go-http-client",
                     "java/", "apache-httpclient", "okhttp", "libwww-perl", "node-fetch", "axios/", "guzzlehttp",
                     "ruby", "powershell")
DEFAULT_CRAWLERS = ("scrapy", "crawler", "spider", "bot/", "bot;", "httrack", "colly", "nutch", "heritrix")
# Query parameters that page through a list: walking them is how integrations sync, not enumeration.
DEFAULT_PAGINATION = ("page", "cursor", "offset", "limit", "since", "per_page", "page_size")
DEFAULT_SCANNERS = ("sqlmap", "nikto", "nmap", "masscan", "zgrab", "nuclei", "dirbuster", "gobuster", "wpscan",
                    "acunetix", "burp")


class SharingAllowance(Section):
    """What one login may do at once before it looks shared (a plan may set its own). One person
    uses a computer and a phone at once on different networks, and roams in sequence."""

    computer_networks: int = Field(1, ge=1, description="Networks from which computers (desktop browsers) of one "
                                                         "login are in use at once (within windows.concurrent).")
    devices: int = Field(3, ge=1, description="Distinct devices (browser family + platform, or device id) within "
                                              "windows.devices.")
    session_switches: int = Field(3, ge=1, description="Network changes of one session within windows.session: "
                                                       "a roaming device changes now and then, a copied token "
                                                       "flips between networks.")


class SharingWindows(Section):
    concurrent: Duration = Field(120.0, description="Computers seen within this long count as in use at once.")
    devices: Duration = Field(600.0, description="Window over which devices are counted.")
    session: Duration = Field(60.0, description="Window over which one session's network changes are counted.")


class SharingDetector(Advice):
    """One login used by several people: computers in several places at once, devices, copied sessions."""

    mode: Mode = Field("enforce", description="enforce: apply the action; shadow: record findings only; off.")
    action: Literal["flag", "reauth", "block_newest"] = Field(
        "flag", description="flag: record; reauth: 401 the newest session until it logs in again; "
                            "block_newest: 403 the newest session for block_for.")
    allowance: SharingAllowance = Field(SharingAllowance(), description="Default allowance; plans may override.")
    windows: SharingWindows = SharingWindows()
    block_for: Duration = Field(3600.0, description="How long block_newest blocks the newest session.")
    device_header: str | None = Field(None, description="Request header carrying a device id, if the apps send one.")
    device_cookie: str | None = Field(None, description="Cookie carrying a device id, if the portal sets one.")
    geoip_database: Path | None = Field(
        None, description="MaxMind .mmdb city database for impossible travel; skipped (with a log line) when the "
                          "file or the maxminddb package is missing.")
    max_speed_kmh: float = Field(1000.0, gt=0, description="Impossible travel: faster than this between two "
                                                            "requests of one user.")
    cooldown: Duration = Field(3600.0, description="At most one finding per user and signal in this period.")


class SignalWeights(Section):
    """Score added each time a signal is seen; 0 turns a signal off."""

    automation_agent: float = Field(6.0, ge=0, description="A deny-listed automation user agent (not allow-listed).")
    no_browser_signals: float = Field(2.0, ge=0, description="A portal page load without Accept-Language, "
                                                             "Sec-Fetch-* and an HTML Accept.")
    no_browser_proof: float = Field(3.0, ge=0, description="Past asset_grace_pages portal pages offered a browser "
                                                           "proof, fewer proofs credited than proof_min_share of "
                                                           "them.")
    regular_cadence: float = Field(3.0, ge=0, description="Inter-arrival times too regular for a person.")
    enumeration: float = Field(2.0, ge=0, description="Numeric ids in path segments walked in sequence, or "
                                                      "probed at random with many misses.")
    crawl_breadth: float = Field(3.0, ge=0, description="Far more distinct paths per minute than "
                                                        "crawl_paths_per_minute.")
    invalid_destinations: float = Field(2.0, ge=0, description="A high share of upstream 404/4xx answers.")
    agent_rotation: float = Field(3.0, ge=0, description="Many user agents under one identity.")
    looping: float = Field(3.0, ge=0, description="The same request repeated several times a second for "
                                                  "loop_duration.")
    bulk_extraction: float = Field(3.0, ge=0, description="More distinct records read by one login in a day than "
                                                          "its customer's baseline allows.")
    crowd_enumeration: float = Field(6.0, ge=0, description="Ids walked in order on one path template by several "
                                                            "anonymous clients without browser proof.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "no_assets" in data:
            raise ValueError("no_assets was replaced by no_browser_proof (issue 13): the signal now counts "
                             "browser proofs credited per identity, not asset fetches; rename the key")
        return data


class UserAgentLists(Section):
    """Substrings matched case-insensitively; the allow list wins."""

    headless: tuple[str, ...] = DEFAULT_HEADLESS
    libraries: tuple[str, ...] = DEFAULT_LIBRARIES
    crawlers: tuple[str, ...] = DEFAULT_CRAWLERS
    scanners: tuple[str, ...] = DEFAULT_SCANNERS
    allow: tuple[str, ...] = Field((), description="User agents never counted as automation (a customer's own "
                                                   "integration, e.g. 'acme-sync/').")
    libraries_on: tuple[RouteClass, ...] = Field(("portal", "public"), description="Route classes on which HTTP "
                                                                                    "libraries and crawlers count "
                                                                                    "as automation.")


class ChallengeSettings(Section):
    """The `challenge` action's interstitial: a proof-of-work a browser solves by itself, then a
    signed pass cookie that spares its subject further challenges (never a block)."""

    difficulty: int = Field(12, ge=1, le=24, description="Leading zero bits the page's SHA-256 must find: about "
                                                         "2^difficulty hashes (12: a few thousand, well under a "
                                                         "second in a browser).")
    pass_ttl: Duration = Field(3600.0, ge=60.0, le=7 * 86400.0,
                               description="How long a solved challenge spares its subject further challenges.")


_DEFAULT_ACTIONS: Mapping[RouteClass, ScrapingAction] = frozen_mapping(
    {"portal": "flag", "api": "flag", "public": "flag"}
)


class ScrapingDetector(Advice):
    """Screen-scraping and abusive patterns, scored per user (per client address when anonymous)."""

    mode: Mode = Field("enforce", description="enforce: apply the action; shadow: record findings only; off.")
    actions: Annotated[Mapping[RouteClass, ScrapingAction], AfterValidator(frozen_mapping)] = Field(
        default_factory=lambda: _DEFAULT_ACTIONS,
        description="Per route class: what an identity over the threshold meets there. Classes not listed are "
                    "not watched (assets only count as fetched).")
    threshold: float = Field(12.0, gt=0, description="Score at which a finding fires.")
    half_life: Duration = Field(300.0, description="Scores halve in this time without new signals.")
    block_for: Duration = Field(900.0, description="First block; it doubles for each repeat offence.")
    max_block: Duration = Field(86400.0, description="Longest block for a repeat offender.")
    weights: SignalWeights = SignalWeights()
    challenge: ChallengeSettings = ChallengeSettings()
    user_agents: UserAgentLists = UserAgentLists()
    cadence_samples: int = Field(12, ge=4, le=200, description="Inter-arrival times the cadence signal looks at.")
    cadence_max_cv: float = Field(0.1, gt=0, description="Coefficient of variation below which cadence is "
                                                          "machine-regular.")
    enumeration_run: int = Field(5, ge=2, description="Consecutive ids in sequence (in path segments) that count "
                                                      "as walking.")
    enumeration_probes: int = Field(20, ge=2, description="Requests on one id template before its miss ratio "
                                                          "counts.")
    enumeration_miss_ratio: float = Field(0.5, gt=0, le=1, description="Share of 404s on one id template that "
                                                                       "is probing at random.")
    pagination_params: tuple[str, ...] = Field(DEFAULT_PAGINATION, description="Query parameters that page through "
                                                                               "a list; never enumeration.")
    crawl_paths_per_minute: int = Field(60, ge=1, description="Distinct paths per minute beyond a person's norm.")
    invalid_min_requests: int = Field(20, ge=1, description="Requests seen before the invalid-destination "
                                                            "ratio counts.")
    invalid_ratio: float = Field(0.5, gt=0, le=1, description="Share of upstream 4xx answers that is suspicious.")
    agents_per_hour: int = Field(4, ge=2, description="Distinct user agents per hour under one identity.")
    poll_rate: float = Field(1.0, gt=0, description="Requests/s at which one request (method, path, query, body) "
                                                    "may repeat and still be polling: the policies' sustained rate. "
                                                    "Looping is more than twice this.")
    loop_duration: Duration = Field(30.0, description="How long a request must repeat faster than polling to be "
                                                      "looping.")
    asset_grace_pages: int = Field(3, ge=1, description="Portal pages offered a browser proof before missing "
                                                        "proofs count (no_browser_proof).")
    proof_min_share: float = Field(0.5, gt=0, le=1, description="no_browser_proof fires while proofs credited are "
                                                                "fewer than this share of the pages offered one.")
    challenge_for: Duration = Field(900.0, description="How long a challenge stands (a passed one lifts it for "
                                                       "the browser that passed).")
    bulk_min_records: int = Field(500, ge=1, description="Distinct records (path templates with ids) one login may "
                                                         "read in a day whatever its customer's baseline.")
    bulk_over_baseline: float = Field(5.0, ge=1, description="bulk_extraction fires past this many times the median "
                                                             "of the customer's other users (at least "
                                                             "bulk_min_records).")
    crowd_run: int = Field(8, ge=2, description="Ids in sequence on one template, across anonymous clients, that "
                                                "are one enumeration (crowd_enumeration).")
    crowd_clients: int = Field(3, ge=2, description="Distinct anonymous clients without browser proof a "
                                                    "crowd_enumeration needs.")
    crowd_gap: Duration = Field(120.0, description="Longest pause between two ids of one crowd walk.")
    network_memory: Duration = Field(21600.0, description="How long an anonymous network's challenges and blocks "
                                                          "are remembered (repeat offences lengthen blocks).")
    evidence_window: Duration = Field(600.0, description="Signals seen within this window are the evidence of a "
                                                         "finding.")
    min_signals: int = Field(2, ge=1, description="Independent signals within evidence_window a challenge or block "
                                                  "needs, unless one is definitive (an automation agent on a page); "
                                                  "fewer only flag.")


class SeatsDetector(Advice):
    """Bureau use: more distinct active users per customer per month than the plan's `seats`."""

    mode: Mode = Field("enforce", description="enforce | shadow | off.")
    action: Literal["flag"] = Field("flag", description="Seat overage is for the account manager: flag.")


# The salt is also the key material of the proof tokens and challenge passes.
MIN_SALT_BYTES = 16


class BrowserProof(Section):
    """The link token the gateway plants in HTML pages and credits when the page's browser fetches it."""

    classes: tuple[Literal["portal", "public"], ...] = Field(
        ("portal",), description="Route classes whose HTML answers get a proof link, where scraping watches them.")
    ttl: Duration = Field(600.0, ge=1.0, le=86400.0, description="How long a planted link credits its page's "
                                                                 "identity; also its stylesheet's max-age.")
    head_within: Size = Field(32768, ge=16, le=1048576, description="The `</head>` the link goes before must be "
                                                                    "within this many bytes of the body; a page "
                                                                    "without one there is left unchanged.")


class DetectionSettings(Section):
    """Detectors run off the request path; findings are counted, logged and listed by the admin API."""

    hash_salt: SecretStr | None = Field(
        None, description="Salt for hashing client addresses in findings (use ${ENV}); one per deployment. "
                          "Unset: a random salt per process (hashes then differ between gateways).")
    hash_salt_file: Path | None = Field(None, description="File holding the salt.")
    flush_interval: Duration = Field(0.1, description="How often queued observations are analysed.")
    queue_size: int = Field(100_000, ge=100, description="Observations waiting for analysis at most; beyond it the "
                                                         "oldest are dropped and counted.")
    # Off by default: a second process per gateway, worth it only where a core is free for it
    # (docs/performance.md, "Tenth session": less CPU per request on the gateway's core; more
    # throughput only when the worker's core is free; the tail no better).
    worker: bool = Field(False, description="Analyse in a worker process of its own instead of the gateway's "
                                            "event loop: the request path keeps only the queuing, findings and "
                                            "sanctions come back. Worth a free core. Read at start.")
    # 200,000 customers active within the tracks' idle time fit (issue 14's scenario): with a
    # bound under the identities in use, every request evicted and rebuilt a track, and each
    # rebuilt one forgot its sharing and scraping history.
    max_tracked: int = Field(250_000, ge=100, description="Identities tracked at once in this process; the least "
                                                          "recently seen go first, and one idle longer than every "
                                                          "signal's window is swept.")
    # Off unless configured: each detector's own default mode is enforce once its section is given.
    sharing: SharingDetector = Field(default_factory=lambda: SharingDetector(mode="off"))
    scraping: ScrapingDetector = Field(default_factory=lambda: ScrapingDetector(mode="off"))
    seats: SeatsDetector = Field(default_factory=lambda: SeatsDetector(mode="off"))
    proof: BrowserProof = BrowserProof()

    @model_validator(mode="after")
    def _one_salt(self) -> DetectionSettings:
        if self.hash_salt is not None and self.hash_salt_file is not None:
            raise ValueError("hash_salt, hash_salt_file: set at most one")
        if self.hash_salt_file is not None:
            try:
                salt = self.hash_salt_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"hash_salt_file: cannot read {self.hash_salt_file}: {exc.strerror}") from None
            if len(salt.encode()) < MIN_SALT_BYTES:
                raise ValueError(f"hash_salt_file: {self.hash_salt_file} holds {len(salt.encode())} bytes; "
                                 f"at least {MIN_SALT_BYTES} (it keys the browser-proof and challenge MACs)")
        if self.hash_salt is not None and len(self.hash_salt.get_secret_value().encode()) < MIN_SALT_BYTES:
            raise ValueError(f"hash_salt: at least {MIN_SALT_BYTES} bytes (it keys the browser-proof and challenge "
                             "MACs: a short or empty salt lets anyone forge them); set it from the environment")
        return self

    def salt(self) -> bytes | None:
        if self.hash_salt is not None:
            return self.hash_salt.get_secret_value().encode()
        if self.hash_salt_file is not None:
            return self.hash_salt_file.read_text().strip().encode()
        return None

    @property
    def enabled(self) -> bool:
        return any(d.mode != "off" for d in (self.sharing, self.scraping, self.seats))
