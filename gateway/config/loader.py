"""Read a YAML file into a validated GatewayConfig, or fail naming file, key path and reason."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.errors import ConfigError, ConfigIssue, format_path
from gateway.config.model import GatewayConfig
from gateway.config.partial import Loc, clean_loc, reference_issues

# ${NAME}, or ${NAME:-default} (the default when NAME is unset or empty, as in a shell); $$ is a $.
_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse and validate one config file; raises ConfigError listing every problem found."""
    source = str(path)
    environ = os.environ if environ is None else environ
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [ConfigIssue("", f"cannot read file: {exc}")]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigIssue("", f"invalid YAML: {where}{problem}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigIssue("", "the file must hold a mapping of sections")])

    issues: list[ConfigIssue] = []
    raw = _substitute_env(raw, (), environ, issues)
    unset = {issue.path for issue in issues}  # an unset variable is one problem, not two
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        issues += [issue for issue in map(_issue_from_pydantic, errors) if issue.path not in unset]
        # Cross-references of the valid rest, so one run reports every problem.
        issues += reference_issues(raw, errors, _check_references)
        raise ConfigError(source, issues) from None
    issues += _check_references(config)
    if issues:
        raise ConfigError(source, issues)
    return config


def _substitute_env(value: Any, path: Loc, environ: Mapping[str, str], issues: list[ConfigIssue]) -> Any:
    """Replace ${NAME} and ${NAME:-default} in every string with the environment's value ($$ is a literal $)."""
    if isinstance(value, dict):
        return {key: _substitute_env(item, (*path, key), environ, issues) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute_env(item, (*path, index), environ, issues) for index, item in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name is None:
            return "$"
        if default is not None and not environ.get(name):
            return default
        if name not in environ:
            issues.append(ConfigIssue(format_path(path), f"environment variable {name} is not set"))
            return ""
        return environ[name]

    return _ENV_RE.sub(replace, value)


def _check_plans(config: GatewayConfig) -> Iterator[ConfigIssue]:
    plans = config.plans
    if plans and config.limits.default_plan is None:
        yield ConfigIssue("limits.default_plan", "required when plans are defined (the plan of unknown callers)")
    if config.limits.default_plan is not None and config.limits.default_plan not in plans:
        yield ConfigIssue("limits.default_plan", f"unknown plan {config.limits.default_plan!r}")
    for name, customer in config.customers.items():
        plan = plans.get(customer.plan)
        if plan is None:
            yield ConfigIssue(f"customers.{name}.plan", f"unknown plan {customer.plan!r}")
            continue
        limits = {limit.name: limit for limit in plan.limits}
        for index, override in enumerate(customer.overrides):
            path = f"customers.{name}.overrides[{index}]"
            limit = limits.get(override.limit)
            if limit is None:
                yield ConfigIssue(f"{path}.limit", f"plan {customer.plan!r} has no limit {override.limit!r}")
                continue
            for key in override.misfits(limit.kind):
                yield ConfigIssue(f"{path}.{key}", f"does not apply to a {limit.kind} limit")


def _check_licenses(config: GatewayConfig) -> Iterator[ConfigIssue]:
    """A listed customer on a plan with quotas per licensed unit needs its quantity, from its
    entry or from a token claim; with neither it would silently get the budget of one unit."""
    claimed = {unit for issuer in config.auth.issuers for unit in issuer.claims.licenses}
    for name, customer in config.customers.items():
        plan = config.plans.get(customer.plan)
        for limit in plan.limits if plan is not None else ():
            unit = getattr(limit, "per", None)
            if unit is not None and unit not in customer.licenses and unit not in claimed:
                yield ConfigIssue(f"customers.{name}.licenses",
                                  f"plan {customer.plan!r} counts quota {limit.name!r} per {unit}: give "
                                  f"{{{unit}: N}} here, or name a claim for it in auth.issuers[].claims.licenses")


def _check_references(config: GatewayConfig) -> Iterator[ConfigIssue]:
    yield from _check_plans(config)
    yield from _check_licenses(config)
    seen_names: set[str] = set()
    seen_matches: set[tuple[str | None, str]] = set()
    for index, route in enumerate(config.routes):
        if route.upstream not in config.upstreams:
            known = ", ".join(sorted(config.upstreams))
            yield ConfigIssue(
                f"routes[{index}].upstream", f"unknown upstream {route.upstream!r} (known: {known})"
            )
        if route.name in seen_names:
            yield ConfigIssue(f"routes[{index}].name", f"duplicate route name {route.name!r}")
        if (route.host, route.path_prefix) in seen_matches:
            yield ConfigIssue(
                f"routes[{index}].path_prefix",
                f"another route already matches host={route.host!r} path_prefix={route.path_prefix!r}",
            )
        if route.auth != "none" and not config.auth.issuers:
            yield ConfigIssue(
                f"routes[{index}].auth",
                f"auth is {route.auth!r} but auth.issuers is empty: add an issuer or set auth: none",
            )
        if route.login_cookie and config.auth.session_cookie is None:
            yield ConfigIssue(f"routes[{index}].login_cookie", "needs auth.session_cookie (the cookie's name)")
        elif route.login_cookie and route.auth == "none":
            yield ConfigIssue(f"routes[{index}].login_cookie", "a route with auth: none reads no login")
        if route.required_scopes and route.auth != "required":
            yield ConfigIssue(f"routes[{index}].required_scopes", "scopes can only be required with auth: required")
        seen_names.add(route.name)
        seen_matches.add((route.host, route.path_prefix))


def _issue_from_pydantic(error: Mapping[str, Any]) -> ConfigIssue:
    loc = clean_loc(error["loc"])  # the keys the user wrote, without pydantic's union tags
    kind = error["type"]
    if kind == "extra_forbidden":
        return ConfigIssue(format_path(loc), "unknown key")
    if kind == "missing":
        return ConfigIssue(format_path(loc), "required key is missing")
    message = error["msg"]
    message = message.removeprefix("Value error, ")
    if kind in ("value_error",):
        # Section validators name the key they reject as "key: reason".
        key, sep, reason = message.partition(": ")
        if sep and key.isidentifier():
            return ConfigIssue(format_path((*loc, key)), reason)
        return ConfigIssue(format_path(loc), message)
    return ConfigIssue(format_path(loc), f"{message} (got {error.get('input')!r})")
