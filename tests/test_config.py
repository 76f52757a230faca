"""Config parsing: human units, precise errors, the CLI that checks a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ConfigError, load_config
from gateway.config.units import parse_duration, parse_rate, parse_size

ROOT = Path(__file__).resolve().parent.parent
BAD = Path(__file__).parent / "fixtures" / "bad"
DEMO_ENV = {"FAIRGATE_DEMO_SECRET": "a-demo-secret-of-at-least-32-bytes!!", "FAIRGATE_HASH_SALT": "test-salt-of-16-bytes"}


def expected_error(fixture: Path) -> str:
    first = fixture.read_text().splitlines()[0]
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("fixture", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_each_bad_config_names_file_key_path_and_reason(fixture: Path):
    with pytest.raises(ConfigError) as failure:
        load_config(fixture, environ={})
    message = str(failure.value)
    assert f"{fixture}: {expected_error(fixture)}" in message, message


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(
        "server: {listen: nowhere, drain_timeout: forever}\n"
        "upstreams: {a: {url: 'http://127.0.0.1:1'}}\n"
        "routes: [{name: r, path_prefix: /, upstream: a, auth: none}]\n"
    )
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    paths = [issue.path for issue in failure.value.issues]
    assert paths == ["server.listen", "server.drain_timeout"]


def test_field_and_cross_reference_errors_are_reported_in_one_run(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text(
        "server: {drain_timeout: forever}\n"
        "upstreams: {product: {url: 'http://127.0.0.1:9000', connect_timeout: soon}}\n"
        "limits: {default_plan: gold}\n"
        "plans: {standard: {limits: [{name: sustained, kind: rate, rate: 1/s, burst: 10}]}}\n"
        "customers: {acme: {plan: platinum}}\n"
        "routes:\n"
        "  - {name: api, path_prefix: 'api/', upstream: nowhere, auth: none}\n"
        "  - {name: gone, path_prefix: /gone/, auth: none}\n"
        "  - {name: billing, path_prefix: /billing/, upstream: billing, auth: none}\n"
        "  - {name: billing, path_prefix: /b2/, upstream: product, auth: none, max_body: huge}\n"
    )
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    assert [(issue.path, issue.reason.split(" (")[0]) for issue in failure.value.issues] == [
        ("server.drain_timeout", "expected a duration such as '250ms', '30s', '5min', '1h' or '7d', got 'forever'"),
        ("upstreams.product.connect_timeout",
         "expected a duration such as '250ms', '30s', '5min', '1h' or '7d', got 'soon'"),
        ("routes[0].path_prefix", "a path prefix starts with '/' and has no spaces, '?' or '#', got 'api/'"),
        ("routes[1].upstream", "required key is missing"),
        ("routes[3].max_body", "expected a size such as '512B', '64KB', '10MB' or '1GiB', got 'huge'"),
        ("limits.default_plan", "unknown plan 'gold'"),
        ("customers.acme.plan", "unknown plan 'platinum'"),
        ("routes[0].upstream", "unknown upstream 'nowhere'"),
        ("routes[2].upstream", "unknown upstream 'billing'"),  # numbered as in the file, route 1 left out
        ("routes[3].name", "duplicate route name 'billing'"),
    ]


def test_a_route_left_out_for_its_errors_shifts_no_later_route(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(
        "upstreams: {product: {url: 'http://127.0.0.1:9000'}}\n"
        "routes:\n"
        "  - {name: api, path_prefix: /api/, upstream: product, auth: none}\n"
        "  - {name: bad, path_prefix: nope, auth: none}\n"
        "  - {name: api2, path_prefix: /api/, upstream: product, auth: none}\n"
        "  - {name: x, path_prefix: /x/, upstream: ghost, auth: none}\n"
    )
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    assert [issue.path for issue in failure.value.issues] == [
        "routes[1].path_prefix", "routes[1].upstream", "routes[2].path_prefix", "routes[3].upstream"]


def test_an_unset_variable_is_reported_with_the_other_errors_once(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text(
        "server: {drain_timeout: forever}\n"
        "upstreams: {a: {url: 'http://127.0.0.1:1', connect_timeout: '${NO_SUCH_TIMEOUT}'}}\n"
        "routes: [{name: r, path_prefix: /, upstream: b, auth: none}]\n"
    )
    with pytest.raises(ConfigError) as failure:
        load_config(path, environ={})
    assert [issue.path for issue in failure.value.issues] == ["upstreams.a.connect_timeout", "server.drain_timeout",
                                                              "routes[0].upstream"]
    assert "NO_SUCH_TIMEOUT is not set" in failure.value.issues[0].reason


def test_shipped_config_is_valid_and_typed():
    config = load_config(ROOT / "config" / "gateway.yaml", environ=DEMO_ENV)
    assert config.server.listen == ("127.0.0.1", 8080)
    assert config.admin.listen == ("127.0.0.1", 8081)
    assert config.upstreams["product"].port == 9000
    assert config.routes[0].max_body == 10_000_000
    assert config.upstreams["product"].read_timeout == 30.0


def test_config_objects_are_immutable():
    config = load_config(ROOT / "config" / "gateway.yaml", environ=DEMO_ENV)
    with pytest.raises(ValueError):  # pydantic's ValidationError: the model is frozen
        config.server.listen = ("0.0.0.0", 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.upstreams["other"] = config.upstreams["product"]  # type: ignore[index]


def test_environment_variables_are_substituted(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text(
        "upstreams: {a: {url: '${UPSTREAM_URL}'}}\n"
        "routes: [{name: r, path_prefix: '/cost$$', upstream: a, auth: none}]\n"
    )
    config = load_config(path, environ={"UPSTREAM_URL": "http://10.1.2.3:8000"})
    assert config.upstreams["a"].host == "10.1.2.3"
    assert config.routes[0].path_prefix == "/cost$"


def test_a_default_stands_in_for_an_unset_or_empty_variable(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text(
        "upstreams: {a: {url: '${UPSTREAM_URL:-http://127.0.0.1:9000}'}}\n"
        "state: {key_prefix: '${PREFIX:-fairgate}'}\n"
        "routes: [{name: r, path_prefix: /, upstream: a, auth: none}]\n"
    )
    config = load_config(path, environ={"PREFIX": ""})
    assert (config.upstreams["a"].port, config.state.key_prefix) == (9000, "fairgate")
    config = load_config(path, environ={"UPSTREAM_URL": "http://demo:8000", "PREFIX": "blue"})
    assert (config.upstreams["a"].host, config.state.key_prefix) == ("demo", "blue")


@given(st.text(alphabet=st.characters(blacklist_characters="}$"), max_size=40),
       st.text(alphabet=st.characters(blacklist_characters="$"), max_size=40))
def test_substitution_yields_the_default_or_the_value(default, value):
    from gateway.config.loader import _substitute_env

    template = "<${V:-" + default + "}>"
    assert _substitute_env(template, (), {}, []) == f"<{default}>"
    assert _substitute_env(template, (), {"V": value}, []) == f"<{value or default}>"


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "min", "m", "h", "d", "w"]))
def test_durations_parse_to_seconds(amount, unit):
    factor = {"ms": 0.001, "s": 1, "min": 60, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{amount}{unit}") == pytest.approx(amount * factor)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["B", "KB", "MB", "GB", "KiB", "MiB", "GiB", "kb", "mib"]))
def test_sizes_parse_to_bytes(amount, unit):
    factor = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}[unit.lower()]
    assert parse_size(f"{amount}{unit}") == amount * factor


@given(st.integers(min_value=1, max_value=10**9), st.sampled_from(["s", "sec", "min", "minute", "h", "hour", "day"]))
def test_rates_parse(count, unit):
    rate = parse_rate(f"{count}/{unit}")
    seconds = {"s": 1, "sec": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "day": 86400}[unit]
    assert rate.count == count
    assert rate.per_second == pytest.approx(count / seconds)


def test_monthly_rate_is_calendar_based():
    rate = parse_rate("2000000/month")
    assert (rate.count, rate.period, rate.period_seconds) == (2_000_000, "month", None)
    assert str(rate) == "2000000/month"
    assert parse_rate("10/5s").period_seconds == 5.0


@given(st.text(max_size=20))
def test_unit_parsers_never_crash_on_garbage(text):
    for parser in (parse_duration, parse_size, parse_rate):
        try:
            parser(text)
        except ValueError as exc:
            assert repr(text) in str(exc)


@pytest.mark.parametrize("value", ["0/s", "1/fortnight", "-1/s", "1/2month", "abc", "1/0s"])
def test_bad_rates_are_rejected(value):
    with pytest.raises(ValueError, match="expected a rate"):
        parse_rate(value)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **DEMO_ENV, **(env or {})})


def test_check_config_accepts_the_shipped_config():
    result = run_cli("check-config", "config/gateway.yaml")
    assert result.returncode == 0
    assert "ok" in result.stdout


def test_check_config_prints_errors_and_exits_1():
    fixture = BAD / "unknown_upstream.yaml"
    result = run_cli("check-config", str(fixture))
    assert result.returncode == 1
    assert f"{fixture}: routes[1].upstream: unknown upstream 'billing'" in result.stderr


def test_version_is_the_packaged_one():
    import tomllib

    result = run_cli("--version")
    assert result.returncode == 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert result.stdout.strip() == f"fairgate {project['version']}"


def test_cli_usage_errors_exit_2():
    assert run_cli("run").returncode == 2
    assert run_cli("no-such-command").returncode == 2
    assert run_cli("run", "-c", "x.yaml", "--listen", "nope").returncode == 2


def test_shipped_config_names_the_missing_demo_secret():
    env = {key: value for key, value in os.environ.items() if key != "FAIRGATE_DEMO_SECRET"}
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "config/gateway.yaml"], cwd=ROOT,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "auth.issuers[0].hmac_secret: environment variable FAIRGATE_DEMO_SECRET is not set" in result.stderr


def test_dev_token_verifies_against_the_demo_issuer():
    import jwt

    result = run_cli("token", "--customer", "acme", "--user", "alice@acme.example", "--ttl", "10min",
                     "--scope", "reports:read", "--plan", "business")
    assert result.returncode == 0, result.stderr
    issuer = load_config(ROOT / "config" / "gateway.yaml", environ=DEMO_ENV).auth.issuers[0]
    claims = jwt.decode(result.stdout.strip(), issuer.hmac_key, algorithms=["HS256"], audience=issuer.audiences[0])
    assert claims["org_id"] == "acme"
    assert claims["email"] == "alice@acme.example"
    assert claims["scope"] == "reports:read"
    assert claims["exp"] - claims["iat"] == 600


def test_schema_is_json_schema_of_every_section():
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert set(schema["properties"]) >= {"server", "admin", "logging", "auth", "upstreams", "routes"}
    assert schema["additionalProperties"] is False


def test_a_customer_is_on_its_listed_plan_else_a_known_claimed_plan_else_the_default():
    from gateway.config import GatewayConfig

    plan = {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/s", "burst": 5}]}
    config = GatewayConfig.model_validate({
        "upstreams": {"api": {"url": "http://127.0.0.1:9000"}},
        "routes": [{"name": "all", "path_prefix": "/", "upstream": "api"}],
        "limits": {"default_plan": "basic"},
        "plans": {"basic": plan, "pro": plan, "enterprise": plan},
        "customers": {"acme": {"plan": "enterprise"}},
    })
    assert config.plan_of("acme", claimed="pro") == "enterprise"  # listed wins over the token
    assert config.plan_of("globex", claimed="pro") == "pro"
    assert config.plan_of("globex", claimed="platinum") == "basic"  # a plan this config does not define
    assert config.plan_of("globex") == "basic"
    assert config.plan_of(None) == "basic"  # anonymous callers


@given(st.text(max_size=40))
def test_a_state_url_names_one_backend_or_is_refused_with_the_schemes(url):
    from gateway.config.state_url import Backend, parse_state_url

    try:
        parsed = parse_state_url(url)
    except ValueError as exc:
        assert all(f"{backend.value}://" in str(exc) for backend in Backend)
        assert not any(url.startswith(f"{backend.value}://") for backend in Backend)
        return
    assert url == f"{parsed.backend.value}://{parsed.rest}"
    assert parsed.shared == (parsed.backend is not Backend.MEMORY)


@pytest.mark.parametrize("url", ["memory://", "redis://127.0.0.1:6379/0", "rediss://h:6380/1",
                                 "redis+cluster://127.0.0.1:7000", "redis+sentinel://h:26379/mymaster/0"])
def test_every_documented_state_url_is_accepted(url):
    from gateway.config.limits import StateSettings

    assert StateSettings(url=url).parsed_url.rest == url.partition("://")[2]
