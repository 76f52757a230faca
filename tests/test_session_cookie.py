"""Portal logins as browsers send them: the session cookie, its CSRF defence, what the upstream sees."""

from __future__ import annotations

import secrets

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.cookies import cookie_value, without_cookie
from gateway.config import ConfigError, load_config
from tests.support.clock import ManualClock
from tests.support.configs import gateway_config

SECRET = "session-cookie-test-secret-long-enough-for-hs256"
ISSUER = "https://login.cookie-test.invalid"
AUDIENCE = "portal-test"
PORTAL_ORIGIN = "https://portal.example.com"


def issuer() -> dict:
    return {"name": "test", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["HS256"], "hmac_secret": SECRET}


def token(clock: ManualClock, **overrides: object) -> str:
    now = int(clock.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "org_id": "acme", "sid": "s1",
              "jti": secrets.token_hex(8), "iat": now, "exp": now + 600, **overrides}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def session_config(upstream, **cookie: object) -> dict:
    settings = {"name": "fg_session", "csrf_header": "X-CSRF-Token", "csrf_cookie": "fg_csrf",
                "same_site": "lax", "allowed_origins": [PORTAL_ORIGIN], **cookie}
    routes = [
        {"name": "portal", "path_prefix": "/echo/portal", "upstream": "app", "class": "portal", "auth": "optional"},
        {"name": "account", "path_prefix": "/echo/account", "upstream": "app", "login_cookie": True},
        {"name": "api", "path_prefix": "/echo/api", "upstream": "app"},
        {"name": "page", "path_prefix": "/echo/page", "upstream": "app", "class": "portal", "auth": "optional",
         "login_cookie": False},
    ]
    return gateway_config(upstream.url, routes=routes, auth={"issuers": [issuer()], "session_cookie": settings})


def header(echo: dict, name: str) -> str | None:
    values = [value for key, value in echo["headers"] if key.lower() == name.lower()]
    return ", ".join(values) if values else None


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def gw(start_gateway, upstream, clock):
    return await start_gateway(session_config(upstream), clock=clock)


async def call(client, method: str, url: str, **headers: str) -> tuple[int, dict]:
    async with client.request(method, url, headers=headers) as response:
        body = await response.json(content_type=None)
        if response.status >= 400:
            assert response.content_type == "application/problem+json"
        return response.status, body


async def test_a_page_with_the_cookie_reaches_upstream_as_its_user(gw, client, clock):
    status, echo = await call(client, "GET", f"{gw.url}/echo/portal/tickets", Cookie=f"fg_session={token(clock)}")
    assert status == 200
    assert header(echo, "X-Customer-Id") == "acme"
    assert header(echo, "X-User-Id") == "alice"


async def test_head_and_options_are_safe_too(gw, client, clock):
    for method in ("HEAD", "OPTIONS"):
        async with client.request(method, f"{gw.url}/echo/portal/x", headers={"Cookie": f"fg_session={token(clock)}"}) as r:
            assert r.status == 200, method


async def test_a_post_with_the_cookie_and_no_csrf_proof_is_refused(gw, client, clock, upstream):
    status, problem = await call(client, "POST", f"{gw.url}/echo/portal/tickets", Cookie=f"fg_session={token(clock)}")
    assert status == 403
    assert problem["type"] == "urn:fairgate:problem:csrf-failed"
    assert upstream.state.requests == 0


async def test_a_post_with_the_matching_csrf_header_and_cookie_passes(gw, client, clock):
    csrf = secrets.token_urlsafe(16)
    status, echo = await call(client, "POST", f"{gw.url}/echo/portal/tickets",
                              Cookie=f"fg_csrf={csrf}; fg_session={token(clock)}", **{"X-CSRF-Token": csrf})
    assert status == 200
    assert header(echo, "X-User-Id") == "alice"


@pytest.mark.parametrize("sent", ["wrong-value", "", "abc"])
async def test_a_post_whose_csrf_header_differs_from_the_cookie_is_refused(gw, client, clock, sent):
    status, problem = await call(client, "POST", f"{gw.url}/echo/portal/tickets",
                                 Cookie=f"fg_csrf=abcd; fg_session={token(clock)}", **{"X-CSRF-Token": sent})
    assert status == 403
    assert problem["type"] == "urn:fairgate:problem:csrf-failed"


