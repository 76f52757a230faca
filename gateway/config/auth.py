"""The `auth` section: who may issue logins, how tokens are checked, what claims mean."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, PrivateAttr, SecretStr, model_validator

from gateway.config.key_documents import parse_key_document
from gateway.config.types import Duration, Section, UnitName, frozen_mapping

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# RFC 7518 3.2: an HMAC key at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}

Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                    "ES256", "ES384", "ES512", "EdDSA"]

# The free-mail providers most sign-ups come from; deployments extend or replace the list.
DEFAULT_FREE_MAIL_DOMAINS = (
    "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "ymail.com", "hotmail.com",
    "hotmail.co.uk", "outlook.com", "live.com", "msn.com", "aol.com", "icloud.com", "me.com", "mac.com",
    "proton.me", "protonmail.com", "gmx.com", "gmx.de", "gmx.net", "web.de", "mail.com", "yandex.com",
    "yandex.ru", "mail.ru", "qq.com", "163.com", "126.com", "zoho.com", "tutanota.com", "fastmail.com",
    "hey.com", "pm.me", "libero.it", "orange.fr", "free.fr", "laposte.net", "t-online.de", "rediffmail.com",
)


class ClaimNames(Section):
    """Which claim carries what."""

    customer: str = Field("org_id", description="Claim naming the customer (tenant); always required.")
    user: str = Field("sub", description="Claim naming the user.")
    session: str = Field("sid", description="Claim naming the login session; `jti` is used when absent.")
    email: str = Field("email", description="Claim holding the user's email address.")
    plan: str | None = Field(None, description="Claim naming the customer's plan, if the issuer sends one.")
    licenses: Annotated[Mapping[UnitName, str], AfterValidator(frozen_mapping)] = Field(
        default_factory=lambda: frozen_mapping({}),
        description="Claims carrying licensed quantities by unit, e.g. {ports: port_count}, for quotas counted "
                    "`per` unit (customers.<id>.licenses wins).")
    scopes: str = Field("scope", description="Claim holding scopes or roles: a space-separated string or a list.")


class Issuer(Section):
    """One identity provider whose tokens are accepted."""

    name: str = Field(description="Short name for logs, metrics and `fairgate token --issuer`.",
                      pattern=r"^[A-Za-z0-9_.-]+$")
    issuer: str = Field(description="Exact `iss` value of this provider's tokens.")
    audiences: tuple[str, ...] = Field(min_length=1, description="Accepted `aud` values; a token must carry one.")
    algorithms: tuple[Algorithm, ...] = Field(
        min_length=1, description="Pinned algorithms; the token's own `alg` header is never trusted beyond these."
    )
    hmac_secret: SecretStr | None = Field(None, description="HMAC secret (use ${ENV}); HS* algorithms only.")
    hmac_secret_file: Path | None = Field(None, description="File holding the HMAC secret.")
    public_key_file: Path | None = Field(None, description="PEM public key, or a JWKS JSON document, on disk.")
    jwks_url: str | None = Field(None, description="JWKS endpoint (https, or http on loopback only).")
    jwks_cache_ttl: Duration = Field(600.0, description="Refetch the JWKS this often.")
    jwks_refresh_cooldown: Duration = Field(
        30.0, description="An unknown `kid` triggers at most one refetch per this period."
    )
    jwks_stale_for: Duration = Field(3600.0, description="Keep serving the last key set this long when refetches fail.")
    jwks_timeout: Duration = Field(5.0, description="Timeout of one JWKS fetch.")
    leeway: Duration = Field(30.0, description="Clock skew allowed on `exp`, `nbf` and `iat`.")
    max_lifetime: Duration = Field(86400.0, description="Tokens whose `exp - iat` is longer are rejected.")
    required_claims: tuple[str, ...] = Field(
        ("exp", "iat", "sub"), description="Claims a token must carry (the customer claim always is)."
    )
    claims: ClaimNames = Field(default_factory=ClaimNames)

    # Keys by kid from hmac_secret(_file) or public_key_file, parsed at load; empty for jwks_url.
    _static_keys: dict[str | None, Any] = PrivateAttr(default_factory=dict)

    @property
    def static_keys(self) -> dict[str | None, Any]:
        return self._static_keys

    @property
    def hmac_key(self) -> bytes | None:
        return self._static_keys.get(None) if self.uses_hmac else None

    @property
    def uses_hmac(self) -> bool:
        return self.algorithms[0] in HMAC_ALGORITHMS

    @model_validator(mode="after")
    def _check_keys(self) -> Issuer:
        algorithms = set(self.algorithms)
        if algorithms & HMAC_ALGORITHMS and algorithms & ASYMMETRIC_ALGORITHMS:
            raise ValueError("algorithms: HMAC (HS*) and asymmetric algorithms never mix in one issuer")
        sources = [key for key in ("hmac_secret", "hmac_secret_file", "public_key_file", "jwks_url")
                   if getattr(self, key) is not None]
        if len(sources) != 1:
            raise ValueError("exactly one of hmac_secret, hmac_secret_file, public_key_file, jwks_url is required"
                             + (f" (got {', '.join(sources)})" if sources else ""))
        source = sources[0]
        if self.uses_hmac != source.startswith("hmac"):
            raise ValueError(f"{source}: does not fit algorithms {list(self.algorithms)}")
        secret: bytes | None = None
        if self.hmac_secret is not None:
            secret = self.hmac_secret.get_secret_value().encode()
        elif self.hmac_secret_file is not None:
            secret = _read(self.hmac_secret_file, source).strip().encode()
        elif self.public_key_file is not None:
            text = _read(self.public_key_file, source)
            try:
                self._static_keys = parse_key_document(text)
            except ValueError as exc:
                raise ValueError(f"{source}: {self.public_key_file}: {exc}") from None
        elif self.jwks_url is not None:
            _check_jwks_url(self.jwks_url)
        if secret is not None:
            needed = max(_HMAC_MIN_BYTES[alg] for alg in self.algorithms)
            if len(secret) < needed:
                raise ValueError(f"{source}: an HMAC secret for {'/'.join(self.algorithms)} needs at least "
                                 f"{needed} bytes, got {len(secret)}")
            self._static_keys = {None: secret}
        return self


def _read(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _check_jwks_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        try:
            if ipaddress.ip_address(parts.hostname).is_loopback:
                return
        except ValueError:
            if parts.hostname == "localhost":
                return
    raise ValueError(f"jwks_url: expected an https:// url (http only on loopback), got {url!r}")


class CorporateEmailRule(Section):
    """The policy's "only use corporate email addresses"."""

    action: Literal["reject", "flag", "off"] = Field(
        "flag", description="reject: 403; flag: log and count a finding; off: no check."
    )
    free_mail_domains: tuple[str, ...] = Field(
        DEFAULT_FREE_MAIL_DOMAINS, description="Domains (and their subdomains) that are not corporate."
    )


