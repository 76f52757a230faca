"""The admin console in a real headless browser (Debian's chromium and chromedriver): it loads,
shows customers with their usage and timeline, findings with their signals, exceptions; its
filters, paging and buttons (reinstate, suspend, revoke) work, and the API confirms them."""

from __future__ import annotations

import asyncio
import re

from tests.support.browser import wait_for
from tests.support.clock import T0, ManualClock
from tests.support.configs import enforcement_config
from tests.support.tokens import ADMIN, ADMIN_TOKEN, hs_token
from tests.support.traffic import statuses


def run(step):
    """Selenium blocks: run it off the event loop the gateway serves on."""
    return asyncio.to_thread(step)


def sign_in(driver, gateway, shown: str):
    """Open the console, sign in, and wait until `shown` (a CSS selector) is on the page."""
    from selenium.webdriver.common.by import By

    driver.get(f"{gateway.admin_url}/console")
    if driver.find_elements(By.ID, "token") and driver.find_element(By.ID, "sign-in").is_displayed():
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
    return wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, shown))


async def test_the_console_shows_a_suspended_customer_and_reinstates_it(browser, start_gateway, upstream, client):
    from selenium.webdriver.common.by import By

    clock = ManualClock(T0)
    config = enforcement_config(upstream)
    config["plans"]["standard"]["limits"].append(
        {"name": "monthly", "kind": "quota", "metric": "requests", "period": "month", "limit": 1000})
    gateway = await start_gateway(config, clock=clock)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 1) == [200]  # some usage to show
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                           json={"for": "1h", "reason": "scraping the portal"}) as response:
        assert response.status == 201

    row = (await run(lambda: sign_in(browser, gateway, 'tr[data-customer="acme"]')))[0]
    assert (await run(lambda: row.find_element(By.CSS_SELECTOR, ".state").text)) == "suspended"
    assert "scraping the portal" in await run(lambda: row.text)
    bar = await run(lambda: row.find_element(By.CSS_SELECTOR, ".quota progress"))
    assert (await run(lambda: (bar.get_attribute("value"), bar.get_attribute("max")))) == ("1", "1000")

    def open_timeline():
        browser.find_element(By.CSS_SELECTOR, 'tr[data-customer="acme"] button.show-timeline').click()
        return wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#timeline li[data-kind="state_change"]'))

    (change,) = await run(open_timeline)
    assert "ok → suspended" in await run(lambda: change.text)

    def reinstate():
        browser.find_element(By.CSS_SELECTOR, 'tr[data-customer="acme"] button.reinstate').click()
        wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-customer="acme"] .state').text == "ok")

    clock.advance(1)  # a later decision than the suspension
    await run(reinstate)
    async with client.get(f"{gateway.admin_url}/admin/customers/acme", headers=ADMIN) as response:
        assert (await response.json())["state"] == "ok"
    clock.advance(1)
    assert await statuses(client, gateway, token, 1) == [200]


async def test_the_console_page_runs_no_inline_script(client, start_gateway, upstream):
    gateway = await start_gateway(enforcement_config(upstream))
    async with client.get(f"{gateway.admin_url}/console") as response:
        assert response.status == 200
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        page = await response.text()
    assert "<script>" not in page and 'src="/console/console.js"' in page
    async with client.get(f"{gateway.admin_url}/console/secrets.txt") as response:
        assert response.status == 404


async def test_findings_show_their_signals_and_the_filters_narrow_the_lists(browser, start_gateway, upstream, client):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from gateway.detect.findings import Finding
    from tests.support.configs import detection_config
    from tests.support.tokens import bearer
    from tests.support.traffic import browse_headless

    clock = ManualClock(T0)
    config = detection_config(upstream)
    config["limits"] = {"default_plan": "standard"}
    config["plans"] = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "100/s", "burst": 100}]}}
    config["customers"] = {f"customer-{n:02d}": {"plan": "standard"} for n in range(25)}
    gateway = await start_gateway(config, clock=clock)
    # A scraping finding from the real detector, for acme's alice browsing headless...
    assert await browse_headless(client, gateway, bearer(hs_token(clock)), clock, 3) == [200] * 3
    # ...and one of another detector about another customer.
    gateway.server.state.findings.record(Finding(
        "sharing", "user:globex/bob", "globex", "bob", "flag", False, clock.time(), ("networks", "devices"),
        evidence={"networks": 3, "window": "10m"}))

    rows = await run(lambda: sign_in(browser, gateway, '#findings tr[data-detector="scraping"]'))
    scraping = await run(lambda: rows[0].text)
    assert "user:acme/alice" in scraping and "block" in scraping
    signals = await run(lambda: [s.text for s in rows[0].find_elements(By.CSS_SELECTOR, ".signal")])
    assert signals and all(signals)  # each signal its own item, as text

    def shown_findings():
        return [row.get_attribute("data-customer") for row in browser.find_elements(By.CSS_SELECTOR, "#findings tbody tr[data-detector]")]

    assert sorted(await run(shown_findings)) == ["acme", "globex"]

    def filter_detector(name):
        Select(browser.find_element(By.ID, "filter-detector")).select_by_value(name)
        return wait_for(browser, lambda d: len(shown_findings()) == 1 and shown_findings())

    assert await run(lambda: filter_detector("sharing")) == ["globex"]
    assert "networks" in await run(lambda: browser.find_element(By.CSS_SELECTOR, "#findings tbody tr").text)

    def filter_customer(text):
        Select(browser.find_element(By.ID, "filter-detector")).select_by_value("")
        search = browser.find_element(By.ID, "filter-customer")
        search.clear()
        search.send_keys(text)
        wait_for(browser, lambda d: len(shown_findings()) == 1)
        return shown_findings(), [r.get_attribute("data-customer")
                                  for r in browser.find_elements(By.CSS_SELECTOR, "#customers tbody tr[data-customer]")]

    assert await run(lambda: filter_customer("acm")) == (["acme"], ["acme"])

    def pages_of_customers():
        browser.find_element(By.ID, "filter-customer").clear()
        browser.find_element(By.ID, "filter-customer").send_keys("customer-")
        first = wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#customers tbody tr")) == 20 and
                         d.find_element(By.ID, "customers-pager").text)
        browser.find_element(By.CSS_SELECTOR, "#customers-pager .next").click()
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#customers tbody tr")) == 5)
        return first, browser.find_element(By.ID, "customers-pager").text

    first, second = await run(pages_of_customers)
    assert first.startswith("1–20 of 25") and second.startswith("21–25 of 25")


