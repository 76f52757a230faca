"""The pieces of authentication, each on an injected clock."""

from __future__ import annotations

import asyncio
import math

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.authenticator import Authenticator, AuthMetrics
from gateway.auth.bearer import bearer_token
from gateway.auth.corporate_email import FreeMailDomains
from gateway.auth.errors import AuthError, InvalidToken
from gateway.auth.failed_logins import FailedLogins
from gateway.auth.identity import Identity
from gateway.auth.keys import StaticKeys
from gateway.auth.revocations import Revocations
from gateway.auth.token_cache import TokenCache
from gateway.auth.verifier import IssuerVerifier, TokenVerifier
from gateway.config.auth import DEFAULT_FREE_MAIL_DOMAINS, AuthSettings, FailedLoginLimit, Issuer
from gateway.metrics import Metrics
from tests.support.clock import ManualClock


def identity(user: str = "alice", token_id: str | None = "t1", issued_at: float = 0.0) -> Identity:
    return Identity(customer="acme", user=user, session="s1", email=None, plan=None, issuer="test",
                    token_id=token_id, scopes=frozenset(), issued_at=issued_at, expires_at=issued_at + 600)


def test_failed_logins_block_after_the_limit_within_the_window():
    clock = ManualClock()
    limiter = FailedLogins(FailedLoginLimit(max_failures=3, window="60s", block_for="30s"), clock)
    assert not limiter.record_failure("192.0.2.1")
    clock.advance(61)  # the first failure has left the window
    assert not limiter.record_failure("192.0.2.1")
    assert not limiter.record_failure("192.0.2.1")
    assert limiter.blocked_for("192.0.2.1") == 0
    assert limiter.record_failure("192.0.2.1")
    assert limiter.blocked_for("192.0.2.1") == 30
    assert limiter.blocked_for("192.0.2.2") == 0  # other addresses are unaffected
    clock.advance(30)
    assert limiter.blocked_for("192.0.2.1") == 0


def test_failed_logins_memory_is_bounded():
    limiter = FailedLogins(FailedLoginLimit(max_failures=5, max_tracked_addresses=100), ManualClock())
    for i in range(10_000):
        limiter.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._failures) == 100


def test_token_cache_evicts_least_recently_used_and_expired():
    cache = TokenCache(capacity=2)
    cache.put("a", identity("a"), valid_until=100)
    cache.put("b", identity("b"), valid_until=100)
    assert cache.get("a", now=1) is not None  # a is now the most recent
    cache.put("c", identity("c"), valid_until=100)
    assert cache.get("b", now=1) is None
    assert cache.get("a", now=1) is not None
    assert cache.get("c", now=100) is None  # at its expiry it is gone
    assert len(cache) == 1


def test_token_cache_keeps_tokens_in_use_through_a_scan_of_new_ones():
    cache = TokenCache(capacity=1000)
    hot = [f"hot-{n}" for n in range(500)]
    for token in hot:  # first sight, then in use
        cache.put(token, identity(token), valid_until=100)
        assert cache.get(token, now=1) is not None
    for n in range(20_000):  # a login wave: each new token seen once
        assert cache.get(f"new-{n}", now=1) is None
        cache.put(f"new-{n}", identity(f"new-{n}"), valid_until=100)
    assert all(cache.get(token, now=2) is not None for token in hot)
    assert len(cache) == 1000


def test_token_cache_rotation_up_to_its_capacity_hits_on_every_later_pass():
    cache = TokenCache(capacity=1000)
    tokens = [f"t{n}" for n in range(1000)]  # more than the protected segment holds
    for token in tokens:
        assert cache.get(token, now=1) is None
        cache.put(token, identity(token), valid_until=100)
    for _ in range(3):
        assert all(cache.get(token, now=1).user == token for token in tokens)  # type: ignore[union-attr]
    assert (cache.counts.hits, cache.counts.misses) == (3000, 1000)