async def test_a_csrf_header_without_its_cookie_is_refused(gw, client, clock):
    status, _ = await call(client, "POST", f"{gw.url}/echo/portal/tickets",
                           Cookie=f"fg_session={token(clock)}", **{"X-CSRF-Token": "abcd"})
    assert status == 403


@pytest.mark.parametrize("fetch_site,origin", [
    ("cross-site", "https://evil.example"),
    (None, "https://evil.example"),
    ("same-site", "https://sub.portal.example.com"),
    (None, "null"),
    (None, None),  # neither header: no browser of today, and no proof
])
async def test_an_unsafe_request_from_elsewhere_is_refused(gw, client, clock, fetch_site, origin):
    headers = {"Cookie": f"fg_session={token(clock)}"}
    if fetch_site:
        headers["Sec-Fetch-Site"] = fetch_site
    if origin:
        headers["Origin"] = origin
    status, problem = await call(client, "DELETE", f"{gw.url}/echo/portal/tickets/1", **headers)
    assert status == 403
    assert problem["type"] == "urn:fairgate:problem:csrf-failed"


async def test_a_cross_site_websocket_upgrade_with_the_cookie_is_refused(gw, client, clock):
    # Browsers let any page open a WebSocket with the user's cookies: an upgrade counts as unsafe.
    status, problem = await call(client, "GET", f"{gw.url}/echo/portal/live", Cookie=f"fg_session={token(clock)}",
                                 Upgrade="websocket", Connection="Upgrade", Origin="https://evil.example",
                                 **{"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert status == 403
    assert problem["type"] == "urn:fairgate:problem:csrf-failed"


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "same-origin"},
    {"Origin": PORTAL_ORIGIN},
    {"Sec-Fetch-Site": "same-site", "Origin": PORTAL_ORIGIN.upper()},
])
async def test_a_same_origin_post_passes_when_the_cookie_is_samesite(gw, client, clock, headers):
    status, echo = await call(client, "POST", f"{gw.url}/echo/portal/tickets",
                              Cookie=f"fg_session={token(clock)}", **headers)
    assert status == 200
    assert header(echo, "X-User-Id") == "alice"


async def test_without_samesite_only_the_csrf_header_protects(start_gateway, upstream, client, clock):
    gw = await start_gateway(session_config(upstream, same_site="none", allowed_origins=[]), clock=clock)
    status, _ = await call(client, "POST", f"{gw.url}/echo/portal/tickets",
                           Cookie=f"fg_session={token(clock)}", **{"Sec-Fetch-Site": "same-origin"})
    assert status == 403


@pytest.mark.parametrize("claims,fragment", [
    ({"exp": 1_799_999_000, "iat": 1_799_998_000}, "expired"),
    ({"iss": "https://evil.example"}, "issuer"),
    ({"aud": "someone-else"}, "not meant for this service"),
])
async def test_an_expired_or_foreign_cookie_is_a_401(gw, client, clock, claims, fragment):
    status, problem = await call(client, "GET", f"{gw.url}/echo/portal/x", Cookie=f"fg_session={token(clock, **claims)}")
    assert status == 401
    assert problem["type"] == "urn:fairgate:problem:invalid-session-cookie"
    assert fragment in problem["detail"]


async def test_a_cookie_signed_with_another_algorithm_is_a_401(gw, client, clock):
    forged = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "org_id": "acme",
                         "iat": int(clock.time()), "exp": int(clock.time()) + 60}, SECRET * 2, algorithm="HS512")
    status, problem = await call(client, "GET", f"{gw.url}/echo/portal/x", Cookie=f"fg_session={forged}")
    assert status == 401
    assert problem["type"] == "urn:fairgate:problem:invalid-session-cookie"