async def test_revoking_an_exception_in_the_console_ends_it(browser, start_gateway, upstream, client):
    from selenium.webdriver.common.by import By

    gateway = await start_gateway(enforcement_config(upstream))
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/exceptions", headers=ADMIN,
                           json={"limit": "sustained", "burst": 5, "for": "7d", "reason": "migration week"}) as response:
        grant = (await response.json())["grant"]
    row = (await run(lambda: sign_in(browser, gateway, f'#exceptions tr[data-grant="{grant["id"]}"]')))[0]
    text = await run(lambda: row.text)
    assert "sustained: burst 5" in text and "migration week" in text

    def revoke():
        row.find_element(By.CSS_SELECTOR, "button.revoke").click()
        wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#exceptions tr[data-grant]"))

    await run(revoke)
    async with client.get(f"{gateway.admin_url}/admin/exceptions", headers=ADMIN) as response:
        assert (await response.json())["grants"] == []


async def test_suspending_from_the_console_with_a_reason(browser, start_gateway, upstream, client):
    from selenium.webdriver.common.by import By

    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream), clock=clock)
    assert await statuses(client, gateway, hs_token(clock), 1) == [200]  # acme is a customer with usage

    def suspend():
        sign_in(browser, gateway, 'tr[data-customer="acme"]')
        browser.find_element(By.CSS_SELECTOR, 'tr[data-customer="acme"] button.show-timeline').click()
        form = wait_for(browser, lambda d: d.find_element(By.ID, "suspend").is_displayed() and d.find_element(By.ID, "suspend"))
        form.find_element(By.NAME, "reason").send_keys("unpaid invoices")
        form.find_element(By.NAME, "for").clear()
        form.find_element(By.NAME, "for").send_keys("2h")
        form.find_element(By.CSS_SELECTOR, "button").click()
        wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-customer="acme"] .state').text == "suspended")
        return browser.find_element(By.CSS_SELECTOR, 'tr[data-customer="acme"]').text

    assert "unpaid invoices" in await run(suspend)
    async with client.get(f"{gateway.admin_url}/admin/customers/acme", headers=ADMIN) as response:
        customer = await response.json()
    assert (customer["state"], customer["reason"], customer["until"]) == ("suspended", "unpaid invoices", T0 + 7200)
    assert await statuses(client, gateway, hs_token(clock), 1) == [403]


async def test_the_usage_chart_has_a_bar_per_day_with_usage_and_quotas_show_their_units(
        browser, start_gateway, upstream, client):
    from selenium.webdriver.common.by import By

    clock = ManualClock(T0)  # 2027-01-15
    config = enforcement_config(upstream)
    config["plans"]["standard"]["limits"] += [
        {"name": "minutes", "kind": "quota", "metric": "upstream_seconds", "period": "month", "limit": 30000},
        {"name": "data", "kind": "quota", "metric": "bytes", "period": "month", "limit": 5_000_000_000},
    ]
    gateway = await start_gateway(config, clock=clock)
    for days_later in (0, 1, 3):  # the 15th, 16th and 18th
        clock.advance(86400 * days_later - (clock.time() - T0))
        assert await statuses(client, gateway, hs_token(clock), 3) == [200, 429, 429]
    await gateway.server.state.enforcement.judge_queued()

    def open_detail():
        sign_in(browser, gateway, 'tr[data-customer="acme"]')
        browser.find_element(By.CSS_SELECTOR, 'tr[data-customer="acme"] button.show-timeline').click()
        bars = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#usage-chart rect.bar"))
        quotas = {q.find_element(By.CSS_SELECTOR, ".quota-name").text: q.text
                  for q in browser.find_elements(By.CSS_SELECTOR, "#detail-quotas .quota")}
        rejected = browser.find_element(By.ID, "rejected").text
        violations = [item.text for item in browser.find_elements(By.CSS_SELECTOR, '#timeline li[data-kind="violation"]')]
        return [bar.get_attribute("data-day") for bar in bars], quotas, rejected, violations

    days, quotas, rejected, violations = await run(open_detail)
    assert days == ["2027-01-15", "2027-01-16", "2027-01-18"]
    assert quotas["minutes"].endswith(" s / 8.3 h")  # a quota counted in seconds, not "minutes"
    assert re.search(r"\d (B|kB) / 5 GB$", quotas["data"])  # bytes shown as bytes
    assert rejected == "quota-exceeded 6"
    # The six 429s, judged in one batch or a few: each event shows its count as a number.
    counts = [re.search(r"(\d+) violations? \(limit, minor\)", text) for text in violations]
    assert violations and all(counts) and sum(int(found.group(1)) for found in counts) == 6