def test_token_cache_expires_entries_in_either_segment():
    cache = TokenCache(capacity=10)
    cache.put("seen-once", identity("a"), valid_until=50)
    cache.put("in-use", identity("b"), valid_until=50)
    assert cache.get("in-use", now=1) is not None  # now protected
    assert cache.get("in-use", now=50) is None and cache.get("seen-once", now=50) is None
    assert len(cache) == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 8), st.lists(st.tuples(st.booleans(), st.integers(0, 12), st.integers(0, 3)), max_size=80))
def test_token_cache_answers_only_what_was_put_and_never_outgrows_its_capacity(capacity, operations):
    cache, now, model = TokenCache(capacity), 0.0, {}
    for is_put, token_number, step in operations:
        token, now = f"t{token_number}", now + step
        if is_put:
            model[token] = (identity(token), now + 5)
            cache.put(token, *model[token])
            assert (cache.get(token, now) is model[token][0]) == (capacity > 0)  # just put: always there
        else:
            found = cache.get(token, now)
            assert found is None or (found is model[token][0] and now < model[token][1])
        assert len(cache) <= capacity


def test_the_default_cache_serves_20000_tokens_in_rotation():
    clock = ManualClock()
    settings = AuthSettings.model_validate({"issuers": [HS_ISSUER]})  # token_cache_size: the default
    issuer = settings.issuers[0]
    metrics = Metrics()
    authenticator = Authenticator(
        settings, TokenVerifier([IssuerVerifier(issuer, StaticKeys.for_issuer(issuer), clock)]), Revocations(clock),
        FailedLogins(FailedLoginLimit(), clock), AuthMetrics(metrics.auth_results, metrics.findings), clock)
    now = int(clock.time())
    tokens = [jwt.encode({"iss": issuer.issuer, "aud": "api", "sub": f"u{n}", "org_id": f"c{n}", "iat": now,
                          "exp": now + 3600}, HS_SECRET, algorithm="HS256") for n in range(20_000)]

    async def one_pass() -> None:
        for n, token in enumerate(tokens):
            found = await authenticator.authenticate(f"Bearer {token}", "192.0.2.1", required=True, scopes=())
            assert found is not None and found.customer == f"c{n}"

    asyncio.run(one_pass())
    asyncio.run(one_pass())
    verified = metrics.registry.get_sample_value("fairgate_auth_results_total", {"result": "verified"})
    assert verified == 20_000  # the second pass came from the cache, none was verified again


def test_revocations_match_and_then_forget():
    clock = ManualClock(wall=1000.0)
    revocations = Revocations(clock)
    revocations.revoke_token("test", "t1", expires_at=1600.0)
    assert revocations.is_revoked(identity(token_id="t1", issued_at=900))
    assert not revocations.is_revoked(identity(token_id="t2", issued_at=900))
    revocations.revoke_user("test", "bob", max_lifetime=300)
    assert revocations.is_revoked(identity("bob", token_id=None, issued_at=1000))
    assert not revocations.is_revoked(identity("bob", token_id=None, issued_at=1001))
    clock.advance(601)
    assert revocations.active() == 0  # nothing outlives the tokens it could match


@pytest.mark.parametrize(("email", "free"), [
    ("bob@gmail.com", True), ("Bob@GMAIL.com", True), ("x@mail.yahoo.co.uk", True), ("x@yahoo.co.uk.", True),
    ("alice@acme.example", False), ("alice@notgmail.com", False), ("no-at-sign", False), (None, False), ("", False),
])
def test_free_mail_domains(email, free):
    assert FreeMailDomains(DEFAULT_FREE_MAIL_DOMAINS).contains(email) is free


@given(st.text(max_size=200))
def test_bearer_parsing_never_fails_and_finds_only_bearer_tokens(value):
    token = bearer_token(value)
    if token is not None:
        assert value.lower().startswith("bearer ")
        assert token == token.strip() and token