class FailedLoginLimit(Section):
    """Token guessing from one client address is slowed down and made visible."""

    max_failures: int = Field(20, ge=1, description="Failures allowed per address within `window`.")
    window: Duration = Field(300.0, description="The period failures are counted over.")
    block_for: Duration = Field(300.0, description="How long an address over the limit gets 429.")
    max_tracked_addresses: int = Field(100_000, ge=1, description="Memory bound; the oldest entries go first.")


class IdentityHeaders(Section):
    """Headers that tell the upstream who is calling; a client's own copies are always removed."""

    customer: str = Field("X-Customer-Id", pattern=r"^[A-Za-z0-9-]+$")
    user: str = Field("X-User-Id", pattern=r"^[A-Za-z0-9-]+$")


# RFC 6265 cookie-name and RFC 9110 field-name: a token.
_TOKEN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


def _origin(value: str) -> str:
    """An origin as browsers send it in `Origin`: scheme://host[:port], lower-case, no default port."""
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in ("http", "https") or not parts.hostname or port == -1
            or parts.path or parts.query or parts.fragment or parts.username is not None):
        raise ValueError(f"expected an origin such as https://portal.example.com (no path), got {value!r}")
    if port == {"http": 80, "https": 443}[parts.scheme]:
        raise ValueError(f"browsers send {value!r} without its default port: write {parts.scheme}://{parts.hostname}")
    return value.lower()


class SessionCookie(Section):
    """The vendor's login cookie, read on routes that opt in (browsers send no bearer header)."""

    name: str = Field(pattern=_TOKEN, description="Name of the cookie holding the login JWT.")
    same_site: Literal["strict", "lax", "none"] = Field(
        "none", description="The SameSite attribute the vendor's login sets on that cookie: with strict or lax, "
                            "unsafe requests also pass on Sec-Fetch-Site: same-origin or an allowed Origin.")
    csrf_header: str | None = Field(None, pattern=_TOKEN,
                                    description="Header an unsafe request repeats the CSRF cookie's value in.")
    csrf_cookie: str | None = Field(None, pattern=_TOKEN, description="Cookie holding the CSRF value.")
    allowed_origins: tuple[Annotated[str, AfterValidator(_origin)], ...] = Field(
        (), description="Origins whose unsafe requests pass (with same_site strict or lax), e.g. the portal's own.")
    forward: bool = Field(False, description="Pass the session cookie upstream (other cookies always pass).")

    @model_validator(mode="after")
    def _csrf_pair(self) -> SessionCookie:
        if (self.csrf_header is None) != (self.csrf_cookie is None):
            raise ValueError("csrf_header: csrf_header and csrf_cookie go together (double submit)")
        if self.csrf_cookie is not None and self.csrf_cookie == self.name:
            raise ValueError("csrf_cookie: must differ from the session cookie's name")
        if self.allowed_origins and self.same_site == "none":
            raise ValueError("allowed_origins: only read when same_site is strict or lax")
        return self


class AuthSettings(Section):
    issuers: tuple[Issuer, ...] = Field((), description="Accepted token issuers.")
    identity_headers: IdentityHeaders = IdentityHeaders()
    session_cookie: SessionCookie | None = Field(
        None, description="The login cookie browsers send; read on portal routes and routes with login_cookie: true.")
    corporate_email: CorporateEmailRule = CorporateEmailRule()
    failed_logins: FailedLoginLimit = FailedLoginLimit()
    token_cache_size: int = Field(250_000, ge=0, description="Verified tokens remembered until they expire.")

    @model_validator(mode="after")
    def _unique(self) -> AuthSettings:
        names = [issuer.name for issuer in self.issuers]
        issuers = [issuer.issuer for issuer in self.issuers]
        if len(set(names)) != len(names):
            raise ValueError("issuers: issuer names must be unique")
        if len(set(issuers)) != len(issuers):
            raise ValueError("issuers: each `issuer` value may appear once")
        return self
