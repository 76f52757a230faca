"""Quotas per licensed unit ("500 minutes per port, per month") and the estimated fee for usage
beyond a quota ("may result in additional fees"), through a real gateway on an injected clock."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.identity import Identity
from gateway.config import ConfigError, load_config
from gateway.config.limits import Overage
from tests.support.clock import ManualClock
from tests.support.configs import limits_config
from tests.support.paths import ROOT
from tests.support.tokens import ADMIN_TOKEN, bearer, hs_issuer, hs_token

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NOV_21 = 1_795_219_200.0  # 2026-11-21T00:00:00Z
MINUTES = {"name": "minutes", "kind": "quota", "metric": "upstream_seconds", "period": "month", "limit": 30000}
PLANS = {
    # Cyara Velocity and Pulse: "usage in excess of 500 minutes per port, per month"
    "velocity": {"limits": [{**MINUTES, "per": "ports"}]},
    # Cyara Cruncher: "usage in excess of 500 minutes per month"
    "cruncher": {"limits": [{**MINUTES, "action": "flag",
                             "overage": {"price": "0.05", "unit": "1min", "currency": "USD"}}]},
}
CUSTOMERS = {"big-co": {"plan": "velocity", "licenses": {"ports": 12}},
             "small-co": {"plan": "velocity", "licenses": {"ports": 1}},
             "crunch-co": {"plan": "cruncher"}}


def licensed_config(upstream) -> dict:
    config = limits_config(upstream, PLANS, CUSTOMERS, default_plan="velocity")
    config["auth"]["issuers"] = [hs_issuer(claims={"licenses": {"ports": "port_count"}})]
    return config


async def upstream_time(gateway, customer: str, minutes: float, licenses: tuple = ()) -> None:
    """What the handler does after a response that kept the upstream busy for `minutes`."""
    runtime = gateway.server.runtimes.current
    route = next(route for route in runtime.config.routes if route.name == "api")
    who = Identity(customer, "u", None, None, None, "test", None, frozenset(), 0.0, 0.0, licenses)
    admission = await runtime.limiter.admit(who, route, "127.0.0.1", f"r-{customer}-{minutes}")
    assert not admission.rejected
    runtime.limiter.finish(admission, 0, minutes * 60)
    await runtime.limiter.drain()


async def answer(client, gateway, token: str) -> tuple[int, str]:
    async with client.get(f"{gateway.url}/echo", headers=bearer(token)) as response:
        return response.status, response.headers["RateLimit-Policy"]


async def test_twelve_ports_may_use_6000_minutes_one_port_500(start_gateway, upstream, client):
    clock = ManualClock(NOV_21)
    gateway = await start_gateway(licensed_config(upstream), clock=clock)
    big, small = hs_token(clock, org_id="big-co"), hs_token(clock, org_id="small-co")

    await upstream_time(gateway, "big-co", 5999)
    assert await answer(client, gateway, big) == (200, '"minutes";q=360000;w=2592000')  # 6,000 minutes
    await upstream_time(gateway, "big-co", 1)
    assert (await answer(client, gateway, big))[0] == 429

    await upstream_time(gateway, "small-co", 499)
    assert await answer(client, gateway, small) == (200, '"minutes";q=30000;w=2592000')  # 500 minutes
    await upstream_time(gateway, "small-co", 1)
    assert (await answer(client, gateway, small))[0] == 429


async def test_a_token_claim_gives_the_port_count_and_the_listed_config_wins(start_gateway, upstream, client):
    clock = ManualClock(NOV_21)
    gateway = await start_gateway(licensed_config(upstream), clock=clock)
    three_ports = hs_token(clock, org_id="claim-co", port_count=3)  # not listed: the default plan
    assert await answer(client, gateway, three_ports) == (200, '"minutes";q=90000;w=2592000')
    await upstream_time(gateway, "claim-co", 1499, (("ports", 3),))
    assert (await answer(client, gateway, three_ports))[0] == 200
    await upstream_time(gateway, "claim-co", 1, (("ports", 3),))
    assert (await answer(client, gateway, three_ports))[0] == 429

    # big-co's contract says 12 ports: a token claiming 2 does not shrink its quota.
    assert await answer(client, gateway, hs_token(clock, org_id="big-co", port_count=2)) == (
        200, '"minutes";q=360000;w=2592000')
    # No claim and not listed: one port.
    assert (await answer(client, gateway, hs_token(clock, org_id="no-claim-co")))[1] == '"minutes";q=30000;w=2592000'

    async with client.get(f"{gateway.admin_url}/admin/usage", params={"month": "2026-11"}, headers=ADMIN) as response:
        rows = {row["customer"]: row for row in (await response.json())["customers"]}
    (claimed,) = rows["claim-co"]["quotas"]
    assert (claimed["quota"], claimed["per"], claimed["quantity"], claimed["quantity_from"]) == (
        90000, "ports", 3, "token")
    (listed,) = rows["big-co"]["quotas"]
    assert (listed["quota"], listed["quantity"], listed["quantity_from"]) == (360000, 12, "config")


async def test_the_fee_of_a_known_overage_to_the_cent(start_gateway, upstream, client):
    clock = ManualClock(NOV_21)
    gateway = await start_gateway(licensed_config(upstream), clock=clock)
    # 500 minutes and 123.3 more: 7,398 s at 0.05 USD a minute is 6.165: 6.17, rounded half up.
    gateway.server.state.usage.forwarded("crunch-co", 1, 0, 0, 30000 + 7398)
    async with client.get(f"{gateway.admin_url}/admin/usage", params={"month": "2026-11"}, headers=ADMIN) as response:
        (row,) = (await response.json())["customers"]
    (quota,) = row["quotas"]
    assert (quota["over"], quota["fee"], quota["currency"], row["fees"]) == (7398, "6.17", "USD", {"USD": "6.17"})

    async with client.get(f"{gateway.admin_url}/admin/usage", params={"month": "2026-11", "format": "fees"},
                          headers=ADMIN) as response:
        assert response.content_type == "text/csv"
        text = await response.text()
    assert text.splitlines() == [
        "month,customer,plan,limit,metric,per,quantity,quota,used,over,price,price_unit,currency,fee",
        "2026-11,crunch-co,cruncher,minutes,upstream_seconds,,,30000,37398,7398,0.05,1min,USD,6.17",
    ]
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "usage", "--month", "2026-11", "--admin", gateway.admin_url],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "FAIRGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert result.returncode == 0, result.stderr
    assert "minutes 37,398/30,000 s OVER by 7,398 s fee 6.17 USD" in result.stdout
    fees = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "usage", "--month", "2026-11", "--format", "fees",
                         "--admin", gateway.admin_url],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "FAIRGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert next(iter(csv.DictReader(io.StringIO(fees.stdout))))["fee"] == "6.17"


@pytest.mark.parametrize(("metric", "unit", "over", "price", "fee"), [
    ("upstream_seconds", "1min", 90, "0.05", "0.08"),  # 1.5 minutes: 0.075, half up
    ("bytes", "1GB", 2_500_000_000, "0.10", "0.25"),
    ("requests", 1000, 1234, "1.50", "1.85"),  # 1.851
    ("upstream_seconds", "1h", 0.1, "0.01", "0.00"),
])
def test_fees_are_decimal_per_unit_and_rounded_half_up(metric, unit, over, price, fee):
    from gateway.usage.fees import overage_fee

    assert overage_fee(Overage(price=price, unit=unit), metric, over) == Decimal(fee)


def test_prices_are_decimals_and_floats_that_lost_digits_are_refused():
    assert Overage(price=0.05).price == Decimal("0.05")  # unquoted YAML 0.05 keeps its digits
    assert Overage(price="19.99").price == Decimal("19.99")
    with pytest.raises(ValueError, match="quoted"):
        Overage(price=0.1234567890123456789)
    with pytest.raises(ValueError, match=r"0\.05"):
        Overage(price="five cents")


@pytest.mark.parametrize(("metric", "unit"), [("upstream_seconds", "1GB"), ("bytes", "1min"), ("requests", "1min"),
                                              ("upstream_seconds", "0s"), ("requests", 0)])
def test_an_overage_unit_must_fit_the_metric(tmp_path, upstream, metric, unit):
    import yaml

    quota = {**MINUTES, "metric": metric, "overage": {"price": "0.05", "unit": unit}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(limits_config(upstream, {"flat": {"limits": [quota]}}, default_plan="flat")))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (issue,) = caught.value.issues
    # (the path also carries the limit's kind today, plans.flat.limits[0].quota.overage: the loader's to drop)
    assert issue.path.startswith("plans.flat.limits[0].") and issue.path.endswith(".overage")
    assert issue.reason.startswith("unit: ")


@given(st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False, allow_infinity=False))
def test_a_price_reads_back_exactly_quoted_or_not(price):
    from gateway.config.units import parse_price

    text = f"{price:f}"
    assert parse_price(text) == price  # quoted: always exact
    assert parse_price(float(text)) == price  # unquoted: at most 15 significant digits here, so exact too


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_an_unquoted_price_is_exact_or_refused(value):
    from gateway.config.units import parse_price

    try:
        price = parse_price(value)
    except ValueError as exc:
        assert "quoted" in str(exc)
    else:
        assert float(price) == value and len(price.as_tuple().digits) <= 15


def test_a_listed_customer_without_its_quantity_is_a_config_error(tmp_path, upstream):
    import yaml

    config = limits_config(upstream, PLANS, {"lost-co": {"plan": "velocity"}}, default_plan="velocity")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(issue.path == "customers.lost-co.licenses" and "per ports" in issue.reason
               for issue in caught.value.issues)
    config["auth"]["issuers"] = [hs_issuer(claims={"licenses": {"ports": "port_count"}})]
    path.write_text(yaml.safe_dump(config))
    load_config(path)  # its tokens may say how many ports it has