async def test_a_revoked_login_cookie_is_a_401(gw, client, clock):
    from tests.support.tokens import ADMIN_TOKEN

    login = token(clock, jti="revoke-me")
    async with client.post(f"{gw.admin_url}/admin/revocations", json={"issuer": "test", "jti": "revoke-me"},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
        assert response.status in (200, 201, 204), await response.text()
    status, problem = await call(client, "GET", f"{gw.url}/echo/portal/x", Cookie=f"fg_session={login}")
    assert status == 401
    assert problem["type"] == "urn:fairgate:problem:invalid-session-cookie"


async def test_the_authorization_header_wins_over_the_cookie(gw, client, clock):
    bob = token(clock, sub="bob")
    status, echo = await call(client, "GET", f"{gw.url}/echo/portal/x", Authorization=f"Bearer {bob}",
                              Cookie=f"fg_session={token(clock)}")
    assert status == 200
    assert header(echo, "X-User-Id") == "bob"
    # A bearer request is no CSRF risk (no page can make a browser send it): no CSRF proof needed.
    status, echo = await call(client, "POST", f"{gw.url}/echo/portal/x", Authorization=f"Bearer {bob}",
                              Cookie="fg_session=garbage")
    assert status == 200
    assert header(echo, "X-User-Id") == "bob"


async def test_a_required_route_opted_in_accepts_the_cookie(gw, client, clock):
    status, echo = await call(client, "GET", f"{gw.url}/echo/account", Cookie=f"fg_session={token(clock)}")
    assert status == 200
    assert header(echo, "X-User-Id") == "alice"
    status, problem = await call(client, "GET", f"{gw.url}/echo/account")
    assert status == 401
    assert problem["type"] == "urn:fairgate:problem:login-required"


async def test_routes_not_opted_in_ignore_the_cookie(gw, client, clock):
    cookie = f"fg_session={token(clock)}"
    status, problem = await call(client, "GET", f"{gw.url}/echo/api/x", Cookie=cookie)  # class api, required
    assert status == 401
    assert problem["type"] == "urn:fairgate:problem:login-required"
    status, echo = await call(client, "GET", f"{gw.url}/echo/page/x", Cookie=cookie)  # portal, login_cookie: false
    assert status == 200
    assert header(echo, "X-User-Id") is None
    assert header(echo, "Cookie") == cookie  # untouched: the route does not read it


async def test_the_session_cookie_is_not_forwarded_but_other_cookies_are(gw, client, clock):
    status, echo = await call(client, "GET", f"{gw.url}/echo/portal/x",
                              Cookie=f"theme=dark; fg_session={token(clock)}; fg_csrf=abc")
    assert status == 200
    assert header(echo, "Cookie") == "theme=dark; fg_csrf=abc"
    status, echo = await call(client, "GET", f"{gw.url}/echo/portal/x", Cookie=f"fg_session={token(clock)}")
    assert header(echo, "Cookie") is None


async def test_the_session_cookie_is_forwarded_when_configured(start_gateway, upstream, client, clock):
    gw = await start_gateway(session_config(upstream, forward=True), clock=clock)
    cookie = f"theme=dark; fg_session={token(clock)}"
    status, echo = await call(client, "GET", f"{gw.url}/echo/portal/x", Cookie=cookie)
    assert status == 200
    assert header(echo, "Cookie") == cookie


async def test_clients_cannot_forge_identity_headers_next_to_a_cookie(gw, client, clock):
    status, echo = await call(client, "GET", f"{gw.url}/echo/portal/x", Cookie=f"fg_session={token(clock)}",
                              **{"X-User-Id": "mallory", "X-Customer-Id": "evilcorp"})
    assert status == 200
    assert header(echo, "X-User-Id") == "alice"
    assert header(echo, "X-Customer-Id") == "acme"
    status, echo = await call(client, "GET", f"{gw.url}/echo/portal/x", Cookie="other=1",
                              **{"X-User-Id": "mallory"})
    assert status == 200
    assert header(echo, "X-User-Id") is None


def write(tmp_path, upstream_url: str, auth: dict, route: dict) -> str:
    import yaml

    config = gateway_config(upstream_url, routes=[{"name": "r", "path_prefix": "/", "upstream": "app", **route}],
                            auth={"issuers": [issuer()], **auth})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("auth,route,key", [
    ({}, {"login_cookie": True}, "routes[0].login_cookie"),
    ({"session_cookie": {"name": "s"}}, {"login_cookie": True, "auth": "none"}, "routes[0].login_cookie"),
    ({"session_cookie": {"name": "s", "csrf_header": "X-CSRF"}}, {}, "auth.session_cookie.csrf_header"),
    ({"session_cookie": {"name": "s", "csrf_header": "X-CSRF", "csrf_cookie": "s"}}, {},
     "auth.session_cookie.csrf_cookie"),
    ({"session_cookie": {"name": "s", "allowed_origins": ["https://a.example"]}}, {},
     "auth.session_cookie.allowed_origins"),
    ({"session_cookie": {"name": "s", "same_site": "lax", "allowed_origins": ["https://a.example/app"]}}, {},
     "auth.session_cookie.allowed_origins"),
    ({"session_cookie": {"name": "s", "same_site": "lax", "allowed_origins": ["https://a.example:443"]}}, {},
     "auth.session_cookie.allowed_origins"),
    ({"session_cookie": {"name": "bad name"}}, {}, "auth.session_cookie.name"),
])
def test_config_errors_name_the_key(tmp_path, auth, route, key):
    path = write(tmp_path, "http://127.0.0.1:9", auth, route)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert key in str(error.value)


NAME = "fg_session"
names = st.sampled_from([NAME, "fg_csrf", "fg_session2", "xfg_session", "FG_SESSION", "theme", " fg_session"])
# Values as browsers send them (no ';', no tabs) plus Unicode that only looks like space.
values = st.text(alphabet=st.characters(blacklist_characters=';"\t', blacklist_categories=("Cs",)), max_size=20)


@given(st.text())
def test_any_cookie_header_never_crashes(header_value: str) -> None:
    found = cookie_value([header_value], NAME)
    assert found is None or found
    rest = without_cookie([header_value], NAME)
    assert cookie_value([rest or ""], NAME) is None


@given(st.lists(st.tuples(names, values), max_size=8), st.sampled_from(["; ", ";", " ; "]))
def test_only_the_named_cookie_is_found(pairs: list[tuple[str, str]], separator: str) -> None:
    header_value = separator.join(f"{name}={value}" for name, value in pairs)
    expected = next((value.strip(" ") for name, value in pairs if name.strip(" ") == NAME and value.strip(" ")), None)
    assert cookie_value([header_value], NAME) == expected
    # The other cookies go upstream as they were sent.
    others = [f"{name}={value}".strip(" ") for name, value in pairs if name.strip(" ") != NAME]
    assert without_cookie([header_value], NAME) == ("; ".join(others) or None)


DEMO_SECRET = "a-demo-secret-of-at-least-32-bytes!!"


async def test_fairgate_token_cookie_logs_a_client_in_on_the_shipped_portal(start_gateway, upstream, client):
    """The lines `fairgate token --cookie` prints pass the shipped config's portal, POST included."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--customer", "acme", "--user", "alice@acme.example", "--cookie"],
        cwd=root, capture_output=True, text=True,
        env={**os.environ, "FAIRGATE_DEMO_SECRET": DEMO_SECRET, "FAIRGATE_HASH_SALT": "a-salt-of-16-bytes-or-more"},
    )
    assert result.returncode == 0, result.stderr
    headers = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert set(headers) == {"Cookie", "X-CSRF-Token"}

    shipped = yaml.safe_load((root / "config" / "gateway.yaml").read_text())
    auth = shipped["auth"]
    auth["issuers"][0]["hmac_secret"] = DEMO_SECRET
    portal = next(route for route in shipped["routes"] if route["name"] == "portal")
    route = {**portal, "upstream": "app", "path_prefix": "/echo/portal/"}  # where the test upstream echoes
    gw = await start_gateway(gateway_config(upstream.url, routes=[route], auth=auth))
    status, echo = await call(client, "POST", f"{gw.url}/echo/portal/tickets", **headers)
    assert status == 200
    assert header(echo, "X-User-Id") == "alice@acme.example"
    assert "fg_session" not in (header(echo, "Cookie") or "")
