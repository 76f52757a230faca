"""Every login is authenticated: what clients and the upstream see, status by status."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.clock import ManualClock
from tests.support.configs import auth_config
from tests.support.tokens import ADMIN_TOKEN, AUDIENCE, ISSUER, bearer, claims, hs_issuer, hs_token
from tests.support.upstream_app import header
from tests.support.waiting import wait_until


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def gw(start_gateway, upstream, clock):
    return await start_gateway(auth_config(upstream), clock=clock)


async def expect_401(client, url, token_or_headers, description_fragment: str | None = None) -> dict:
    headers = bearer(token_or_headers) if isinstance(token_or_headers, str) else token_or_headers
    async with client.get(url, headers=headers) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        challenge = response.headers["WWW-Authenticate"]
        problem = await response.json()
    assert challenge.startswith('Bearer realm="fairgate", error="invalid_token", error_description="')
    if description_fragment:
        assert description_fragment in challenge
        assert description_fragment in problem["detail"]
    return problem


async def test_valid_token_reaches_upstream_with_identity_headers(gw, client, clock, upstream):
    async with client.get(f"{gw.url}/echo", headers=bearer(hs_token(clock))) as response:
        assert response.status == 200
        echo = await response.json()
    assert header(echo, "X-Customer-Id") == "acme"
    assert header(echo, "X-User-Id") == "alice"
    assert header(echo, "Authorization") is None  # not forwarded unless the route says so


async def test_missing_token_gets_a_bare_challenge(gw, client):
    async with client.get(f"{gw.url}/echo") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="fairgate"'
        assert (await response.json())["type"] == "urn:fairgate:problem:login-required"


async def test_token_in_query_string_is_not_accepted(gw, client, clock):
    async with client.get(f"{gw.url}/echo?access_token={hs_token(clock)}") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="fairgate"'


async def test_expired_token(gw, client, clock):
    token = hs_token(clock, iat=int(clock.time()) - 700, exp=int(clock.time()) - 31)  # past the 30 s leeway
    await expect_401(client, f"{gw.url}/echo", token, "expired")


async def test_expiry_within_leeway_is_accepted(gw, client, clock):
    token = hs_token(clock, iat=int(clock.time()) - 700, exp=int(clock.time()) - 29)
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.status == 200


async def test_not_before_in_the_future(gw, client, clock):
    await expect_401(client, f"{gw.url}/echo", hs_token(clock, nbf=int(clock.time()) + 120), "not valid yet")


async def test_wrong_issuer(gw, client, clock):
    await expect_401(client, f"{gw.url}/echo", hs_token(clock, iss="https://evil.example"), "issuer")


@pytest.mark.parametrize("iss", [[ISSUER], {"url": ISSUER}])
async def test_an_issuer_that_is_no_string_is_a_401(gw, client, clock, iss):
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    token = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims(clock, iss=iss))}.c2ln"
    await expect_401(client, f"{gw.url}/echo", token, "issuer")


async def test_wrong_audience(gw, client, clock):
    await expect_401(client, f"{gw.url}/echo", hs_token(clock, aud="someone-else"), "not meant for this service")


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "org_id"])
async def test_missing_required_claim(gw, client, clock, claim):
    await expect_401(client, f"{gw.url}/echo", hs_token(clock, **{claim: None}), f"'{claim}'")


async def test_lifetime_over_the_maximum(start_gateway, upstream, client, clock):
    gw = await start_gateway(auth_config(upstream, [hs_issuer(max_lifetime="1h")]), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 7200)
    await expect_401(client, f"{gw.url}/echo", token, "longer than allowed")


@pytest.mark.parametrize("overrides", [
    {"exp": float("nan")},
    {"exp": float("inf")},
    {"iat": float("nan"), "exp": 4_000_000_000},  # a far expiry slipping past max_lifetime
    {"nbf": float("-inf")},
    {"exp": True},
    {"exp": 10 ** 400},
    {"org_rank": float("nan")},
])
async def test_non_finite_or_absurd_times_are_refused(gw, client, clock, overrides):
    await expect_401(client, f"{gw.url}/echo", hs_token(clock, **overrides))


async def test_tampered_signature(gw, client, clock):
    head, payload, signature = hs_token(clock).split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["org_id"] = "globex"
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    await expect_401(client, f"{gw.url}/echo", f"{head}.{forged_payload}.{signature}", "signature")


async def test_alg_none_is_rejected(gw, client, clock):
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    token = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims(clock))}."
    await expect_401(client, f"{gw.url}/echo", token, "algorithm")


@pytest.fixture(scope="module")
def rsa_keys():
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def rs_token(key, clock: ManualClock, kid: str | None = None, **overrides) -> str:
    return jwt.encode(claims(clock, **overrides), key, algorithm="RS256", headers={"kid": kid} if kid else None)


async def test_hs256_token_signed_with_the_rsa_public_key_is_rejected(start_gateway, upstream, client, clock,
                                                                         rsa_keys, tmp_path):
    pem = public_pem(rsa_keys[0])
    (tmp_path / "issuer.pem").write_bytes(pem)
    issuer = {"name": "rsa", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256"],
              "public_key_file": str(tmp_path / "issuer.pem")}
    gw = await start_gateway(auth_config(upstream, [issuer]), clock=clock)
    async with client.get(f"{gw.url}/echo", headers=bearer(rs_token(rsa_keys[0], clock))) as response:
        assert response.status == 200  # the issuer works with its real key

    # Key confusion: HMAC over the token with the public key's PEM bytes as the secret.
    def part(data: dict) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

    signing_input = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims(clock))
    signature = base64.urlsafe_b64encode(hmac.new(pem, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    await expect_401(client, f"{gw.url}/echo", (signing_input + b"." + signature).decode(), "algorithm")


class JwksServer:
    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.hits = 0
        self.runner: web.AppRunner | None = None

    def publish(self, *pairs: tuple[str, object]) -> None:
        self.keys = []
        for kid, key in pairs:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            self.keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})

    async def start(self) -> str:
        async def jwks(_: web.Request) -> web.Response:
            self.hits += 1
            return web.json_response({"keys": self.keys})

        app = web.Application()
        app.router.add_get("/jwks.json", jwks)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/jwks.json"


@pytest.fixture
async def jwks_gateway(start_gateway, upstream, clock, rsa_keys):
    server = JwksServer()
    server.publish(("key-a", rsa_keys[0]))
    url = await server.start()
    issuer = {"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256"],
              "jwks_url": url, "jwks_refresh_cooldown": "30s"}
    # A high failure limit, so the flood reaches the key lookup instead of the address block.
    gw = await start_gateway(auth_config(upstream, [issuer], failed_logins={"max_failures": 1000}), clock=clock)
    async with aiohttp.ClientSession() as session:
        async def ready() -> bool:  # the first key set loads in the background; readiness says when
            async with session.get(f"{gw.admin_url}/readyz") as response:
                return response.status == 200
        await wait_until(ready, message="JWKS never loaded")
    yield gw, server
    await server.runner.cleanup()


async def test_unknown_kid_flood_hits_the_jwks_endpoint_at_most_once_per_cooldown(jwks_gateway, client, clock,
                                                                                    rsa_keys):
    gw, server = jwks_gateway
    assert server.hits == 1
    for _ in range(25):
        token = rs_token(rsa_keys[1], clock, kid=secrets.token_hex(4))
        await expect_401(client, f"{gw.url}/echo", token, "key is unknown")
    assert server.hits == 1  # the startup fetch was within the cooldown
    clock.advance(31)
    tokens = [rs_token(rsa_keys[1], clock, kid=secrets.token_hex(4)) for _ in range(25)]
    results = await asyncio.gather(*(client.get(f"{gw.url}/echo", headers=bearer(t)) for t in tokens))
    assert {r.status for r in results} == {401}
    assert server.hits == 2  # one refetch for the whole flood


async def test_key_rotation_is_picked_up_from_the_jwks_url(jwks_gateway, client, clock, rsa_keys):
    gw, server = jwks_gateway
    async with client.get(f"{gw.url}/echo", headers=bearer(rs_token(rsa_keys[0], clock, kid="key-a"))) as response:
        assert response.status == 200
    server.publish(("key-a", rsa_keys[0]), ("key-b", rsa_keys[1]))
    clock.advance(31)
    async with client.get(f"{gw.url}/echo", headers=bearer(rs_token(rsa_keys[1], clock, kid="key-b"))) as response:
        assert response.status == 200


async def test_readiness_waits_for_the_first_key_set(start_gateway, upstream, client, clock, unused_tcp_port):
    issuer = {"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256"],
              "jwks_url": f"http://127.0.0.1:{unused_tcp_port}/jwks.json"}
    gw = await start_gateway(auth_config(upstream, [issuer]), clock=clock)
    async with client.get(f"{gw.admin_url}/readyz") as response:
        assert response.status == 503
        assert "not loaded" in (await response.json())["reason"]
    async with client.get(f"{gw.url}/echo", headers=bearer(hs_token(clock))) as response:
        assert response.status in (401, 503)


async def test_huge_token_is_refused_without_a_crash(gw, client, clock):
    token = "a" * 65536
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.status in (401, 431)
    async with client.get(f"{gw.url}/echo", headers=bearer(hs_token(clock))) as response:
        assert response.status == 200  # still serving


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe\xfd", b"Bearer caf\xc3\xa9.x.y", b"Bearer a.b", b"Bearer ....",
                                   b"Bearer " + b"\xe2\x98\x83" * 10, b"Basic Zm9vOmJhcg=="])
async def test_garbage_in_the_authorization_header(gw, value):
    reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: " + value + b"\r\n\r\n")
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 401")
    assert b"application/problem+json" in response


async def test_client_forged_identity_headers_never_reach_upstream(gw, client, clock):
    forged = {"X-Customer-Id": "globex", "x-user-id": "root", **bearer(hs_token(clock))}
    async with client.get(f"{gw.url}/echo", headers=forged) as response:
        echo = await response.json()
    assert header(echo, "X-Customer-Id") == "acme"
    assert header(echo, "X-User-Id") == "alice"
    async with client.get(f"{gw.url}/status/200", headers={"X-Customer-Id": "globex"}) as response:
        assert response.status == 200  # public route: no identity, and the forged one is dropped too
    async with client.get(f"{gw.url}/echo/optional", headers={"X-Customer-Id": "globex"}) as response:
        assert header(await response.json(), "X-Customer-Id") is None


async def test_optional_route_identifies_when_a_token_is_sent(gw, client, clock):
    async with client.get(f"{gw.url}/echo/optional", headers=bearer(hs_token(clock))) as response:
        assert header(await response.json(), "X-Customer-Id") == "acme"
    await expect_401(client, f"{gw.url}/echo/optional", "not-a-token")


async def test_revocation_lasts_as_long_as_the_token(gw, client, clock):
    token = hs_token(clock, jti="short", exp=int(clock.time()) + 60)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = {"issuer": "test", "jti": "short", "exp": int(clock.time()) + 60}
    async with client.post(f"{gw.admin_url}/admin/revocations", json=body, headers=admin) as response:
        assert (await response.json())["revoked"]["until"] == clock.time() + 60 + 30
    await expect_401(client, f"{gw.url}/echo", token, "revoked")
    assert gw.server.state.revocations.active() == 1
    clock.advance(91)
    await expect_401(client, f"{gw.url}/echo", token, "expired")
    assert gw.server.state.revocations.active() == 0


async def test_revoked_token_id(gw, client, clock):
    token = hs_token(clock, jti="token-123")
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.status == 200  # now cached
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with client.post(f"{gw.admin_url}/admin/revocations", json={"issuer": "test", "jti": "token-123"},
                           headers=admin) as response:
        assert response.status == 201
    await expect_401(client, f"{gw.url}/echo", token, "revoked")


async def test_revoking_a_user_ends_older_tokens_only(gw, client, clock):
    old = hs_token(clock)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with client.post(f"{gw.admin_url}/admin/revocations", json={"issuer": "test", "user": "alice"},
                           headers=admin) as response:
        assert response.status == 201
    await expect_401(client, f"{gw.url}/echo", old, "revoked")
    clock.advance(1)
    async with client.get(f"{gw.url}/echo", headers=bearer(hs_token(clock))) as response:
        assert response.status == 200


async def test_revocation_requests_are_validated(gw, client):
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for body in ({"issuer": "nope", "jti": "x"}, {"issuer": "test"}, {"issuer": "test", "jti": "a", "user": "b"}, [],
                 {"issuer": "test", "jti": "a", "exp": "tomorrow"}):
        async with client.post(f"{gw.admin_url}/admin/revocations", json=body, headers=admin) as response:
            assert response.status == 400
            assert response.content_type == "application/problem+json"


async def test_cache_never_outlives_the_token(gw, client, clock):
    token = hs_token(clock, exp=int(clock.time()) + 60)
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.status == 200
    clock.advance(60 + 31)
    await expect_401(client, f"{gw.url}/echo", token, "expired")


async def test_missing_scope_is_403_insufficient_scope(gw, client, clock):
    async with client.get(f"{gw.url}/echo/reports", headers=bearer(hs_token(clock))) as response:
        assert response.status == 403
        assert response.headers["WWW-Authenticate"] == (
            'Bearer realm="fairgate", error="insufficient_scope", scope="reports:read"'
        )
        assert (await response.json())["type"] == "urn:fairgate:problem:insufficient-scope"
    scoped = hs_token(clock, scope="tickets:read reports:read")
    async with client.get(f"{gw.url}/echo/reports", headers=bearer(scoped)) as response:
        assert response.status == 200


async def test_free_mail_address_rejected(start_gateway, upstream, client, clock):
    gw = await start_gateway(auth_config(upstream, corporate_email={"action": "reject"}), clock=clock)
    async with client.get(f"{gw.url}/echo", headers=bearer(hs_token(clock, email="bob@gmail.com"))) as response:
        assert response.status == 403
        problem = await response.json()
    assert problem["type"] == "urn:fairgate:problem:corporate-email-required"
    assert "corporate" in problem["detail"]
    async with client.get(f"{gw.url}/echo", headers=bearer(hs_token(clock))) as response:
        assert response.status == 200


async def test_free_mail_address_flagged(start_gateway, upstream, client, clock, caplog):
    gw = await start_gateway(auth_config(upstream, corporate_email={"action": "flag"}), clock=clock)
    token = hs_token(clock, email="bob@mail.yahoo.co.uk")
    with caplog.at_level("WARNING", logger="fairgate.auth"):
        for _ in range(3):
            async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
                assert response.status == 200
    assert sum("free-mail" in record.getMessage() for record in caplog.records) == 1
    async with client.get(f"{gw.admin_url}/metrics") as response:
        assert 'fairgate_findings_total{action="flag",detector="corporate_email"} 1.0' in await response.text()


async def test_failed_login_limit_engages_and_expires(start_gateway, upstream, client, clock):
    config = auth_config(upstream, failed_logins={"max_failures": 3, "window": "5min", "block_for": "1min"})
    gw = await start_gateway(config, clock=clock)
    for _ in range(3):
        await expect_401(client, f"{gw.url}/echo", hs_token(clock, iss="https://evil.example"))
    async with client.get(f"{gw.url}/echo", headers=bearer(hs_token(clock))) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "60"
        assert (await response.json())["type"] == "urn:fairgate:problem:too-many-failed-logins"
    clock.advance(61)
    async with client.get(f"{gw.url}/echo", headers=bearer(hs_token(clock))) as response:
        assert response.status == 200
    async with client.get(f"{gw.admin_url}/metrics") as response:
        text = await response.text()
    assert 'fairgate_auth_results_total{result="address_blocked"} 1.0' in text
    assert 'fairgate_auth_results_total{result="blocked"} 1.0' in text


async def test_forward_authorization_when_the_route_says_so(start_gateway, upstream, client, clock):
    routes = [{"name": "pass", "path_prefix": "/", "upstream": "app", "forward_authorization": True}]
    gw = await start_gateway(auth_config(upstream, routes=routes), clock=clock)
    token = hs_token(clock)
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert header(await response.json(), "Authorization") == f"Bearer {token}"


async def test_reload_swaps_issuer_keys_and_drops_cached_tokens(gw, client, clock):
    import yaml

    old = hs_token(clock)
    async with client.get(f"{gw.url}/echo", headers=bearer(old)) as response:
        assert response.status == 200  # cached under the old secret
    config = yaml.safe_load(gw.config_path.read_text())
    new_secret = "a-rotated-secret-that-is-long-enough!!"
    config["auth"]["issuers"][0]["hmac_secret"] = new_secret
    gw.config_path.write_text(yaml.safe_dump(config))
    async with client.post(f"{gw.admin_url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        assert r.status == 200
    await expect_401(client, f"{gw.url}/echo", old, "signature")
    rotated = jwt.encode(claims(clock), new_secret, algorithm="HS256")
    async with client.get(f"{gw.url}/echo", headers=bearer(rotated)) as response:
        assert response.status == 200


async def test_token_cache_lookups_are_counted_on_metrics_across_a_reload(gw, client, clock):
    token = hs_token(clock)
    for _ in range(3):
        async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
            assert response.status == 200
    async with client.post(f"{gw.admin_url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        assert r.status == 200
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.status == 200  # the new cache verifies it once more
    async with client.get(f"{gw.admin_url}/metrics") as response:
        text = await response.text()
    assert 'fairgate_token_cache_lookups_total{result="hit"} 2.0' in text
    assert 'fairgate_token_cache_lookups_total{result="miss"} 2.0' in text
