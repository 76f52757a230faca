"""Config dicts for gateways under test, one per area: a minimal gateway, authentication,
limits, the enforcement ladder and detection; a test changes what it needs before starting one."""

from __future__ import annotations

from typing import Any

from tests.support.tokens import hs_issuer


def gateway_config(upstream_url: str, *, routes: list[dict] | None = None, auth: dict | None = None,
                   **server: Any) -> dict:
    """A minimal config in front of `upstream_url`, listening on free ports.

    Without an `auth` section the routes default to `auth: none`.
    """
    routes = routes or [{"name": "all", "path_prefix": "/", "upstream": "app"}]
    if auth is None:
        routes = [{"auth": "none", **route} for route in routes]
    config = {
        "server": {"listen": "127.0.0.1:0", "access_log": False, "drain_timeout": "5s", **server},
        "admin": {"listen": "127.0.0.1:0"},
        "upstreams": {"app": {"url": upstream_url, "read_timeout": "5s", "connect_timeout": "1s"}},
        "routes": routes,
    }
    if auth is not None:
        config["auth"] = auth
    return config


def auth_config(upstream, issuers=None, routes=None, **auth) -> dict:
    routes = routes or [
        {"name": "public", "path_prefix": "/status/", "upstream": "app", "auth": "none"},
        {"name": "reports", "path_prefix": "/echo/reports", "upstream": "app", "required_scopes": ["reports:read"]},
        {"name": "maybe", "path_prefix": "/echo/optional", "upstream": "app", "auth": "optional"},
        {"name": "api", "path_prefix": "/", "upstream": "app"},
    ]
    return gateway_config(upstream.url, routes=routes, auth={"issuers": issuers or [hs_issuer()], **auth})


def limits_config(upstream, plans: dict, customers: dict | None = None, routes: list | None = None,
                  default_plan: str = "standard", upstream_settings: dict | None = None, **limits) -> dict:
    routes = routes or [
        {"name": "report", "path_prefix": "/echo/report", "upstream": "app", "cost": 3},
        {"name": "stall", "path_prefix": "/stall", "upstream": "app"},
        {"name": "public", "path_prefix": "/status/", "upstream": "app", "auth": "none"},
        {"name": "api", "path_prefix": "/", "upstream": "app"},
    ]
    config = gateway_config(upstream.url, routes=routes, auth={"issuers": [hs_issuer()]})
    config["upstreams"]["app"].update(upstream_settings or {})
    config["limits"] = {"default_plan": default_plan, **limits}
    config["plans"] = plans
    config["customers"] = customers or {}
    return config


LADDER = {"window": "1h", "warn_at": 2, "throttle_at": 4, "throttle_for": "10min", "suspend_after_throttles": 2,
          "throttles_within": "1d", "suspend_for": "1h", "max_suspension": "2h"}


def enforcement_config(upstream, mode: str = "enforce", judged_by_hand: bool = False) -> dict:
    """`judged_by_hand`: violations are judged only when the test calls `judge_queued()`, so a
    background judgement between two requests (a loaded machine) cannot move the ladder early."""
    config = gateway_config(upstream.url, auth={"issuers": [hs_issuer()]})
    config["limits"] = {"default_plan": "standard"}
    config["plans"] = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/s", "burst": 1}]}}
    config["enforcement"] = {"mode": mode, "policy": "https://example.com/fair-use", "ladder": LADDER}
    if judged_by_hand:
        config["enforcement"]["judge_interval"] = "60s"
    return config


def detection_config(upstream, **detection) -> dict:
    config = gateway_config(
        upstream.url,
        routes=[{"name": "portal", "path_prefix": "/echo/portal/", "upstream": "app", "auth": "optional",
                 "class": "portal"},
                {"name": "api", "path_prefix": "/", "upstream": "app"}],
        auth={"issuers": [hs_issuer()]},
    )
    config["detection"] = {"hash_salt": "s" * 16, "flush_interval": "10ms",
                           "scraping": {"actions": {"portal": "block", "api": "flag"}}, **detection}
    return config