@given(st.text(alphabet="bearBEAR", min_size=6, max_size=6), st.text(" ", min_size=1, max_size=3),
       st.text(alphabet="abcXYZ019-_.~+/=", min_size=1, max_size=40))
def test_bearer_scheme_is_case_insensitive(scheme, spaces, token):
    # One parser serves the proxy and the admin API; RFC 7235 makes the scheme case-insensitive.
    expected = token if scheme.lower() == "bearer" else None
    assert bearer_token(f"{scheme}{spaces}{token}") == expected


HS_SECRET = "x" * 32
HS_ISSUER = {"name": "test", "issuer": "https://login.test.invalid", "audiences": ["api"], "algorithms": ["HS256"],
             "hmac_secret": HS_SECRET}


def make_verifier(clock: ManualClock | None = None) -> TokenVerifier:
    issuer = Issuer.model_validate(HS_ISSUER)
    return TokenVerifier([IssuerVerifier(issuer, StaticKeys.for_issuer(issuer), clock or ManualClock())])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_header_bytes_give_an_auth_error_never_a_crash(raw):
    # aiohttp hands header values over decoded as UTF-8 with surrogateescape.
    value = raw.decode("utf-8", "surrogateescape")
    verifier = make_verifier()
    token = bearer_token("Bearer " + value)
    if token is None:
        return
    with pytest.raises(AuthError):
        asyncio.run(verifier.verify(token))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", max_size=40),
                min_size=3, max_size=3))
def test_well_shaped_garbage_tokens_are_invalid(parts):
    with pytest.raises(InvalidToken):
        asyncio.run(make_verifier().verify(".".join(parts)))


_CLAIM_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(), st.none(), st.text(max_size=5),
    st.integers(min_value=10 ** 300, max_value=10 ** 400),
)


@settings(max_examples=300, deadline=None)
@given(exp=_CLAIM_VALUES, iat=_CLAIM_VALUES, nbf=_CLAIM_VALUES, other=_CLAIM_VALUES)
def test_any_time_claims_give_a_bounded_identity_or_invalid_token(exp, iat, nbf, other):
    clock = ManualClock()
    payload = {"iss": "https://login.test.invalid", "aud": "api", "sub": "alice", "org_id": "acme",
               "exp": exp, "iat": iat, "nbf": nbf, "extra": [other]}
    token = jwt.encode({key: value for key, value in payload.items() if value is not None}, "x" * 32)
    try:
        identity = asyncio.run(make_verifier(clock).verify(token))
    except InvalidToken:
        return
    # Accepted: it expires, at a real time, within the issuer's maximum lifetime of now.
    assert math.isfinite(identity.expires_at) and math.isfinite(identity.issued_at)
    assert isinstance(exp, (int, float)) and not isinstance(exp, bool)
    assert identity.expires_at >= clock.time() - 60
    assert identity.expires_at - identity.issued_at <= 86400
    assert not (isinstance(other, float) and not math.isfinite(other))


def test_a_token_cache_of_many_shards_keeps_tokens_in_use_and_sweeps_every_shard():
    capacity = 20_000  # several shards (state/bounded.py's SHARD_ENTRIES each at most)
    cache = TokenCache(capacity)
    hot = [f"hot-{n}" for n in range(10_000)]
    for token in hot:
        cache.put(token, identity(token), valid_until=100)
        assert cache.get(token, now=1) is not None  # in use: protected
    for n in range(30_000):  # a login wave past the capacity, each new token seen once
        cache.put(f"new-{n}", identity(f"new-{n}"), valid_until=50)
    assert all(cache.get(token, now=2).user == token for token in hot)  # type: ignore[union-attr]
    # Each shard holds its share of the capacity: the cache fills to within a few percent of it.
    assert capacity * 0.97 <= len(cache) <= capacity
    assert cache.evictions == 40_000 - len(cache)
    waiting = len(cache) - len(hot)
    forgotten = 0
    while step := cache.sweep(60, 500):
        forgotten += step
    assert forgotten == cache.expirations == waiting and len(cache) == len(hot)
